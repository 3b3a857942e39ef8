"""The served app warms its plotting stack up in each forked worker, never in the
master before or while it forks.

gunicorn preloads the app in its master (``preload_app``) and forks the workers at
once. A background thread of the master still importing matplotlib at that moment left
every worker an import lock that no thread of its own would release: its first report
page hung for good (seen on a fresh ``make run``: the journey map and the reports never
answered). Importing in the master before forking would instead delay every master
restart (the soak's recovery target) by the import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# In the master: no thread and no matplotlib. In a forked worker: the warm-up thread,
# and a plot renders (a hang fails by the subprocess timeout).
FORK_AND_PLOT = """
import os, sys, threading
assert [t.name for t in threading.enumerate() if t is not threading.main_thread()] == []
assert 'matplotlib' not in sys.modules
pid = os.fork()
if pid == 0:
    warming = any(t.name == 'plots-warm-up' for t in threading.enumerate())
    from expplatform import plots
    svg = plots.funnel(['cart'], {'control': [0.5]}, {'control': plots.CONTROL_COLOR})
    os._exit(0 if warming and svg.startswith('<svg') and 'matplotlib.backends.backend_svg' in sys.modules else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
"""


@pytest.mark.parametrize(
    "load", ["from expplatform.serve import wsgi_app; wsgi_app()", "import wsgi"], ids=["serve", "wsgi.py"]
)
def test_the_served_app_warms_up_in_each_forked_worker_only(tmp_path, load):
    env = {"EXPPLATFORM_INSTANCE_PATH": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    upgraded = subprocess.run([sys.executable, "-m", "expplatform.cli", "db", "upgrade"], env=env, cwd=REPO)
    assert upgraded.returncode == 0
    result = subprocess.run(
        [sys.executable, "-c", f"{load}\n{FORK_AND_PLOT}"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
