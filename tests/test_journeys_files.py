"""Journey files and the `expplatform journeys` commands: a file with kind = "journey"
is applied by `experiments apply` before the experiments beside it, re-applying it
writes nothing, export -> apply is a no-op, the API and a file store identical
journeys, and the demo files apply cleanly (also through `demo setup`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from expplatform import journeys
from expplatform.cli import main
from expplatform.journey_definitions import journey_toml, parse_journey
from expplatform.models import AuditEntry, Experiment, Journey, JourneyAuditEntry
from expplatform.versioning import read_version

REPO = Path(__file__).resolve().parent.parent

SHOP_TOML = """\
kind = "journey"
key = "shop"
name = "Online shop"
description = "From first visit to recommending us."

[[stages]]
key = "awareness"
goal = "Visited"
touchpoints = ["ads", "search"]

[[stages]]
key = "purchase"
name = "Buying"
goal = "Ordered"
touchpoints = ["cart", "checkout"]

[[stages]]
key = "advocacy"

[[personas]]
key = "loyal"
name = "Loyal customer"

[[questions]]
key = "shop-checkout"
text = "How satisfied are you with checkout?"
stage = "purchase"
scale = { min = 1, max = 5 }

[[questions]]
key = "shop-nps"
text = "How likely are you to recommend us?"
stage = "advocacy"
scale = { min = 0, max = 10 }
"""

SHOP_JSON: dict[str, Any] = {
    "key": "shop",
    "name": "Online shop",
    "description": "From first visit to recommending us.",
    "stages": [
        {"key": "awareness", "goal": "Visited", "touchpoints": ["ads", "search"]},
        {"key": "purchase", "name": "Buying", "goal": "Ordered", "touchpoints": ["cart", "checkout"]},
        {"key": "advocacy"},
    ],
    "personas": [{"key": "loyal", "name": "Loyal customer"}],
    "questions": [
        {
            "key": "shop-checkout",
            "text": "How satisfied are you with checkout?",
            "stage": "purchase",
            "scale": {"min": 1, "max": 5},
        },
        {
            "key": "shop-nps",
            "text": "How likely are you to recommend us?",
            "stage": "advocacy",
            "scale": {"min": 0, "max": 10},
        },
    ],
}

EXPERIMENT_TOML = """\
key = "one-page"
name = "One-page checkout"
journey = "shop"
target_stage = "purchase"
stages = ["purchase", "advocacy"]
metrics = ["shop-checkout", "shop-nps"]

[[variants]]
key = "control"
weight = 0.5

[[variants]]
key = "one-page"
weight = 0.5
"""
# The same experiment in the form from before journeys: the default journey's stages.
LEGACY_TOML = "\n".join(
    line for line in EXPERIMENT_TOML.splitlines() if not line.startswith(("journey", "stages", "metrics"))
)


def canonical(db, key: str) -> dict[str, Any]:
    """Everything stored about a journey's definition but its key (and its question
    keys, unique across journeys), with the rows' positions as stored."""
    with db.sessionmaker() as session:
        journey = journeys.get_journey(session, key)
        stored = journeys.export_journey(journey)
        stored["rows"] = (
            [(s.position, s.key) for s in journey.stages],
            [(p.position, p.key) for p in journey.personas],
            [(q.position, q.stage, q.scale_min, q.scale_max) for q in journey.questions],
        )
    del stored["key"]
    for question in stored["questions"]:
        question["key"] = question["key"].removeprefix(f"{key}-")
    return stored


@pytest.fixture
def cli(runner):
    def _invoke(*args: str):
        return runner.invoke(main, list(args))

    return _invoke


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def counts(db) -> tuple[int, int, int]:
    """(journey audit entries, experiment audit entries, definitions version)."""
    with db.sessionmaker() as session:
        return (
            session.scalar(select(func.count()).select_from(JourneyAuditEntry)) or 0,
            session.scalar(select(func.count()).select_from(AuditEntry)) or 0,
            read_version(session),
        )


def test_apply_creates_a_journey_then_writes_nothing_the_second_time(db, cli, tmp_path):
    path = write(tmp_path, "shop.toml", SHOP_TOML)
    first = cli("experiments", "apply", str(path))
    assert first.exit_code == 0, first.output
    assert first.output.strip() == "created journey shop"
    before = counts(db)
    with db.sessionmaker() as session:
        updated_at = journeys.get_journey(session, "shop").updated_at
    again = cli("experiments", "apply", str(path))
    assert again.exit_code == 0 and again.output.strip() == "unchanged journey shop"
    assert counts(db) == before  # no audit entry, not even a version bump
    with db.sessionmaker() as session:
        assert journeys.get_journey(session, "shop").updated_at == updated_at


def test_journeys_are_applied_before_the_experiments_whatever_the_file_order(db, cli, tmp_path):
    folder = tmp_path / "defs"
    folder.mkdir()
    write(folder, "a-experiment.toml", EXPERIMENT_TOML)
    write(folder, "z-shop.toml", SHOP_TOML)
    result = cli("experiments", "apply", str(folder))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["created journey shop", "created one-page (draft)"]
    before = counts(db)
    again = cli("experiments", "apply", str(folder))
    assert again.output.splitlines() == ["unchanged journey shop", "unchanged one-page (draft)"]
    assert counts(db) == before
    with db.sessionmaker() as session:
        stored = session.scalars(select(Experiment).where(Experiment.key == "one-page")).one()
        assert stored.journey.key == "shop" and stored.metrics == {"purchase": "shop-checkout", "advocacy": "shop-nps"}


def test_apply_updates_a_journey_and_prints_what_changed(db, cli, tmp_path):
    cli("experiments", "apply", str(write(tmp_path, "shop.toml", SHOP_TOML)))
    changed = SHOP_TOML.replace('name = "Online shop"', 'name = "Web shop"').replace('"ads", "search"', '"ads"')
    result = cli("experiments", "apply", str(write(tmp_path, "shop.toml", changed)))
    assert result.exit_code == 0 and result.output.strip() == "updated journey shop: name, stages"
    with db.sessionmaker() as session:
        journey = journeys.get_journey(session, "shop")
        entry = journeys.journey_audit_log(session, journey)[0]
    assert journey.name == "Web shop" and journey.stages[0].touchpoints == ["ads"]
    assert entry.actor == "cli" and entry.action == "updated"
    assert entry.details["changes"]["name"] == {"from": "Online shop", "to": "Web shop"}


def test_a_file_that_breaks_a_freeze_rule_applies_nothing(db, cli, admin_api, tmp_path):
    folder = tmp_path / "defs"
    folder.mkdir()
    write(folder, "shop.toml", SHOP_TOML)
    write(folder, "one-page.toml", EXPERIMENT_TOML)
    assert cli("experiments", "apply", str(folder)).exit_code == 0
    assert admin_api.post("/api/v1/experiments/one-page/start").status_code == 200
    # advocacy removed (one-page measures it), and a new experiment beside it.
    shortened = {**SHOP_JSON, "stages": SHOP_JSON["stages"][:2], "questions": SHOP_JSON["questions"][:1]}
    write(folder, "shop.toml", journey_toml(parse_journey(shortened)))
    write(folder, "other.toml", EXPERIMENT_TOML.replace('key = "one-page"\nname', 'key = "other"\nname'))
    before = counts(db)
    result = cli("experiments", "apply", str(folder))
    assert result.exit_code == 1
    assert "'advocacy' is measured by running experiment 'one-page'" in result.output
    assert "nothing applied" in result.output
    assert counts(db) == before
    with db.sessionmaker() as session:
        assert [s.key for s in journeys.get_journey(session, "shop").stages][-1] == "advocacy"
        assert session.scalar(select(Experiment).where(Experiment.key == "other")) is None


def test_invalid_journey_files_are_reported_and_nothing_is_applied(db, cli, tmp_path):
    good = write(tmp_path, "good.toml", LEGACY_TOML)
    bad = write(tmp_path, "bad.toml", SHOP_TOML.replace("max = 5", "max = 50"))
    result = cli("experiments", "apply", str(good), str(bad))
    assert result.exit_code == 1
    assert f"{bad}: questions.0.scale.max: must be 1 to 10 above min" in result.output
    assert "nothing applied" in result.output
    assert counts(db)[:2] == (0, 0)


def test_export_then_apply_round_trips(db, admin_api, cli, tmp_path):
    assert admin_api.post("/api/v1/journeys", json=SHOP_JSON).status_code == 201
    exported = cli("journeys", "export", "shop")
    assert exported.exit_code == 0
    assert exported.output == cli("journeys", "export", "shop").output  # deterministic
    assert exported.output.startswith('# expplatform journey definition\nkind = "journey"\n')
    out = tmp_path / "shop.toml"
    assert cli("journeys", "export", "shop", "-o", str(out)).exit_code == 0
    assert out.read_text() == exported.output
    before = counts(db)
    again = cli("experiments", "apply", str(out))
    assert again.exit_code == 0 and again.output.strip() == "unchanged journey shop"
    assert counts(db) == before
    copy = out.read_text().replace('key = "shop"', 'key = "copy"').replace('key = "shop-', 'key = "copy-')
    assert cli("experiments", "apply", str(write(tmp_path, "copy.toml", copy))).exit_code == 0
    assert canonical(db, "copy") == canonical(db, "shop")


def test_api_and_toml_file_store_identical_journeys(db, admin_api, cli, tmp_path):
    assert admin_api.post("/api/v1/journeys", json=SHOP_JSON).status_code == 201
    copy = SHOP_TOML.replace('key = "shop"', 'key = "copy"').replace('key = "shop-', 'key = "copy-')
    result = cli("experiments", "apply", str(write(tmp_path, "copy.toml", copy)))
    assert result.exit_code == 0, result.output
    assert canonical(db, "copy") == canonical(db, "shop")
    # And the file as the parser reads it is the stored journey.
    with db.sessionmaker() as session:
        stored = journeys.journey_definition_of(journeys.get_journey(session, "shop"))
    assert parse_journey(SHOP_JSON) == stored
    assert journey_toml(stored) == cli("journeys", "export", "shop").output


def test_export_of_an_unknown_journey_fails(cli):
    result = cli("journeys", "export", "nope")
    assert result.exit_code == 1 and "No journey with key 'nope'" in result.output


def test_list_shows_every_journey(cli, tmp_path):
    cli("experiments", "apply", str(write(tmp_path, "shop.toml", SHOP_TOML)))
    legacy = cli("experiments", "apply", str(write(tmp_path, "e.toml", LEGACY_TOML)))
    assert legacy.exit_code == 0, legacy.output
    lines = cli("journeys", "list").output.splitlines()
    assert [line.split()[0] for line in lines] == ["default", "shop"]  # default: the legacy experiment's
    assert "awareness > purchase > advocacy" in lines[1] and lines[1].endswith("Online shop")


def test_the_demo_files_apply_cleanly_and_round_trip(db, cli, tmp_path):
    result = cli("experiments", "apply", str(REPO / "experiments"))
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if not line.startswith("  note:")] == [
        "created journey ecommerce",
        "created checkout-page (draft)",
        "created onboarding-email (draft)",
        "created onboarding-tour (draft)",
        "created review-request-v2 (draft)",
        "created review-request (draft)",
        "created social-proof (draft)",
    ]
    before = counts(db)
    again = cli("experiments", "apply", str(REPO / "experiments"))
    assert again.output.splitlines() == [
        "unchanged journey ecommerce",
        "unchanged checkout-page (draft)",
        "unchanged onboarding-email (draft)",
        "unchanged onboarding-tour (draft)",
        "unchanged review-request-v2 (draft)",
        "unchanged review-request (draft)",
        "unchanged social-proof (draft)",
    ]
    assert counts(db) == before
    out = tmp_path / "ecommerce.toml"
    cli("journeys", "export", "ecommerce", "-o", str(out))
    assert cli("experiments", "apply", str(out)).output.strip() == "unchanged journey ecommerce"
    with db.sessionmaker() as session:
        assert [j.key for j in session.scalars(select(Journey))] == ["ecommerce"]  # no implicit journey made


def test_demo_setup_creates_the_journey_before_its_experiments_once(db, cli):
    first = cli("demo", "setup")
    assert first.exit_code == 0, first.output
    assert "demo journeys created: ecommerce" in first.output
    assert (
        "demo experiments created as drafts: checkout-page, onboarding-email, onboarding-tour, review-request, "
        "social-proof, review-request-v2" in first.output
    )
    with db.sessionmaker() as session:
        shop = journeys.get_journey(session, "ecommerce")
        assert [q.key for q in shop.questions] == ["consideration-effort", "checkout-csat", "delivery-csat", "nps"]
        stored = {e.key: e for e in session.scalars(select(Experiment))}
        assert {e.journey.key for e in stored.values()} == {"ecommerce"}
        assert stored["checkout-page"].metrics == {
            "purchase": "checkout-csat",
            "retention": "delivery-csat",
            "advocacy": "nps",
        }
        entry = journeys.journey_audit_log(session, shop)[0]
        assert (entry.actor, entry.action) == ("demo", "created")
    second = cli("demo", "setup")
    assert second.exit_code == 0 and "created" not in second.output
    assert (
        cli("experiments", "apply", str(REPO / "experiments")).output.splitlines()[0] == "unchanged journey ecommerce"
    )
