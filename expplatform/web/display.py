"""The template helpers of ``expplatform.history``: who did something, an audit log
as sentences, and durations, available to every page (and the standalone report)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from urllib.parse import urlencode

from flask import request

from ..db import get_session
from ..history import Entry, HistoryLine, history_lines, key_names
from ..history import actor_label as label_of
from ..history import ago as ago_words
from ..history import duration as duration_words
from ..models import utcnow
from . import bp


@bp.app_template_global()
def actor_label(actor: str | None) -> str:
    """A person's e-mail, a key's name ("key ci-deploy"), or the command line."""
    return label_of(actor, key_names(get_session(), [actor]))


@bp.app_template_global()
def history(entries: Iterable[Entry]) -> list[HistoryLine]:
    """Audit entries as sentences with their changes, the keys' names looked up once."""
    entries = list(entries)
    return history_lines(entries, key_names(get_session(), [entry.actor for entry in entries]))


@bp.app_template_global()
def duration(seconds: float | None) -> str:
    return duration_words(seconds)


@bp.app_template_global()
def ago(moment: datetime | None) -> str:
    return ago_words(moment, utcnow())


@bp.app_template_global()
def self_refresh_url(anchor: str) -> str:
    """This page's URL for a ``<meta http-equiv="refresh">`` that lands back at
    ``#anchor``. Browsers treat a refresh to the URL already shown, fragment and all,
    as a scroll within the page, not a reload; so a ``refresh`` query parameter
    (ignored by the pages) flips between 1 and 2."""
    args = request.args.to_dict(flat=False)
    args["refresh"] = ["2" if request.args.get("refresh") == "1" else "1"]
    return f"{request.path}?{urlencode(args, doseq=True)}#{anchor}"
