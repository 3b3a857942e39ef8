"""Lift reports: aggregation -> analysis -> one ``Report`` that the page, the JSON
and CSV API and the command line all show.

One module per job, each importing only those before it in this list:

- ``options``: what a caller may ask (segment, credible level, full model), parsed once;
- ``background``: the per-worker caches and the thread that computes slow parts;
- ``series``: the slow parts themselves (daily series, segment breakdowns);
- ``warnings``: what in the data should make an analyst doubt or wait;
- ``build``: the statistics, their analysis and all of the above as one ``Report``;
- ``views``: the report arranged as rows, the lift map and the full model beside it;
- ``figures``, ``render``, ``table``: its SVG plots, its JSON and CSV, its terminal text.

The names below are the package's public interface; ``init_app`` gives an app its
report cache.
"""

from __future__ import annotations

from .background import init_app
from .build import Report, build_report
from .figures import render_plots
from .options import SEED, ReportOptions
from .render import CSV_COLUMNS, job_dict, report_dict, to_csv
from .table import format_table
from .views import METRIC_LABELS, full_model_view, lift_map, report_rows

__all__ = [
    "CSV_COLUMNS",
    "METRIC_LABELS",
    "SEED",
    "Report",
    "ReportOptions",
    "build_report",
    "format_table",
    "full_model_view",
    "init_app",
    "job_dict",
    "lift_map",
    "render_plots",
    "report_dict",
    "report_rows",
    "to_csv",
]
