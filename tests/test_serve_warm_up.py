"""The served app loads its plotting stack before gunicorn forks the workers.

gunicorn preloads the app in its master (``preload_app``) and forks the workers at
once: a background thread still importing matplotlib at that moment leaves every
worker with a half-imported module, and every plot of every page a 500, for the
worker's life. Seen on a fresh ``make run``: the journey map and the reports failed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOADED = (
    "import sys, threading; "
    "assert 'matplotlib' in sys.modules and hasattr(sys.modules['matplotlib'], 'use'), 'half imported'; "
    "assert not [t for t in threading.enumerate() if t.name == 'plots-warm-up'], 'still warming up'"
)


@pytest.mark.parametrize(
    "load", ["from expplatform.serve import wsgi_app; wsgi_app()", "import wsgi"], ids=["serve", "wsgi.py"]
)
def test_the_served_app_returns_with_matplotlib_whole(tmp_path, load):
    env = {"EXPPLATFORM_INSTANCE_PATH": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    upgraded = subprocess.run([sys.executable, "-m", "expplatform.cli", "db", "upgrade"], env=env, cwd=REPO)
    assert upgraded.returncode == 0
    result = subprocess.run(
        [sys.executable, "-c", f"{load}; {LOADED}"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
