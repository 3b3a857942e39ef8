"""``expplatform simulate --backfill`` and ``expplatform demo seed``: the simulator's
customers written into the database on their simulated days, through the CLI entry
points ``make run`` uses, on SQLite and (with EXPPLATFORM_TEST_POSTGRES_URL) PostgreSQL.

The reports must recover the known effects from backfilled data as from data sent
through HTTP (``test_simulate``), and a second seeding must add nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import func, select

from expplatform.cli import main
from expplatform.ingest import rebuild_everything, stored_journey_counters
from expplatform.models import (
    Event,
    Experiment,
    Exposure,
    JourneyCount,
    JourneyOutcome,
    Outcome,
    OutcomeCount,
    UnmatchedEventCount,
)

from .test_simulate import assert_covers, comparison

REPO = Path(__file__).resolve().parent.parent
DEMO_KEYS = {"checkout-page", "social-proof", "onboarding-email", "review-request", "review-request-v2"}


@pytest.fixture
def cli(runner):
    def invoke(*args: str) -> Result:
        result = runner.invoke(main, list(args))
        assert result.exit_code == 0, result.output
        return result

    return invoke


def stored(db) -> dict[str, int]:
    """Rows of every table a backfill writes or rebuilds."""
    models = (Exposure, Event, Outcome, OutcomeCount, JourneyOutcome, JourneyCount, UnmatchedEventCount)
    with db.sessionmaker() as session:
        counts = {m.__tablename__: session.scalar(select(func.count()).select_from(m)) or 0 for m in models}
        counts["unmatched events"] = session.scalar(select(func.sum(UnmatchedEventCount.events))) or 0
        return counts


def backfill(cli, tmp_path, scenario: str, customers: int) -> tuple[dict, Result]:
    cli("experiments", "apply", str(REPO / "experiments" / "ecommerce.journey.toml"))
    truth_path = tmp_path / f"{scenario}-truth.json"
    result = cli(
        "simulate", "--backfill", "--create", "--scenario", scenario, "--customers", str(customers),
        "--truth-out", str(truth_path),
    )  # fmt: skip
    return json.loads(truth_path.read_text()), result


def report_of(admin_api, key: str) -> dict:
    reply = admin_api.get(f"/api/v1/experiments/{key}/report")
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def test_a_backfilled_winner_is_shipped_and_its_lift_recovered(cli, admin_api, db, tmp_path):
    truth, result = backfill(cli, tmp_path, "winner", 4000)
    key = "sim-one-page-checkout"
    report = report_of(admin_api, key)
    run = truth["run"]
    assert report["exposed"] == run["exposures"][key]
    assert truth["timestamps"].startswith("simulated")
    enrolled = truth["experiments"][key]["enrolled"]
    assert enrolled["lifts"]["one-page"]["purchase"]["conversion"] > 0.3
    assert_covers(report, enrolled, "purchase", "conversion", "one-page")
    recommendation = report["result"]["recommendation"]
    assert (recommendation["action"], recommendation["variant"]) == ("ship", "one-page")
    # The faults are data quality, never lift: early events and unknown customers are unmatched.
    quality = report["data_quality"]["stages"]["awareness"]
    assert quality["unmatched"] >= run["faults"]["before_assignment"] + run["faults"]["unknown_customers"]
    assert run["duplicates"] == run["faults"]["duplicates_sent"] > 0  # sent twice, stored once
    with db.sessionmaker() as session:
        experiment = session.scalar(select(Experiment).where(Experiment.key == key))
        assert experiment.simulated and experiment.status == "running"
        first, last = session.execute(select(func.min(Exposure.exposed_at), func.max(Exposure.exposed_at))).one()
        newest_event = session.scalar(select(func.max(Event.received_at)))
    # Four weeks up to yesterday; the experiment started with the first of them.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert experiment.started_at == today - timedelta(days=28) <= first and last < today
    assert newest_event <= datetime.now(UTC)
    assert "outcomes and counters rebuilt" in result.output


def test_a_backfilled_guardrail_cost_vetoes_the_winner(cli, admin_api, tmp_path):
    truth, _result = backfill(cli, tmp_path, "guardrail", 4000)
    key = "sim-pay-later"
    report = report_of(admin_api, key)
    enrolled = truth["experiments"][key]["enrolled"]
    assert report["result"]["recommendation"]["action"] == "keep_control"
    assert comparison(report, "purchase", "conversion", "pay-later")["decision"] == "ship"
    assert_covers(report, enrolled, "purchase", "conversion", "pay-later")
    assert_covers(report, enrolled, "retention", "mean_rating", "pay-later", "delivery-csat")


def test_the_counters_a_backfill_leaves_are_those_a_rebuild_makes(cli, db, tmp_path):
    backfill(cli, tmp_path, "null", 1500)
    before = stored(db)
    with db.sessionmaker() as session:
        journeys = stored_journey_counters(session)
    with db.write() as session:
        rebuild_everything(session)
    assert stored(db) == before
    with db.sessionmaker() as session:
        assert stored_journey_counters(session) == journeys


def test_a_backfill_refuses_what_it_cannot_do(runner, cli, tmp_path):
    refused = runner.invoke(main, ["simulate", "--backfill", "--scenario", "null", "--url", "http://127.0.0.1:1"])
    assert refused.exit_code == 2 and "--url: for runs through HTTP, not with --backfill" in refused.output
    cli("experiments", "apply", str(REPO / "experiments" / "ecommerce.journey.toml"))
    missing = runner.invoke(main, ["simulate", "--backfill", "--scenario", "null", "--customers", "10"])
    assert missing.exit_code == 1 and "sim-button-colour does not exist" in missing.output


def test_demo_seed_gives_the_demo_its_history_once(cli, db, tmp_path):
    setup = cli("demo", "setup")
    assert "review-request-v2" in setup.output.splitlines()[-1]
    first = cli("demo", "seed", "--customers", "3000")
    assert "stopped experiment review-request" in first.output
    truth = json.loads((tmp_path / "instance" / "demo-truth.json").read_text())
    assert set(truth["experiments"]) == DEMO_KEYS
    seeded = stored(db)
    assert seeded["exposures"] > 3000 and seeded["events"] > 3000 and seeded["outcomes"] > 0
    with db.sessionmaker() as session:
        by_key = {e.key: e for e in session.scalars(select(Experiment))}
        exposures, last_exposure = (
            dict(
                session.execute(
                    select(Experiment.key, moment(Exposure.exposed_at))
                    .join(Exposure, Exposure.experiment_id == Experiment.id)
                    .group_by(Experiment.key)
                ).all()
            )
            for moment in (func.min, func.max)
        )
    assert {k for k, e in by_key.items() if e.simulated} == DEMO_KEYS
    assert by_key["onboarding-tour"].status == "draft" and not by_key["onboarding-tour"].simulated
    finished, iteration = by_key["review-request"], by_key["review-request-v2"]
    assert (finished.status, iteration.status, iteration.cloned_from) == ("stopped", "running", "review-request")
    # The finished one ran the first two weeks, its iteration the last two.
    assert finished.stopped_at == iteration.started_at == finished.started_at + timedelta(days=14)
    assert last_exposure["review-request"] < finished.stopped_at <= exposures["review-request-v2"]
    for key in DEMO_KEYS:
        assert by_key[key].started_at <= exposures[key]

    again = cli("demo", "seed", "--customers", "3000")
    assert "there already" in again.output
    forced = cli("demo", "seed", "--customers", "3000", "--force")
    assert "): 0 of " in forced.output and " exposures and 0 of " in forced.output and stored(db) == seeded
    assert json.loads((tmp_path / "instance" / "demo-truth.json").read_text())["experiments"] == truth["experiments"]
