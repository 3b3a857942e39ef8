"""Definition files and the `expplatform experiments` commands, and the promise that
an experiment defined through the JSON API and through a TOML file is stored
identically (the web form's leg reuses :func:`canonical`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from expplatform import experiments
from expplatform.cli import main
from expplatform.definitions import definition_to_mapping, dump_toml, parse_definition
from expplatform.models import AuditEntry, Experiment
from expplatform.versioning import read_version

REPO = Path(__file__).resolve().parent.parent

CHECKOUT_TOML = """\
key = "checkout-button"
name = "Green checkout button"
hypothesis = "Green makes more people buy."
target_stage = "purchase"
traffic = 0.5

[satisfaction_scale]
min = 1
max = 5

[forced_variants]
qa-1 = "green"

[[variants]]
key = "control"
description = "grey"
weight = 1

[[variants]]
key = "green"
description = "green"
weight = 3

[[targeting]]
attribute = "platform"
op = "in"
value = ["web", "ios"]

[[targeting]]
attribute = "orders"
op = "gte"
value = 1
"""

CHECKOUT_JSON: dict[str, Any] = {
    "key": "checkout-button",
    "name": "Green checkout button",
    "hypothesis": "Green makes more people buy.",
    "target_stage": "purchase",
    "traffic": 0.5,
    "satisfaction_scale": {"min": 1, "max": 5},
    "forced_variants": {"qa-1": "green"},
    "variants": [
        {"key": "control", "description": "grey", "weight": 1},
        {"key": "green", "description": "green", "weight": 3},
    ],
    "targeting": [
        {"attribute": "platform", "op": "in", "value": ["web", "ios"]},
        {"attribute": "orders", "op": "gte", "value": 1},
    ],
}


def canonical(db, key: str) -> dict[str, Any]:
    """Everything stored about an experiment's definition, with what is expected to
    differ between two stored copies (ids, key, timestamps, audit) left out: the
    exported definition plus the variant rows as stored."""
    with db.sessionmaker() as session:
        experiment = experiments.get_experiment(session, key)
        stored = experiments.export_definition(experiment)
        stored["variant_rows"] = [
            (v.position, v.key, v.description, v.weight, v.is_control) for v in experiment.variants
        ]
        stored["state"] = (
            experiment.status,
            experiment.salt == experiment.key,
            experiment.layer_ranges,
            experiment.cloned_from,
        )
    del stored["key"]
    return stored


@pytest.fixture
def cli(runner):
    def _invoke(*args: str):
        return runner.invoke(main, list(args))

    return _invoke


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def audit_count(db) -> int:
    with db.sessionmaker() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry))


def version(db) -> int:
    with db.sessionmaker() as session:
        return read_version(session)


def test_api_and_toml_file_store_identical_experiments(db, admin_api, cli, tmp_path):
    assert admin_api.post("/api/v1/experiments", json=CHECKOUT_JSON).status_code == 201
    result = cli(
        "experiments",
        "apply",
        str(write(tmp_path, "copy.toml", CHECKOUT_TOML.replace('"checkout-button"', '"checkout-copy"'))),
    )
    assert result.exit_code == 0, result.output
    assert canonical(db, "checkout-copy") == canonical(db, "checkout-button")
    assert canonical(db, "checkout-button")["variant_rows"] == [
        (0, "control", "grey", 0.25, True),
        (1, "green", "green", 0.75, False),
    ]


def test_apply_creates_then_is_idempotent(db, cli, tmp_path):
    path = write(tmp_path, "checkout.toml", CHECKOUT_TOML)
    first = cli("experiments", "apply", str(path))
    assert first.exit_code == 0
    assert "created checkout-button (draft)" in first.output and "normalised" in first.output
    entries, bumped = audit_count(db), version(db)
    again = cli("experiments", "apply", str(path))
    assert again.exit_code == 0 and again.output.strip() == "unchanged checkout-button (draft)"
    assert audit_count(db) == entries and version(db) == bumped  # nothing written at all


def test_apply_updates_a_draft_and_prints_what_changed(db, cli, tmp_path):
    cli("experiments", "apply", str(write(tmp_path, "a.toml", CHECKOUT_TOML)))
    changed = CHECKOUT_TOML.replace("traffic = 0.5", "traffic = 0.75").replace('name = "Green', 'name = "Greener')
    result = cli("experiments", "apply", str(write(tmp_path, "a.toml", changed)))
    assert result.exit_code == 0 and result.output.splitlines()[0] == "updated checkout-button: name, traffic"
    with db.sessionmaker() as session:
        experiment = experiments.get_experiment(session, "checkout-button")
        entry = experiments.audit_log(session, experiment)[0]
    assert experiment.traffic == 0.75 and entry.actor == "cli" and entry.action == "updated"
    assert entry.details["changes"]["traffic"] == {"from": 0.5, "to": 0.75}


def test_apply_only_updates_drafts_and_is_all_or_nothing(db, admin_api, cli, tmp_path):
    cli("experiments", "apply", str(write(tmp_path, "a.toml", CHECKOUT_TOML)))
    admin_api.post("/api/v1/experiments/checkout-button/start")
    other = dump_toml(definition_to_mapping(parse_definition({**CHECKOUT_JSON, "key": "other"})))
    folder = tmp_path / "defs"
    folder.mkdir()
    write(folder, "a.toml", CHECKOUT_TOML.replace("traffic = 0.5", "traffic = 0.75"))
    write(folder, "b.toml", other)
    result = cli("experiments", "apply", str(folder))
    assert result.exit_code == 1
    assert "is running; definition files only update drafts" in result.output and "nothing applied" in result.output
    with db.sessionmaker() as session:
        assert session.scalar(select(Experiment).where(Experiment.key == "other")) is None
        assert experiments.get_experiment(session, "checkout-button").traffic == 0.5
    unchanged = cli("experiments", "apply", str(tmp_path / "a.toml"))
    assert unchanged.exit_code == 0 and "unchanged checkout-button (running)" in unchanged.output


def test_apply_reports_invalid_files_and_applies_nothing(db, cli, tmp_path):
    good = write(tmp_path, "good.toml", CHECKOUT_TOML)
    bad = write(
        tmp_path,
        "bad.toml",
        CHECKOUT_TOML.replace('key = "checkout-button"', 'key = "other"').replace("weight = 3", "weight = -3"),
    )
    result = cli("experiments", "apply", str(good), str(bad))
    assert result.exit_code == 1
    assert (
        f"{bad}: variants.1.weight: must be a positive number" in result.output and "nothing applied" in result.output
    )
    assert audit_count(db) == 0


def test_apply_needs_existing_paths(cli, tmp_path):
    assert cli("experiments", "apply", str(tmp_path / "missing.toml")).exit_code == 2


def test_export_then_apply_round_trips(db, admin_api, cli, tmp_path):
    admin_api.post(
        "/api/v1/experiments",
        json={**CHECKOUT_JSON, "layer": "checkout", "layer_share": 0.3, "decision": {"min_exposed": 50}},
    )
    exported = cli("experiments", "export", "checkout-button")
    assert exported.exit_code == 0
    assert exported.output == cli("experiments", "export", "checkout-button").output  # deterministic
    before = canonical(db, "checkout-button")
    out = tmp_path / "exported.toml"
    assert cli("experiments", "export", "checkout-button", "-o", str(out)).exit_code == 0
    assert out.read_text() == exported.output
    again = cli("experiments", "apply", str(out))
    assert again.exit_code == 0 and again.output.strip() == "unchanged checkout-button (draft)"
    copy = write(tmp_path, "copy.toml", out.read_text().replace('key = "checkout-button"', 'key = "checkout-copy"'))
    assert cli("experiments", "apply", str(copy)).exit_code == 0
    assert canonical(db, "checkout-copy") == before


def test_export_of_unknown_key_fails(cli):
    result = cli("experiments", "export", "nope")
    assert result.exit_code == 1 and "No experiment with key 'nope'" in result.output


def test_list_with_filters(admin_api, cli):
    for key in ("alpha", "beta"):
        admin_api.post("/api/v1/experiments", json={**CHECKOUT_JSON, "key": key})
    admin_api.post("/api/v1/experiments/beta/start")
    everything = cli("experiments", "list").output.splitlines()
    assert [line.split()[:3] for line in everything] == [
        ["beta", "running", "purchase"],
        ["alpha", "draft", "purchase"],
    ]
    assert [line.split()[0] for line in cli("experiments", "list", "--status", "draft").output.splitlines()] == [
        "alpha"
    ]
    assert cli("experiments", "list", "--stage", "retention").output == ""


def test_demo_definitions_apply_and_round_trip(db, cli, tmp_path):
    result = cli("experiments", "apply", str(REPO / "experiments"))
    assert result.exit_code == 0, result.output
    assert "created checkout-page (draft)" in result.output and "created onboarding-tour (draft)" in result.output
    for key in ("checkout-page", "onboarding-tour"):
        out = tmp_path / f"{key}.toml"
        cli("experiments", "export", key, "-o", str(out))
        assert cli("experiments", "apply", str(out)).output.strip() == f"unchanged {key} (draft)"
