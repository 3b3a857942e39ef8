"""``pip install .`` as users do it: a wheel, in a fresh virtualenv, used from a
directory that is not the checkout.

The wheel is built once (with build isolation, as pip does) from a copy of the source
tree, so nothing left over in ``build/`` can leak into it. The virtualenv gets only
that wheel; the third-party dependencies are borrowed from the test environment
through a ``.pth`` line instead of being downloaded again (minutes, and the network),
which cannot put this checkout on the path: a ``.pth`` line adds a folder without
running the editable-install hook inside it. The tests then check that the package
and its ``analysis`` were imported from the virtualenv. About 45 s in all (the wheel
build fetches setuptools for its isolated build environment, from pip's cache when it
has it), so not marked slow.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from expplatform import migrations

from .server_support import REPO, STOP_SECONDS, free_port, http, wait_for

BUILD_SECONDS = 600
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "instance",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    "test-artifacts",
    "results",
    "node_modules",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "expplatform"
    shutil.copytree(REPO, source, ignore=SOURCE_IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
    )
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("expplatform-*.whl")
    return path


@dataclass(frozen=True)
class Venv:
    root: Path
    site_packages: Path

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    @property
    def expplatform(self) -> str:
        return str(self.root / "bin" / "expplatform")


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Venv:
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)], env=clean_env(), check=True, timeout=BUILD_SECONDS
    )
    python = root / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        env=clean_env(),  # with this checkout on PYTHONPATH, pip would call it installed already
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
    )
    assert installed.returncode == 0, installed.stderr
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            env=clean_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies: this environment's third-party packages, after the venv's own.
    (site_packages / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return Venv(root, site_packages)


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """An empty directory far from the checkout, to run commands in."""
    path = tmp_path / "anywhere"
    path.mkdir()
    return path


def clean_env() -> dict[str, str]:
    """No PYTHONPATH (this checkout) and no EXPPLATFORM_ settings: the defaults."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("EXPPLATFORM_")}


def run(venv: Venv, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv.expplatform, *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=BUILD_SECONDS
    )


def source_files(folder: str) -> set[str]:
    root = REPO / folder
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_the_wheel_holds_every_source_file_and_the_bundled_folders(wheel):
    names = {name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}
    expected = (
        {f"expplatform/{name}" for name in source_files("expplatform")}
        | {f"analysis/{name}" for name in source_files("analysis")}
        | {f"expplatform/_migrations/{name}" for name in source_files("migrations")}
        | {f"expplatform/_experiments/{name}" for name in source_files("experiments")}
    )
    assert names == expected
    assert "expplatform/_migrations/versions/0001_initial.py" in names and "expplatform/static/app.css" in names


def test_the_installed_package_is_imported_from_the_venv_and_alone_provides_analysis(venv, elsewhere):
    code = (
        "import expplatform, analysis\n"
        "from importlib.metadata import packages_distributions, requires, version\n"
        "from expplatform.bundled import bundled_dir\n"
        "print(expplatform.__file__); print(analysis.__file__)\n"
        "print(bundled_dir('migrations')); print(bundled_dir('experiments'))\n"
        "print(sorted(set(packages_distributions()['analysis'])))\n"
        "missing = []\n"
        "for requirement in requires('expplatform'):\n"
        "    if 'extra ==' in requirement: continue\n"
        "    name = requirement.split(';')[0].split('[')[0].split('>')[0].split('<')[0].split('=')[0].strip()\n"
        "    try: version(name)\n"
        "    except Exception: missing.append(name)\n"
        "print(missing)\n"
    )
    result = subprocess.run(
        [venv.python, "-c", code], cwd=elsewhere, env=clean_env(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    package, analysis, migrations, experiments, providers, missing = result.stdout.splitlines()
    assert package == str(venv.site_packages / "expplatform" / "__init__.py")
    assert analysis == str(venv.site_packages / "analysis" / "__init__.py")
    assert migrations == str(venv.site_packages / "expplatform" / "_migrations")
    assert experiments == str(venv.site_packages / "expplatform" / "_experiments")
    assert providers == "['expplatform']"  # no other distribution ships a top-level `analysis`
    assert missing == "[]"  # every declared dependency is there


def test_upgrade_demo_and_serve_work_from_any_directory(venv, elsewhere):
    upgraded = run(venv, "db", "upgrade", cwd=elsewhere)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"database at revision {migrations.head_revision()}" in upgraded.stdout
    assert (elsewhere / "instance" / "expplatform.sqlite3").is_file()  # the default: ./instance
    demo = run(venv, "demo", "setup", cwd=elsewhere)
    assert demo.returncode == 0, demo.stderr
    assert "demo experiments created as drafts: checkout-page, onboarding-email, onboarding-tour" in demo.stdout

    port = free_port()
    serve = subprocess.Popen(
        [venv.expplatform, "serve", "--port", str(port), "--workers", "1"],
        cwd=elsewhere,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def answering() -> bool:
            try:
                return http("GET", f"{base}/api/v1/health", timeout=5).status == 200
            except OSError:
                return serve.poll() is not None

        wait_for(answering, "the installed service to answer")
        assert serve.poll() is None
        login = http("GET", f"{base}/login")
        assert login.status == 200 and b'type="password"' in login.body
        assert http("GET", f"{base}/static/app.css").status == 200
        os.killpg(serve.pid, signal.SIGINT)
        _out, stderr = serve.communicate(timeout=STOP_SECONDS)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    assert serve.returncode == 0, stderr


def test_nothing_else_installed_here_provides_a_top_level_analysis():
    """The environment running the tests: `analysis` is ours alone (the installed case
    is checked in the venv above)."""
    assert set(packages_distributions().get("analysis", ["expplatform"])) == {"expplatform"}


def test_a_folder_named_analysis_where_the_app_starts_is_a_clear_error(tmp_path):
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # `python -c` puts the current directory first
    result = subprocess.run(
        [sys.executable, "-c", "from expplatform import create_app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "expplatform needs its own `analysis` package" in result.stderr and str(tmp_path) in result.stderr
