"""The template helpers of ``expplatform.history``: who did something, an audit log
as sentences, and durations, available to every page (and the standalone report)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

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
