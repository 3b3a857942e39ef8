"""A warehouse experiment's segments: its statistics per value of one exposure
attribute, computed inside the warehouse like the rest of its statistics
(``refresh``), from the attributes its exposures table holds as JSON text (the
``attributes`` role, which ``refresh.export_exposures`` writes).

They mean exactly what the built-in breakdown means (``aggregation.segment_stats``):
per value of one attribute (customers without it under None, booleans as 'true'
and 'false'), the exposed customers per variant, and per stage x variant the
converters and the histogram of each customer's latest rating; the segments add up
to the totals.

Segments are computed at a full recomputation only, as of its watermark, and kept
with when (``WarehouseStats.segments_at``), which the report shows. An increment
adds what changed to counts by stage, variant and day, which say nothing of
segments; recomputing them at each increment would cost a full recomputation each
time.

The attributes broken down are those of the experiment's exposures in the
warehouse: the commonest ``MAX_ATTRIBUTES`` in a sample of them. An attribute with
more than ``aggregation.MAX_SEGMENTS`` values is not broken down (the built-in
breakdown refuses it too). The outcome rows (the costly part) are computed once for
every attribute: each customer's attribute values are one row, joined to the outcome
rows and then to the list of attributes (on a constant: a cross join, which
SQLAlchemy's linter takes for a forgotten condition when spelled ``ON true``), and
CASE picks the value of the row's attribute. Inner joins only: ClickHouse's outer
joins fill defaults, not NULLs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, union_all
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import ColumnElement, FromClause, Select, Subquery, TableClause

from ..aggregation import MAX_SEGMENTS, SEGMENT_ATTRIBUTE
from ..models import WarehouseSource
from . import dialects, query
from .engines import dialect_of, warehouse_engine
from .refresh import explain, relations, run_cancellable, table_of

log = logging.getLogger(__name__)

MAX_ATTRIBUTES = 10
ATTRIBUTE_SAMPLE = 1_000

# [value (None: not recorded), kind ("exposed", "converted" or "rating"), stage
# ("" for exposed), variant key, rating (0 unless a rating), customers]
SegmentCell = list[Any]


def compute_segments(
    source: WarehouseSource,
    rules: query.Rules,
    started_at: datetime | None,
    *,
    received_before: datetime | None = None,
    cancel: threading.Event | None = None,
    memory_limit_mb: int | None = None,
) -> dict[str, Any] | None:
    """The segments of every attribute, computed in the warehouse as it held the
    events received (and the exposures made) before ``received_before``:
    ``{"attributes": {name: [SegmentCell, ...]}, "too_many": [names], "error": None}``,
    sorted. None when the source maps no attributes column. A failing query is
    kept as ``error`` (the totals, computed before, are good); a cancel is raised."""
    columns = source.exposures_columns
    if "attributes" not in columns:
        return None
    dialect = dialect_of(source.url)
    exposures_table = table_of(source.exposures_table, columns.values())
    events, exposures = relations(source, rules, started_at, received_before=received_before)
    key = rules.experiment_key
    with warehouse_engine(source.url, memory_limit_mb=memory_limit_mb).connect() as connection:

        def run(statement: Select[Any]) -> list[Any]:
            return run_cancellable(connection, statement, dialect, cancel)

        try:
            names = commonest_attributes(
                document for (document,) in run(sampled_documents(exposures_table, columns, key))
            )
            too_many: list[str] = []
            if names:
                values = attribute_values(dialect, exposures_table, columns, key, names)
                by_count = run(value_counts(dialect, exposures, values, names, received_before))
                too_many = sorted(names[index] for index, n in by_count if n > MAX_SEGMENTS)
                names = [name for name in names if name not in too_many]
            cells: dict[str, list[SegmentCell]] = {}
            if names:
                values = attribute_values(dialect, exposures_table, columns, key, names)
                exposed, outcomes = segment_statements(
                    dialect, events, exposures, values, names, rules, received_before
                )
                cells = _segment_cells(names, run(exposed), run(outcomes))
        except (SQLAlchemyError, RuntimeError) as exc:
            error = explain(exc)
            log.warning("warehouse segments of %s failed: %s", key, error)
            return {"attributes": {}, "too_many": [], "error": error}
    return {"attributes": cells, "too_many": too_many, "error": None}


def sampled_documents(table: TableClause, columns: Mapping[str, str], experiment_key: str) -> Select[Any]:
    """The attributes of up to ``ATTRIBUTE_SAMPLE`` of the experiment's exposures,
    whichever the warehouse gives first: names are normally the same for every
    customer of one client app."""
    c = table.c
    return select(c[columns["attributes"]]).where(c[columns["experiment"]] == experiment_key).limit(ATTRIBUTE_SAMPLE)


def commonest_attributes(documents: Iterable[Any]) -> list[str]:
    """The names (valid as a segment attribute) found in the most documents, at
    most ``MAX_ATTRIBUTES`` of them, alphabetically; text that is not a JSON
    object is passed over."""
    found: Counter[str] = Counter()
    for document in documents:
        try:
            parsed = json.loads(document) if isinstance(document, str) and document else None
        except ValueError:
            continue
        if isinstance(parsed, dict):
            found.update(name for name in parsed if SEGMENT_ATTRIBUTE.match(name))
    return sorted(sorted(found, key=lambda name: (-found[name], name))[:MAX_ATTRIBUTES])


def attribute_values(
    dialect: dialects.Name, table: TableClause, columns: Mapping[str, str], experiment_key: str, names: Sequence[str]
) -> Subquery:
    """One row per customer exposed to the experiment: ``customer_id`` and the value
    of each attribute (``a0``, ``a1``, ... in the order of ``names``; NULL when not
    recorded), read from the row ``query.role_exposures`` counts (the customer's
    earliest, by time then variant), picked the same way."""
    c = table.c
    customer, document = c[columns["customer_id"]], c[columns["attributes"]]
    order = [c[columns["exposed_at"]], c[columns["variant"]]]
    mine = c[columns["experiment"]] == experiment_key
    # A window, as role_exposures: an aggregate picking a text by a key spent several
    # times as long on both column engines.
    first = func.row_number().over(partition_by=customer, order_by=order)
    rows = select(customer.label("customer_id"), document.label("document"), first.label("first")).where(mine)
    ranked = rows.subquery("ranked")
    firsts = select(ranked.c.customer_id, ranked.c.document).where(ranked.c.first == 1).subquery("attributed")
    f = firsts.c
    picked = (dialects.json_text(dialect, f.document, name).label(f"a{i}") for i, name in enumerate(names))
    return select(f.customer_id, query.constant(0).label("every"), *picked).subquery("attribute_values")


def _attribute_list(values: Subquery, count: int) -> tuple[Subquery, ColumnElement[Any]]:
    """The attributes' indexes as a relation (one row each), and the value, in a row
    joined to it, of that row's attribute."""
    rows = [select(query.constant(i).label("attribute"), query.constant(0).label("every")) for i in range(count)]
    listed = (rows[0] if count == 1 else union_all(*rows)).subquery("attributes")
    value = case(*((listed.c.attribute == query.constant(i), values.c[f"a{i}"]) for i in range(count)))
    return listed, value


def value_counts(
    dialect: dialects.Name,
    exposures: FromClause,
    values: Subquery,
    names: Sequence[str],
    received_before: datetime | None,
) -> Select[Any]:
    """How many values (NULL counted as one) each attribute has among the exposed
    customers: (attribute index, values)."""
    listed, value = _attribute_list(values, len(names))
    x = exposures.c
    distinct = (
        select(listed.c.attribute, value.label("value"))
        .select_from(
            exposures.join(values, values.c.customer_id == x.customer_id).join(listed, listed.c.every == values.c.every)
        )
        .where(*query.counted_exposures(dialect, exposures, before=received_before))
        .distinct()
        .subquery("distinct_values")
    )
    return select(distinct.c.attribute, func.count()).group_by(distinct.c.attribute)


def segment_statements(
    dialect: dialects.Name,
    events: FromClause,
    exposures: FromClause,
    values: Subquery,
    names: Sequence[str],
    rules: query.Rules,
    received_before: datetime | None,
) -> tuple[Select[Any], Select[Any]]:
    """Exposed customers per (attribute index, value, variant), and outcome rows per
    (attribute index, value, stage, variant, rating) with how many converted."""
    listed, value = _attribute_list(values, len(names))
    x = exposures.c
    exposed = (
        select(listed.c.attribute, value.label("value"), x.variant, func.count().label("n"))
        .select_from(
            exposures.join(values, values.c.customer_id == x.customer_id).join(listed, listed.c.every == values.c.every)
        )
        .where(*query.counted_exposures(dialect, exposures, before=received_before))
        .group_by(listed.c.attribute, value, x.variant)
    )
    outcomes = query.outcome_rows(dialect, query.attribution(dialect, events, exposures, rules).counted)
    o = outcomes.c
    # The rating only where there is one: an engine may give a default beside no rating
    # (``dialects.arg_max``); the time of the latest rating is NULL then.
    rating = case((o.rated_at.is_not(None), o.rating)).label("latest_rating")
    by_value = (
        select(
            listed.c.attribute,
            value.label("value"),
            o.stage,
            o.variant,
            rating,
            func.count().label("n"),
            func.count(o.converted_at).label("converted"),
        )
        .select_from(
            outcomes.join(values, values.c.customer_id == o.customer_id).join(listed, listed.c.every == values.c.every)
        )
        .group_by(listed.c.attribute, value, o.stage, o.variant, rating)
    )
    return exposed, by_value


def _segment_cells(
    names: Sequence[str], exposed: Iterable[Sequence[Any]], outcomes: Iterable[Sequence[Any]]
) -> dict[str, list[SegmentCell]]:
    found: dict[str, Counter[tuple[Any, ...]]] = {name: Counter() for name in names}
    for index, value, variant, n in exposed:
        found[names[int(index)]][_text(value), "exposed", "", str(variant), 0] += int(n)
    for index, value, stage, variant, rating, n, converted in outcomes:
        cells = found[names[int(index)]]
        if converted:
            cells[_text(value), "converted", stage, str(variant), 0] += int(converted)
        if rating is not None:
            cells[_text(value), "rating", stage, str(variant), int(rating)] += int(n)
    return {
        name: sorted(([*cell, n] for cell, n in cells.items() if n), key=lambda c: (c[0] is not None, *c))
        for name, cells in found.items()
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
