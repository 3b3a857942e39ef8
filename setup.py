"""What pyproject.toml cannot say: the top-level ``migrations/`` and ``experiments/``
folders ship inside the wheel as ``expplatform._migrations`` and
``expplatform._experiments`` (with the simulator's ``scenarios/``; found by
``expplatform/bundled.py``), next to the
packages found as usual. Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, find_packages, setup

BUNDLED = {
    "expplatform._migrations": "migrations",
    "expplatform._migrations.versions": "migrations/versions",
    "expplatform._experiments": "experiments",
    "expplatform._experiments.scenarios": "experiments/scenarios",
}

setup(
    packages=[
        *find_packages(include=["expplatform", "expplatform.*", "analysis", "analysis.*"]),
        # Folders of templates and static files: data, listed so setuptools does not
        # warn page after page that they look like packages.
        *find_namespace_packages(include=["expplatform.static*", "expplatform.web.templates*"]),
        *BUNDLED,
    ],
    package_dir=BUNDLED,
)
