"""Warehouse sources defined like everything else: one validating parser for the
JSON API, the TOML files (``kind = "warehouse"``) and the web form; a service that
checks a source against the live warehouse, stores it, audits every change and
refuses to delete a source an experiment reads from.

Credentials: the URL is stored as given (the statistics need it) and never shown
back. :func:`masked_url` is the only form of it that leaves this module (API
responses, pages, audit entries, messages); an update that leaves the URL out keeps
the stored one, and so does the masked URL sent back unchanged, so a client may GET
a source, change a field and send it all back (a masked password in any other URL is
refused: the stored password is never sent to another host).

Mapping: ``events_columns`` and ``exposures_columns`` map a role
(``mapping.EVENT_ROLES``, ``mapping.EXPOSURE_ROLES``) to a column. A required role
left out defaults to the column of its own name; an optional role left out defaults
to the same-named column when the table has one (known only when the source is
checked), else it is unmapped; ``null`` (``""`` in a file or form) leaves an optional
role unmapped on purpose. Table and column names are identifiers, validated here and
only ever used as quoted identifiers or bound parameters, never pasted into SQL.

Checking: unless the caller says ``check: false``, the tables are read from the
warehouse's catalog before anything is stored (``inspection``), outside any write
transaction (a slow warehouse must not hold the platform's write lock), and every
mismatch is reported by field: a table missing, a role's column missing or of the
wrong kind of type, the warehouse unreachable.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import delete, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from ..definitions import MAX_NAME, SLUG, UNSTORABLE_MESSAGE, DefinitionFileError, storable
from ..errors import Conflict, InvalidInput, MalformedRequest, NotFound
from ..models import Experiment, WarehouseSource, WarehouseSourceAuditEntry, WarehouseStats, utcnow
from ..versioning import bump_version
from .engines import WarehouseUnavailable
from .inspection import Columns, split_table, table_columns, type_families
from .mapping import EVENT_ROLES, EXPOSURE_ROLES, Role

KIND = "warehouse"
SCHEMES = ("postgresql", "postgresql+psycopg", "duckdb", "clickhousedb", "chdb")
MAX_URL = 2_000
MAX_IDENTIFIER = 63
MAX_CLOCK_SKEW = 3600
DEFAULT_CLOCK_SKEW = 5.0
MASK = "***"
# A table or column name: letters, digits, _ and $, not starting with a digit.
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
# Query parameters of a URL that carry credentials (masked like the password).
_SECRET_PARAMETER = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)

DEFINITION_FIELDS = (
    "key",
    "name",
    "url",
    "events_table",
    "events_columns",
    "exposures_table",
    "exposures_columns",
    "clock_skew_seconds",
    "export_exposures",
    "check",
)
FILE_FIELDS = ("kind", "url_env", *DEFINITION_FIELDS)
ROLES: dict[str, tuple[Role, ...]] = {"events_columns": EVENT_ROLES, "exposures_columns": EXPOSURE_ROLES}
TABLE_OF = {"events_columns": "events_table", "exposures_columns": "exposures_table"}


class WarehouseCheckFailed(InvalidInput):
    """The warehouse does not hold what the source says (or cannot be reached);
    ``fields`` names each mismatch (``events_columns.value``, ``url``)."""

    default_code = "warehouse_check_failed"


@dataclass(frozen=True)
class SourceDefinition:
    """A source as given: ``url`` None keeps the stored one (updates only); the
    column mappings hold the roles given (None: unmapped on purpose)."""

    key: str
    name: str
    url: str | None
    events_table: str
    exposures_table: str
    events_columns: Mapping[str, str | None] = field(default_factory=dict)
    exposures_columns: Mapping[str, str | None] = field(default_factory=dict)
    clock_skew_seconds: float = DEFAULT_CLOCK_SKEW
    # The platform copies its exposures into exposures_table (``warehouse export``);
    # False: that table is the warehouse's own.
    export_exposures: bool = True
    # Read the warehouse's catalog before storing (not part of the definition).
    check: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class PreparedSource:
    """A definition ready to store: the URL in full and every mapping resolved."""

    key: str
    name: str
    url: str
    events_table: str
    events_columns: dict[str, str]
    exposures_table: str
    exposures_columns: dict[str, str]
    clock_skew_seconds: float
    export_exposures: bool
    checked: bool


@dataclass(frozen=True)
class SavedSource:
    source: WarehouseSource
    action: Literal["created", "updated", "unchanged"]
    changes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    notices: tuple[str, ...] = ()


# -- the URL, masked -------------------------------------------------------------------


def masked_url(url: str) -> str:
    """The URL with its password (and any credential-like query parameter) replaced
    by ``***``: the only form of a source's URL that is ever shown."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return MASK
    parts = urlsplit(shown)
    if parts.query:
        query = [(k, MASK if _SECRET_PARAMETER.search(k) else v) for k, v in parse_qsl(parts.query, True)]
        shown = urlunsplit(parts._replace(query=urlencode(query, safe="*/")))
    return shown


def _with_stored_password(url: str, stored: str | None) -> str:
    """The stored URL for the masked one sent back unchanged. A masked password in
    any other URL is refused: the stored password goes to the stored host only."""
    if stored is not None and url == masked_url(stored):
        return stored
    try:
        masked = make_url(url).password == MASK
    except (ArgumentError, ValueError):
        masked = False
    if masked:
        raise InvalidInput(
            {"url": f"{MASK} stands for the stored password only in the stored URL, unchanged; type the password"}
        )
    return url


# -- parsing ---------------------------------------------------------------------------


def _text(errors: dict[str, str], name: str, value: Any, max_length: int) -> str | None:
    if not isinstance(value, str) or not value.strip():
        errors[name] = "must be non-empty text"
        return None
    if not storable(value):
        errors[name] = UNSTORABLE_MESSAGE
        return None
    if len(value.strip()) > max_length:
        errors[name] = f"must be at most {max_length} characters"
        return None
    return value.strip()


def _url(errors: dict[str, str], value: Any) -> str | None:
    text = _text(errors, "url", value, MAX_URL)
    if text is None:
        return None
    scheme = urlsplit(text).scheme if "://" in text else ""
    if scheme not in SCHEMES:
        errors["url"] = (
            "must start with one of "
            + ", ".join(f"{name}://" for name in SCHEMES)
            + " (PostgreSQL, DuckDB file, ClickHouse server, embedded ClickHouse folder)"
        )
        return None
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError):
        errors["url"] = "is not a valid database URL"
        return None
    if scheme in ("duckdb", "chdb") and not parsed.database:
        errors["url"] = f"must name a path: {scheme}:///path/to/{'file.duckdb' if scheme == 'duckdb' else 'folder'}"
        return None
    if scheme not in ("duckdb", "chdb") and not parsed.host:
        errors["url"] = f"must name a host: {scheme}://user:password@host/database"
        return None
    return text


def _table(errors: dict[str, str], name: str, value: Any) -> str | None:
    if not isinstance(value, str):
        errors[name] = "must be a table name, optionally schema-qualified (schema.table)"
        return None
    parts = value.strip().split(".")
    if len(parts) > 2 or not all(IDENTIFIER.fullmatch(part) for part in parts):
        errors[name] = (
            f"must be a table name (letters, digits, _ or $, at most {MAX_IDENTIFIER} characters, "
            "not starting with a digit), optionally schema-qualified: schema.table"
        )
        return None
    return value.strip()


def _columns(errors: dict[str, str], name: str, value: Any) -> dict[str, str | None] | None:
    roles = {role.name: role for role in ROLES[name]}
    if not isinstance(value, Mapping):
        errors[name] = "must be an object mapping roles to column names"
        return None
    given: dict[str, str | None] = {}
    for role, column in value.items():
        path = f"{name}.{role}"
        if role not in roles:
            shown = role if isinstance(role, str) and storable(role) else "?"
            errors[f"{name}.{shown}"] = f"unknown role; the roles are: {', '.join(roles)}"
        elif column is None or column == "":
            if roles[role].required:
                errors[path] = "is required: name the column (default: a column named like the role)"
            else:
                given[role] = None
        elif not isinstance(column, str) or not IDENTIFIER.fullmatch(column.strip()):
            errors[path] = (
                f"must be a column name (letters, digits, _ or $, at most {MAX_IDENTIFIER} characters, "
                "not starting with a digit)"
            )
        else:
            given[role] = column.strip()
    return None if any(path.startswith(name) for path in errors) else given


def _skew(errors: dict[str, str], value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        errors["clock_skew_seconds"] = f"must be a number of seconds from 0 to {MAX_CLOCK_SKEW}"
        return None
    if not 0 <= value <= MAX_CLOCK_SKEW:
        errors["clock_skew_seconds"] = f"must be from 0 to {MAX_CLOCK_SKEW} seconds"
        return None
    return float(value)


def parse_source(
    data: Any, *, require_url: bool = True, from_file: bool = False, environ: Mapping[str, str] | None = None
) -> SourceDefinition:
    """Validate a source mapping; raise InvalidInput naming every bad field. A file
    (``from_file``) says ``kind = "warehouse"`` and may take its URL from an
    environment variable (``url_env = "WAREHOUSE_URL"``) to keep secrets out of it."""
    if not isinstance(data, Mapping):
        raise MalformedRequest(fields={"source": "must be an object"})
    errors: dict[str, str] = {}
    known = FILE_FIELDS if from_file else DEFINITION_FIELDS
    for name in data:
        if name not in known:
            errors[str(name) if storable(str(name)) else "?"] = "unknown field"
    if from_file and data.get("kind") != KIND:
        errors["kind"] = f"must be {KIND!r}"
    url_value = data.get("url")
    if from_file and data.get("url_env") is not None:
        variable = data["url_env"]
        if url_value is not None:
            errors["url_env"] = "give url or url_env, not both"
        elif not isinstance(variable, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", variable):
            errors["url_env"] = "must be the name of an environment variable"
        else:
            url_value = (os.environ if environ is None else environ).get(variable)
            if not url_value:
                errors["url_env"] = f"the environment variable {variable} is not set"
    for name in ("key", "name", "events_table", "exposures_table"):
        if name not in data:
            errors[name] = "is required"
    if url_value is None and require_url and "url_env" not in errors:
        errors["url"] = "is required" + (" (or url_env, the environment variable holding it)" if from_file else "")
    values: dict[str, Any] = {}
    if "key" in data:
        if not isinstance(data["key"], str) or not SLUG.fullmatch(data["key"]):
            errors["key"] = (
                "must be a slug: 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
            )
        values["key"] = data["key"]
    if "name" in data:
        values["name"] = _text(errors, "name", data["name"], MAX_NAME)
    values["url"] = _url(errors, url_value) if url_value is not None and "url_env" not in errors else None
    for name in ("events_table", "exposures_table"):
        if name in data:
            values[name] = _table(errors, name, data[name])
    for name in ("events_columns", "exposures_columns"):
        values[name] = _columns(errors, name, data.get(name) or {})
    values["clock_skew_seconds"] = _skew(errors, data.get("clock_skew_seconds", DEFAULT_CLOCK_SKEW))
    check = data.get("check", True)
    for name, flag in (("check", check), ("export_exposures", data.get("export_exposures", True))):
        if not isinstance(flag, bool):
            errors[name] = "must be true or false"
    values["export_exposures"] = data.get("export_exposures", True)
    if errors:
        raise InvalidInput(errors)
    return SourceDefinition(**values, check=check)


# -- the mapping, resolved and checked --------------------------------------------------


def resolve_columns(
    roles: tuple[Role, ...], given: Mapping[str, str | None], present: Columns | None
) -> dict[str, str]:
    """role -> column for every mapped role (see the module docstring): ``present``
    is the table's columns, or None when the warehouse was not read."""
    resolved: dict[str, str] = {}
    for role in roles:
        if role.name in given:
            column = given[role.name]
            if column is not None:
                resolved[role.name] = column
        elif role.required or (present is not None and role.name in present):
            resolved[role.name] = role.name
    return resolved


def _family_word(family: str) -> str:
    return {"text": "a text", "integer": "an integer", "timestamp": "a timestamp", "boolean": "a boolean"}[family]


def _check_table(
    fields: dict[str, str], name: str, table: str, present: Columns | None, resolved: dict[str, str]
) -> None:
    if present is None:
        schema, bare = split_table(table)
        where = f" in schema {schema}" if schema else ""
        fields[TABLE_OF[name]] = f"the warehouse has no table {bare}{where}"
        return
    for role in ROLES[name]:
        column = resolved.get(role.name)
        if column is None:
            continue
        if column not in present:
            fields[f"{name}.{role.name}"] = (
                f"{table} has no column {column} (the {role.name} role: {role.meaning}); "
                f"its columns: {', '.join(present)}"
            )
        elif role.family not in type_families(present[column]):
            fields[f"{name}.{role.name}"] = (
                f"column {column} of {table} is {present[column]}, not {_family_word(role.family)} type"
            )


def prepare(definition: SourceDefinition, *, stored_url: str | None = None) -> PreparedSource:
    """The definition resolved (URL, column mappings), checked against the warehouse
    unless ``definition.check`` is false; raises WarehouseCheckFailed by field. Runs
    no platform database work: call it outside a write transaction."""
    url = definition.url if definition.url is not None else stored_url
    if url is None:
        raise InvalidInput({"url": "is required"})
    url = _with_stored_password(url, stored_url)
    present: dict[str, Columns | None] = {}
    if definition.check:
        tables = [definition.events_table, definition.exposures_table]
        try:
            present = table_columns(url, tables)
        except WarehouseUnavailable as exc:
            raise WarehouseCheckFailed(
                {"url": f"the warehouse cannot be reached: {exc}"},
                f"The warehouse at {masked_url(url)} cannot be reached: {exc}",
            ) from None
    columns: dict[str, dict[str, str]] = {}
    problems: dict[str, str] = {}
    for name in ("events_columns", "exposures_columns"):
        table = getattr(definition, TABLE_OF[name])
        table_present = present.get(table) if definition.check else None
        columns[name] = resolve_columns(ROLES[name], getattr(definition, name), table_present)
        if definition.check:
            _check_table(problems, name, table, table_present, columns[name])
    if problems:
        raise WarehouseCheckFailed(
            problems, "The warehouse does not match the source: " + "; ".join(f"{k}: {v}" for k, v in problems.items())
        )
    return PreparedSource(
        key=definition.key,
        name=definition.name,
        url=url,
        events_table=definition.events_table,
        events_columns=columns["events_columns"],
        exposures_table=definition.exposures_table,
        exposures_columns=columns["exposures_columns"],
        clock_skew_seconds=definition.clock_skew_seconds,
        export_exposures=definition.export_exposures,
        checked=definition.check,
    )


@dataclass(frozen=True)
class CheckReport:
    ok: bool
    problems: Mapping[str, str]
    message: str


def check_source(source: WarehouseSource) -> CheckReport:
    """Check a stored source against its warehouse now (the mapping as stored)."""
    definition = SourceDefinition(
        key=source.key,
        name=source.name,
        url=None,
        events_table=source.events_table,
        exposures_table=source.exposures_table,
        events_columns={role.name: source.events_columns.get(role.name) for role in EVENT_ROLES},
        exposures_columns={role.name: source.exposures_columns.get(role.name) for role in EXPOSURE_ROLES},
        clock_skew_seconds=source.clock_skew_seconds,
        export_exposures=source.export_exposures,
    )
    try:
        prepare(definition, stored_url=source.url)
    except WarehouseCheckFailed as exc:
        return CheckReport(ok=False, problems=exc.fields, message=exc.message)
    return CheckReport(ok=True, problems={}, message="The warehouse has every table and column the source maps.")


# -- reading ---------------------------------------------------------------------------


def find_source(session: Session, key: str) -> WarehouseSource | None:
    return session.scalars(select(WarehouseSource).where(WarehouseSource.key == key)).one_or_none()


def get_source(session: Session, key: str) -> WarehouseSource:
    """The source with ``key`` (matched whole), or NotFound (404)."""
    source = find_source(session, key) if isinstance(key, str) and SLUG.fullmatch(key) else None
    if source is None:
        raise NotFound(f"No warehouse source with key {key!r}.", code="warehouse_source_not_found")
    return source


def list_sources(session: Session) -> list[WarehouseSource]:
    return list(session.scalars(select(WarehouseSource).order_by(WarehouseSource.key)))


def source_for_experiment(session: Session, key: str | None) -> WarehouseSource | None:
    """The source an experiment definition names (None: the built-in events), or
    InvalidInput on the definition's ``warehouse_source`` field."""
    if key is None:
        return None
    source = find_source(session, key)
    if source is None:
        raise InvalidInput({"warehouse_source": f"no warehouse source has the key {key!r}"})
    return source


def experiments_using(session: Session, source: WarehouseSource) -> list[str]:
    return list(
        session.scalars(
            select(Experiment.key).where(Experiment.warehouse_source_id == source.id).order_by(Experiment.key)
        )
    )


def audit_log(session: Session, source: WarehouseSource) -> list[WarehouseSourceAuditEntry]:
    """Newest first."""
    return list(
        session.scalars(
            select(WarehouseSourceAuditEntry)
            .where(WarehouseSourceAuditEntry.source_id == source.id)
            .order_by(WarehouseSourceAuditEntry.id.desc())
        )
    )


def export_source(source: WarehouseSource) -> dict[str, Any]:
    """The source in its canonical, safe form (the URL masked; every role listed,
    None where unmapped): what the API returns and the pages show."""
    return {
        "key": source.key,
        "name": source.name,
        "url": masked_url(source.url),
        "events_table": source.events_table,
        "events_columns": {role.name: source.events_columns.get(role.name) for role in EVENT_ROLES},
        "exposures_table": source.exposures_table,
        "exposures_columns": {role.name: source.exposures_columns.get(role.name) for role in EXPOSURE_ROLES},
        "clock_skew_seconds": source.clock_skew_seconds,
        "export_exposures": source.export_exposures,
    }


def with_changes(source: WarehouseSource, changes: Mapping[str, Any]) -> SourceDefinition:
    """The definition after a partial update: each field given replaces the stored
    one (a column mapping replaces the whole mapping); the URL, left out or null,
    stays the stored one."""
    if not isinstance(changes, Mapping):
        raise MalformedRequest(fields={"source": "must be an object"})
    merged: dict[str, Any] = {k: v for k, v in export_source(source).items() if k != "url"}
    for name, value in changes.items():
        if name == "url" and value is None:
            continue
        if value is None and name in ("events_columns", "exposures_columns"):
            merged[name] = {}
        elif value is None and name == "clock_skew_seconds":
            merged[name] = DEFAULT_CLOCK_SKEW
        elif value is None and name == "export_exposures":
            merged[name] = True
        else:
            merged[name] = value
    return parse_source(merged, require_url=False)


# -- writing ---------------------------------------------------------------------------


def _safe_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {**values, "url": masked_url(values["url"])}


def _values(prepared: PreparedSource | WarehouseSource) -> dict[str, Any]:
    return {
        "name": prepared.name,
        "url": prepared.url,
        "events_table": prepared.events_table,
        "events_columns": dict(prepared.events_columns),
        "exposures_table": prepared.exposures_table,
        "exposures_columns": dict(prepared.exposures_columns),
        "clock_skew_seconds": prepared.clock_skew_seconds,
        "export_exposures": prepared.export_exposures,
    }


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """field -> {from, to}, the URL masked; a changed password alone shows as
    ``credentials_changed`` (its value never appears)."""
    changes: dict[str, dict[str, Any]] = {}
    for name in new:
        if old[name] == new[name]:
            continue
        if name == "url":
            before, after = masked_url(old[name]), masked_url(new[name])
            changes[name] = {"from": before, "to": after}
            if before == after:
                changes[name]["credentials_changed"] = True
        else:
            changes[name] = {"from": old[name], "to": new[name]}
    return changes


def _audit(session: Session, source: WarehouseSource, actor: str, action: str, details: dict[str, Any]) -> None:
    session.add(
        WarehouseSourceAuditEntry(
            source_id=source.id, source_key=source.key, actor=actor, action=action, details=details, at=utcnow()
        )
    )


def _store(source: WarehouseSource, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        setattr(source, name, value)


def _notices(prepared: PreparedSource) -> tuple[str, ...]:
    if prepared.checked:
        return ()
    return ("saved without checking the warehouse: optional roles are mapped only where given",)


def create_source(session: Session, prepared: PreparedSource, actor: str) -> SavedSource:
    bump_version(session)
    if find_source(session, prepared.key) is not None:
        raise Conflict(
            "duplicate_key",
            f"A warehouse source with key {prepared.key!r} exists already; keys are unique.",
            fields={"key": "is taken"},
        )
    now = utcnow()
    source = WarehouseSource(key=prepared.key, created_at=now, updated_at=now)
    values = _values(prepared)
    _store(source, values)
    session.add(source)
    session.flush()
    _audit(session, source, actor, "created", {"values": _safe_values(values)})
    session.flush()
    return SavedSource(source, "created", notices=_notices(prepared))


def update_source(session: Session, key: str, prepared: PreparedSource, actor: str) -> SavedSource:
    """Make source ``key`` match ``prepared`` (its key cannot change)."""
    bump_version(session)
    source = get_source(session, key)
    if prepared.key != source.key:
        raise Conflict(
            "key_immutable",
            "A warehouse source's key cannot change; experiments name it.",
            fields={"key": f"must stay {source.key!r}"},
        )
    new = _values(prepared)
    changes = _diff(_values(source), new)
    if not changes:
        return SavedSource(source, "unchanged", notices=_notices(prepared))
    _store(source, new)
    source.updated_at = utcnow()
    _audit(session, source, actor, "updated", {"changes": changes})
    session.flush()
    return SavedSource(source, "updated", changes=changes, notices=_notices(prepared))


def apply_source(session: Session, prepared: PreparedSource, actor: str) -> SavedSource:
    """Create or update a source to match a definition file; an unchanged file
    writes nothing."""
    current = find_source(session, prepared.key)
    if current is None:
        return create_source(session, prepared, actor)
    if not _diff(_values(current), _values(prepared)):
        return SavedSource(current, "unchanged")
    return update_source(session, prepared.key, prepared, actor)


def delete_source(session: Session, key: str, actor: str) -> None:
    """Delete a source no experiment reads from (409 ``source_in_use`` otherwise);
    its audit log stays, keyed by the source's key."""
    bump_version(session)
    source = get_source(session, key)
    users = experiments_using(session, source)
    if users:
        raise Conflict(
            "source_in_use",
            f"Warehouse source {key!r} is used by experiment(s) {', '.join(users)}; "
            "detach them (warehouse_source: null) before deleting it.",
        )
    session.execute(delete(WarehouseStats).where(WarehouseStats.source_id == source.id))
    _audit(session, source, actor, "deleted", {"values": _safe_values(_values(source))})
    session.flush()
    session.execute(
        update(WarehouseSourceAuditEntry).where(WarehouseSourceAuditEntry.source_id == source.id).values(source_id=None)
    )
    session.delete(source)
    session.flush()


def prepare_files(files: list[tuple[Path, SourceDefinition]]) -> list[PreparedSource]:
    """Prepare (and check) the sources of definition files, every fault of every
    file reported as ``DefinitionFileError`` lines, so an apply stays all or nothing."""
    prepared: list[PreparedSource] = []
    problems: list[str] = []
    for path, definition in files:
        try:
            prepared.append(prepare(definition))
        except InvalidInput as exc:
            problems.extend(f"{path}: {name}: {why}" for name, why in exc.fields.items())
    if problems:
        raise DefinitionFileError(problems)
    return prepared


# -- updates, for thin handlers --------------------------------------------------------


def update_definition(session: Session, key: str, changes: Any) -> tuple[SourceDefinition, str]:
    """For a partial update: the merged definition (see :func:`with_changes`) and the
    stored URL, to :func:`prepare` outside the write transaction."""
    source = get_source(session, key)
    return with_changes(source, changes), source.url


__all__ = [
    "KIND",
    "CheckReport",
    "PreparedSource",
    "SavedSource",
    "SourceDefinition",
    "WarehouseCheckFailed",
    "apply_source",
    "audit_log",
    "check_source",
    "create_source",
    "delete_source",
    "experiments_using",
    "export_source",
    "find_source",
    "get_source",
    "list_sources",
    "masked_url",
    "parse_source",
    "prepare",
    "prepare_files",
    "resolve_columns",
    "source_for_experiment",
    "update_definition",
    "update_source",
    "with_changes",
]
