"""Issue 11: a restarted gunicorn master imports the app before it serves, so the app's
import leaves out what only a report or a fit needs: scipy (a third of the import
time, via the analysis) and the sampler."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_app_loads_no_scipy_and_the_analysis_still_runs():
    code = (
        "import sys; import expplatform.app; "
        "print(sorted(m for m in ('scipy', 'scipy.special', 'pymc') if m in sys.modules)); "
        "from analysis import analyze; from analysis.types import CellStats, ExperimentStats; "
        "cells = {'buy': {'a': CellStats(200, 20, ()), 'b': CellStats(200, 30, ())}}; "
        "r = analyze(ExperimentStats(('buy',), 'buy', ('a', 'b'), 'a', (0.5, 0.5), None, cells)); "
        "print(0 < r.stages[0].metrics[0].comparisons[0].p_better < 1, 'scipy.special' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["[]", "True True"], result.stdout + result.stderr
