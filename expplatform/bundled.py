"""What the installed package carries beside ``expplatform`` itself.

Folders of the source tree that the installed package carries inside itself:

``migrations/`` and ``experiments/`` stay at the top of the repository (Alembic and
people look for them there), and a wheel ships them as ``expplatform/_migrations`` and
``expplatform/_experiments`` (see ``setup.py``), so an installed ``expplatform`` needs
no checkout. A source checkout (or an editable install) has no such copies and uses the
top-level folders.

The statistics are the top-level package ``analysis`` (the layout is given), a name
another distribution, or a folder of that name in the directory a command runs from
(``python -m`` and gunicorn put it first on ``sys.path``), could also claim.
:func:`check_analysis` makes that a clear error instead of a puzzling one;
``tests/test_install.py`` checks that nothing installed beside us provides it.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def bundled_dir(name: str) -> Path:
    """The folder ``name`` (``migrations`` or ``experiments``): the installed copy, else
    the source tree's; FileNotFoundError when neither exists (a broken install)."""
    installed = Path(str(files(__package__).joinpath(f"_{name}")))
    if installed.is_dir():
        return installed
    source = SOURCE_ROOT / name
    if source.is_dir():
        return source
    raise FileNotFoundError(f"expplatform's {name}/ folder is missing: neither {installed} nor {source} exists")


def check_analysis() -> None:
    """Raise ImportError, saying what to do, when ``import analysis`` would load another
    package than the one installed beside ``expplatform``. Looks, imports nothing."""
    spec = find_spec("analysis")
    expected = SOURCE_ROOT / "analysis"
    found = Path(spec.origin).resolve().parent if spec is not None and spec.origin else None
    if found != expected:
        raise ImportError(
            f"expplatform needs its own `analysis` package at {expected}, but `import analysis` finds "
            f"{found or 'a namespace package'}: a folder named `analysis` in the current directory, or another "
            "installed package of that name, hides it. Run from another directory, or install expplatform into "
            "a virtualenv of its own."
        )
