"""The wire format of experiments, journeys, warehouse sources and audit entries: the one place that
turns rows into JSON, so the models stay columns only and the OpenAPI schemas have
one source to be checked against."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..experiments import Page, export_definition
from ..journeys import export_journey
from ..models import (
    AuditEntry,
    Experiment,
    Journey,
    JourneyAuditEntry,
    WarehouseSource,
    WarehouseSourceAuditEntry,
    iso_z,
)
from ..warehouse.engines import dialect_of
from ..warehouse.sources import export_source


def experiment(
    row: Experiment, *, audit: Iterable[AuditEntry] | None = None, notices: Iterable[str] = ()
) -> dict[str, Any]:
    """The definition exactly as ``export_definition`` gives it (so API and files
    agree), with the layer fields always present, plus the lifecycle state."""
    body: dict[str, Any] = {"layer": None, "layer_share": None, "warehouse_source": None, **export_definition(row)}
    body.update(
        status=row.status,
        salt=row.salt,
        layer_ranges=row.layer_ranges,
        cloned_from=row.cloned_from,
        simulated=row.simulated,
        created_at=iso_z(row.created_at),
        updated_at=iso_z(row.updated_at),
        started_at=iso_z(row.started_at),
        stopped_at=iso_z(row.stopped_at),
    )
    if audit is not None:
        body["audit"] = [audit_entry(entry) for entry in audit]
    notices = list(notices)
    if notices:
        body["notices"] = notices
    return body


def experiment_page(page: Page) -> dict[str, Any]:
    return {
        "items": [experiment(row) for row in page.items],
        "page": page.page,
        "per_page": page.per_page,
        "total": page.total,
    }


def audit_entry(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": iso_z(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "experiment": entry.experiment_key,
        "details": entry.details,
    }


def journey(
    row: Journey, *, audit: Iterable[JourneyAuditEntry] | None = None, notices: Iterable[str] = ()
) -> dict[str, Any]:
    """The definition exactly as ``export_journey`` gives it (so API and files agree),
    plus when it was made and last changed."""
    body: dict[str, Any] = export_journey(row)
    body.update(created_at=iso_z(row.created_at), updated_at=iso_z(row.updated_at))
    if audit is not None:
        body["audit"] = [journey_audit_entry(entry) for entry in audit]
    notices = list(notices)
    if notices:
        body["notices"] = notices
    return body


def journey_audit_entry(entry: JourneyAuditEntry) -> dict[str, Any]:
    return {
        "at": iso_z(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "journey": entry.journey_key,
        "details": entry.details,
    }


def warehouse_source(
    row: WarehouseSource,
    *,
    experiments: Iterable[str] = (),
    audit: Iterable[WarehouseSourceAuditEntry] | None = None,
    notices: Iterable[str] = (),
) -> dict[str, Any]:
    """The source as ``export_source`` gives it (the URL's password masked, never
    the stored URL), the experiments reading from it, and when it changed."""
    body: dict[str, Any] = export_source(row)
    body.update(
        dialect=dialect_of(row.url),
        experiments=list(experiments),
        created_at=iso_z(row.created_at),
        updated_at=iso_z(row.updated_at),
    )
    if audit is not None:
        body["audit"] = [warehouse_audit_entry(entry) for entry in audit]
    notices = list(notices)
    if notices:
        body["notices"] = notices
    return body


def warehouse_audit_entry(entry: WarehouseSourceAuditEntry) -> dict[str, Any]:
    return {
        "at": iso_z(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "source": entry.source_key,
        "details": entry.details,
    }
