"""History a person can read: audit entries of experiments and journeys as sentences
("Started by demo@example.com") with what changed in the user's units ("Traffic 50%
→ 80%"), and one way of naming who did it, for every page that shows an actor.

The audit log stores machine values (``{"from": "draft", "to": "running"}``, the
definition's fractions, ``user:<email>`` / ``key:<prefix>``) and the API returns them
as stored; only the pages read them through here. Pure functions: the caller passes
the API keys' names (``key_names``) so that nothing here touches the database.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ApiKey

# Actors that are not a person or a key: the command line and `expplatform demo setup`.
_SYSTEM_ACTORS = {"cli": "the command line", "demo": "the demo setup", "web": "the web pages"}
_LIFECYCLE = {"started": "Started", "paused": "Paused", "resumed": "Resumed", "stopped": "Stopped"}
_OPERATORS = {"eq": "=", "ne": "≠", "in": "in", "not_in": "not in", "lt": "<", "lte": "≤", "gt": ">", "gte": "≥"}
_DECISION = {
    "ship_probability": ("Ship at P(better) ≥", "number"),
    "harm_probability": ("Harmful at P(better) ≤", "number"),
    "max_expected_loss": ("Largest expected loss", "percent"),
    "min_exposed": ("Customers per variant before a call", "count"),
    "guardrail_probability": ("Guardrail probability", "number"),
    "credible_level": ("Credible level", "percent"),
    "srm_alpha": ("Sample-ratio check α", "number"),
}
_PRIOR = {
    "conversion_alpha": "Prior conversion α",
    "conversion_beta": "Prior conversion β",
    "rating_concentration": "Prior rating concentration",
}
_TEXT_LIMIT = 60


class Entry(Protocol):
    """An experiment's or a journey's audit row (``AuditEntry``, ``JourneyAuditEntry``)."""

    at: datetime
    actor: str
    action: str
    details: dict[str, Any]


@dataclass(frozen=True)
class HistoryLine:
    at: datetime
    sentence: str
    changes: tuple[str, ...] = ()


def key_prefix(actor: str | None) -> str | None:
    if actor and actor.startswith("key:"):
        return actor.removeprefix("key:")
    return None


def key_names(session: Session, actors: Iterable[str | None]) -> dict[str, str]:
    """The names of the API keys among ``actors`` (prefix -> name), in one query."""
    prefixes = {prefix for actor in actors if (prefix := key_prefix(actor))}
    if not prefixes:
        return {}
    rows = session.execute(select(ApiKey.prefix, ApiKey.name).where(ApiKey.prefix.in_(prefixes)))
    return {prefix: name for prefix, name in rows}


def actor_label(actor: str | None, names: Mapping[str, str] | None = None) -> str:
    """Who did it, the same way everywhere: a person by e-mail, a key by name."""
    if not actor:
        return "unknown"
    if actor.startswith("user:"):
        return actor.removeprefix("user:")
    prefix = key_prefix(actor)
    if prefix is not None:
        name = (names or {}).get(prefix)
        return f"key {name}" if name else f"key {prefix}…"
    return _SYSTEM_ACTORS.get(actor, actor)


def history_lines(entries: Iterable[Entry], names: Mapping[str, str] | None = None) -> list[HistoryLine]:
    """Experiment or journey audit entries as lines to show, in the order given."""
    return [_line(entry, actor_label(entry.actor, names)) for entry in entries]


def _line(entry: Entry, who: str) -> HistoryLine:
    details = entry.details if isinstance(entry.details, dict) else {}
    action = entry.action
    if action in _LIFECYCLE:
        return HistoryLine(entry.at, f"{_LIFECYCLE[action]} by {who}")
    if action == "created":
        origin = details.get("cloned_from")
        tail = f" as the next iteration of {origin}" if origin else ""
        return HistoryLine(entry.at, f"Created by {who}{tail}")
    if action == "cloned":
        return HistoryLine(entry.at, f"Cloned by {who} as {details.get('to', 'a new experiment')}")
    if action == "updated":
        changes = details.get("changes")
        changes = changes if isinstance(changes, dict) else {}
        lines = tuple(line for name, change in changes.items() for line in describe_change(name, change))
        if details.get("journey"):
            return HistoryLine(entry.at, f"Stages put in journey {details['journey']}'s new order by {who}", lines)
        return HistoryLine(entry.at, f"Updated by {who}", lines)
    return HistoryLine(entry.at, f"{action.replace('_', ' ').capitalize()} by {who}")


# -- one changed field, in the user's units -----------------------------------------


def describe_change(name: str, change: Any) -> list[str]:
    """What changed in the field ``name`` (``{"from": old, "to": new}``, either may
    be missing), as one or more lines."""
    if not isinstance(change, dict):
        return [f"{_label(name)} changed"]
    old, new = change.get("from"), change.get("to")
    describe = _FIELDS.get(name)
    if describe is not None:
        return describe(old, new)
    return [_arrow(_label(name), _value(old), _value(new))]


def _arrow(label: str, old: str, new: str) -> str:
    return f"{label} {old} → {new}"


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ", ".join(value) or "none"
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _quoted(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return "(empty)"
    return f"“{text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 1] + '…'}”"


def percent(value: Any) -> str:
    """A fraction as the forms show it: 0.5 -> "50%", 0.125 -> "12.5%"."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "none" if value is None else str(value)
    return f"{value * 100:.4g}%"


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "none" if value is None else str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _list(values: Any) -> str:
    return ", ".join(str(v) for v in values) if isinstance(values, list) and values else "none"


def _scalar(label: str, show: Callable[[Any], str]) -> Callable[[Any, Any], list[str]]:
    return lambda old, new: [_arrow(label, show(old), show(new))]


def _variants(old: Any, new: Any) -> list[str]:
    before = [v for v in old or [] if isinstance(v, dict)]
    after = [v for v in new or [] if isinstance(v, dict)]
    lines = []
    keys_before, keys_after = [v.get("key") for v in before], [v.get("key") for v in after]
    if keys_before != keys_after:
        lines.append(_arrow("Variants", _list(keys_before), _list(keys_after)))
    weights = [[(v.get("key"), v.get("weight")) for v in side] for side in (before, after)]
    if weights[0] != weights[1]:
        shown = [", ".join(f"{key} {percent(weight)}" for key, weight in side) or "none" for side in weights]
        lines.append(_arrow("Weights", *shown))
    controls = [next((v.get("key") for v in side if v.get("control")), None) for side in (before, after)]
    if controls[0] != controls[1]:
        lines.append(_arrow("Control", controls[0] or "none", controls[1] or "none"))
    described = {v.get("key"): v.get("description") for v in before}
    changed = [v["key"] for v in after if v.get("key") in described and described[v["key"]] != v.get("description")]
    if changed:
        lines.append(f"Description of {', '.join(str(key) for key in changed)} changed")
    return lines or ["Variants changed"]


def _rule(rule: Any) -> str:
    if not isinstance(rule, dict):
        return str(rule)
    value = rule.get("value")
    shown = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return f"{rule.get('attribute')} {_OPERATORS.get(str(rule.get('op')), rule.get('op'))} {shown}"


def _targeting(old: Any, new: Any) -> list[str]:
    def rules(value: Any) -> str:
        return " and ".join(_rule(rule) for rule in value) if isinstance(value, list) and value else "everyone"

    return [_arrow("Targeting", rules(old), rules(new))]


def _scale(value: Any) -> str:
    return f"{value.get('min')}\u2013{value.get('max')}" if isinstance(value, dict) else "none"  # an en dash


def _settings(labels: Mapping[str, tuple[str, str]]) -> Callable[[Any, Any], list[str]]:
    shows = {"percent": percent, "number": _number, "count": _number}

    def describe(old: Any, new: Any) -> list[str]:
        old, new = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
        lines = []
        for name in dict.fromkeys([*old, *new]):
            if old.get(name) != new.get(name):
                label, kind = labels.get(name, (_label(name), "number"))
                lines.append(_arrow(label, shows[kind](old.get(name)), shows[kind](new.get(name))))
        return lines

    return describe


def _forced(old: Any, new: Any) -> list[str]:
    count = [len(side) if isinstance(side, dict) else 0 for side in (old, new)]
    return [_arrow("Forced (QA) customers", _number(count[0]), _number(count[1]))]


def _named_rows(label: str) -> Callable[[Any, Any], list[str]]:
    """Journey stages, personas, questions: the keys in order, or which ones changed."""

    def describe(old: Any, new: Any) -> list[str]:
        before = {row.get("key"): row for row in old or [] if isinstance(row, dict)}
        after = {row.get("key"): row for row in new or [] if isinstance(row, dict)}
        if list(before) != list(after):
            return [_arrow(label, _list(list(before)), _list(list(after)))]
        edited = [str(key) for key in after if before.get(key) != after[key]]
        return [f"{label}: {', '.join(edited)} edited"] if edited else [f"{label} changed"]

    return describe


_FIELDS: dict[str, Callable[[Any, Any], list[str]]] = {
    "name": _scalar("Name", _value),
    "hypothesis": _scalar("Hypothesis", _value),
    "description": _scalar("Description", _value),
    "journey": _scalar("Journey", _value),
    "persona_attribute": _scalar("Persona attribute", _value),
    "target_stage": _scalar("Stage under test", lambda v: "none" if v is None else str(v)),
    "stages": lambda old, new: (
        _named_rows("Stages")(old, new)
        if any(isinstance(row, dict) for row in [*(old or []), *(new or [])])
        else [_arrow("Measured stages", _list(old), _list(new))]
    ),
    "metrics": _scalar("Rating questions", _list),
    "personas": _named_rows("Personas"),
    "questions": _named_rows("Questions"),
    "traffic": _scalar("Traffic", percent),
    "variants": _variants,
    "targeting": _targeting,
    "satisfaction_scale": _scalar("Rating scale", _scale),
    "layer": _scalar("Layer", lambda v: "none" if v is None else str(v)),
    "layer_share": _scalar("Share of the layer", percent),
    "decision": _settings(_DECISION),
    "prior": _settings({name: (label, "number") for name, label in _PRIOR.items()}),
    "forced_variants": _forced,
}


def duration(seconds: float | None) -> str:
    """Seconds as people say them: "8 s", "2 min 5 s", "1 h 4 min"."""
    if seconds is None:
        return "—"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def ago(moment: datetime | None, now: datetime) -> str:
    """How long ago, roughly ("just now", "5 min ago", "3 h ago", "2 days ago"), or
    "never"; past a month the date."""
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    days = int(seconds // 86400)
    if days <= 31:
        return f"{days} day{'s' if days != 1 else ''} ago"
    return moment.strftime("%Y-%m-%d")
