"""``expplatform simulate``: scenarios, synthetic customers, the truth they imply, and
runs against a stand-in service (fast) and the real app on a live server (slow: the
report recovers the known effects and makes the expected call).

The live runs use the form the service on this branch accepts: ratings naming their
question (``"type": "rating", "metric": ...``) once ingest knows ``metric``, else the
legacy form (``--legacy``: experiments with stages + satisfaction_scale, metric-less
``"type": "satisfaction"`` ratings, only the questions on the scenario's legacy scale).
"""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from datetime import UTC, date, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from numpy.testing import assert_allclose
from sqlalchemy import func, select

from expplatform import simulation
from expplatform.bucketing import Split, place
from expplatform.cli import main
from expplatform.client import Client, ClientError
from expplatform.ingest import validation
from expplatform.models import Event, Exposure
from expplatform.simulation.customers import Behaviour, Calendar, Population, Truth, effects_of
from expplatform.simulation.scenario import mean_of, parse, shift_for_mean, shifted

from .conftest import REPORT_WAIT_SECONDS, make_test_app
from .server_support import http

BUNDLED = ["broken-split", "demo", "guardrail", "null", "satisfaction-only", "winner"]
LEGACY = "metric" not in validation.FIELDS  # ingest does not know ratings that name their question yet
LAST_DAY = date(2026, 3, 1)


def tiny(**changes: Any) -> dict[str, Any]:
    """A two-stage scenario small enough to check by hand."""
    data: dict[str, Any] = {
        "name": "tiny",
        "journey": "tiny",
        "stages": ["visit", "buy"],
        "personas": {
            "a": {"share": 3, "conversion": {"visit": 0.5, "buy": 0.4}},
            "b": {"share": 1, "conversion": {"visit": 0.8, "buy": 0.5}},
        },
        "questions": {"buy-csat": {"stage": "buy", "scale": [1, 5], "ratings": {"default": [1, 1, 1, 1, 1]}}},
        "experiments": {
            "tiny-x": {
                "target_stage": "buy",
                "variants": [{"key": "c", "control": True}, {"key": "t"}],
                "effects": {"t": {"conversion": {"buy": 1.5}, "rating": {"buy-csat": 0.5}}},
            }
        },
    }
    data.update(changes)
    return data


# -- scenarios ---------------------------------------------------------------------------------


def test_the_bundled_scenarios_load_and_each_drives_its_own_experiment():
    assert simulation.available() == BUNDLED
    keys: list[str] = []
    for name in BUNDLED:
        scenario = simulation.load(name)
        assert scenario.name == name and scenario.journey == "ecommerce"
        assert scenario.stages == ("awareness", "consideration", "purchase", "retention", "advocacy")
        assert set(scenario.personas) == {"bargain-hunter", "first-timer", "returning", "loyal"}
        assert {q: (x.stage, x.scale) for q, x in scenario.questions.items()} == {
            "consideration-effort": ("consideration", (1, 7)),
            "checkout-csat": ("purchase", (1, 5)),
            "delivery-csat": ("retention", (1, 5)),
            "nps": ("advocacy", (0, 10)),
        }
        keys += scenario.experiments
    assert len(set(keys)) == len(keys)  # no experiment driven by two scenarios
    assert simulation.load("broken-split").faults.sample_ratio is not None
    demo = simulation.load("demo")
    assert set(demo.experiments) == {
        "checkout-page", "social-proof", "onboarding-email", "review-request", "review-request-v2"
    }  # fmt: skip
    # Read from the demo's definition files: what the files say, the scenario's days and clones.
    assert demo.experiments["social-proof"].variants == ("no-badges", "bestseller-badge", "live-viewers")
    assert demo.experiments["checkout-page"].definition["traffic"] == 0.5
    assert (demo.experiments["review-request"].days, demo.experiments["review-request-v2"].days) == ((1, 14), (15, 28))
    assert demo.experiments["review-request-v2"].cloned_from == "review-request"


def test_a_scenario_file_is_found_by_path_and_extends_its_base(tmp_path):
    (tmp_path / "base.toml").write_text(
        'stages = ["visit", "buy"]\n'
        "[personas.a]\nshare = 1\nconversion = { visit = 0.5, buy = 0.5 }\n"
        "[faults]\nlate_rate = 0.1\n"
    )
    (tmp_path / "mine.toml").write_text(
        'extends = "base"\n'
        "[faults]\nduplicate_rate = 0.2\n"
        '[experiments.x]\ntarget_stage = "buy"\nvariants = [{ key = "c" }, { key = "t" }]\n'
    )
    scenario = simulation.load(str(tmp_path / "mine.toml"))
    assert scenario.name == "mine" and scenario.stages == ("visit", "buy")
    assert (scenario.faults.late_rate, scenario.faults.duplicate_rate) == (0.1, 0.2)
    assert scenario.experiments["x"].control == "c"
    with pytest.raises(simulation.ScenarioError, match="no such scenario"):
        simulation.load("no-such-scenario")


def test_a_faulty_scenario_names_every_problem():
    data = tiny(
        surprise=1,
        platforms={"web": -1},
        faults={"late_rate": 2, "sample_ratio": {"experiment": "tiny-x", "variant": "nope", "skip_share": 0.1}},
    )
    data["personas"]["a"]["conversion"] = {"visit": 0.5}
    data["questions"]["buy-csat"]["ratings"] = {"a": [1, 2]}
    data["experiments"]["tiny-x"]["effects"] = {"t": {"conversion": {"buy": 3.0}, "rating": {"buy-csat": 9}}}
    with pytest.raises(simulation.ScenarioError) as caught:
        parse(data)
    problems = "\n".join(caught.value.problems)
    for where in (
        "surprise: unknown field",
        "platforms.web: must be a positive number",
        "faults.late_rate: must be a number from 0 to 1",
        "faults.sample_ratio.variant",
        "personas.a.conversion.buy: missing",
        "questions.buy-csat.ratings.a: must be 5 weights",
    ):
        assert where in problems
    data = tiny()
    data["experiments"]["tiny-x"]["effects"] = {"t": {"conversion": {"buy": 2.5}, "rating": {"buy-csat": 9}}}
    with pytest.raises(simulation.ScenarioError) as caught:
        parse(data)
    problems = "\n".join(caught.value.problems)
    assert "experiments.tiny-x.effects.t.conversion.buy: makes b's conversion probability 1.25 > 1" in problems
    assert "experiments.tiny-x.effects.t.rating.buy-csat: for a: a mean moved by +9 points" in problems


@pytest.mark.parametrize(
    ("probabilities", "low", "points"),
    [
        ((0.05, 0.1, 0.2, 0.35, 0.3), 1, 0.4),
        ((0.05, 0.1, 0.2, 0.35, 0.3), 1, -0.8),
        ((0.02, 0.01, 0.02, 0.03, 0.04, 0.08, 0.1, 0.15, 0.2, 0.17, 0.18), 0, 1.5),
        ((0.0, 0.2, 0.5, 0.3, 0.0), 1, -0.3),
    ],
)
def test_a_rating_shift_moves_the_mean_by_the_points_asked(probabilities, low, points):
    moved = shifted(probabilities, shift_for_mean(probabilities, low, points))
    assert_allclose(mean_of(moved, low), mean_of(probabilities, low) + points, atol=1e-9)
    assert_allclose(sum(moved), 1.0)
    # Impossible ratings stay impossible (the ends of the scale here).
    assert [p == 0 for p in moved] == [p == 0 for p in probabilities]


# -- customers and truth -----------------------------------------------------------------------


def test_customers_are_fixed_by_the_seed_whatever_their_number():
    scenario = simulation.load("winner")
    calendar = Calendar(LAST_DAY, 28, scenario.weekday_weights)
    first = Population(scenario, 7, calendar)
    again = Population(scenario, 7, Calendar(LAST_DAY, 28, scenario.weekday_weights))
    other = Population(scenario, 8, calendar)
    assert [first.customer(i) for i in range(50)] == [again.customer(i) for i in range(50)]
    assert first.customer(3).id == "sim-winner-s7-0000003" != other.customer(3).id
    assert [c.draws for c in (first.customer(i) for i in range(20))] != [
        c.draws for c in (other.customer(i) for i in range(20))
    ]
    ordered = [first.customer(i) for i in first.in_arrival_order(2000)]
    assert [c.arrival for c in ordered] == sorted(c.arrival for c in ordered)
    assert sorted(c.index for c in ordered) == list(range(2000))
    # Weekends are lighter: Saturday and Sunday have fewer arrivals per day than weekdays.
    per_weekday = Counter(c.arrival.weekday() for c in ordered)
    assert max(per_weekday[5], per_weekday[6]) < min(per_weekday[d] for d in range(5))


def test_a_variant_changes_what_a_customer_does_only_where_its_effect_says():
    scenario = simulation.load("winner")
    population = Population(scenario, 1, Calendar(LAST_DAY, 28, scenario.weekday_weights))
    behaviour = Behaviour(scenario)
    key = "sim-one-page-checkout"
    for i in range(3000):
        customer = population.customer(i)
        control = behaviour.outcome(customer, effects_of(scenario, {key: "three-steps"}))
        treated = behaviour.outcome(customer, effects_of(scenario, {key: "one-page"}))
        # Stages before the one affected are the same; a lift only adds conversions.
        assert [s for s in control.conversions if s in ("awareness", "consideration")] == [
            s for s in treated.conversions if s in ("awareness", "consideration")
        ]
        assert set(control.conversions) <= set(treated.conversions)


def test_the_truth_is_the_expected_outcome_and_the_draws_agree_with_it():
    scenario = parse(tiny())
    truth = Truth(scenario).population()["tiny-x"]
    c, t = truth["variants"]["c"]["stages"], truth["variants"]["t"]["stages"]
    assert_allclose(c["buy"]["conversion"], 0.75 * 0.5 * 0.4 + 0.25 * 0.8 * 0.5)
    assert_allclose(t["buy"]["conversion"], 0.75 * 0.5 * 0.6 + 0.25 * 0.8 * 0.75)
    assert_allclose(truth["lifts"]["t"]["buy"]["conversion"], 0.375 / 0.25 - 1)
    assert_allclose(c["buy"]["questions"]["buy-csat"]["mean_rating"], 3.0)
    assert_allclose(t["buy"]["questions"]["buy-csat"]["mean_rating"], 3.5)
    assert_allclose(truth["lifts"]["t"]["buy"]["questions"]["buy-csat"]["mean_rating_difference"], 0.5)
    # Drawn customers convert and rate as expected (20,000 customers: within 4 standard errors).
    population = Population(scenario, 3, Calendar(LAST_DAY, 7, scenario.weekday_weights))
    behaviour = Behaviour(scenario)
    n, bought, ratings = 20_000, 0, []
    for i in range(n):
        outcome = behaviour.outcome(population.customer(i), effects_of(scenario, {"tiny-x": "t"}))
        bought += "buy" in outcome.conversions
        ratings += [value for _, value in outcome.ratings]
    p = t["buy"]["conversion"]
    assert abs(bought / n - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert len(ratings) == bought
    assert abs(sum(ratings) / len(ratings) - 3.5) < 4 * (2.0 / len(ratings)) ** 0.5


# -- the client ----------------------------------------------------------------------------------


def recording_client(monkeypatch, answer=None) -> tuple[Client, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    def request(self, method, path, body=None):
        sent.extend(body["events"])
        return answer or {"accepted": len(body["events"]) - 1, "duplicates": 1, "rejected": []}

    monkeypatch.setattr(Client, "_request", request)
    return Client("http://127.0.0.1:1", "xp_test", flush_interval=60), sent


def test_the_client_sends_a_rating_naming_its_question_and_stays_compatible(monkeypatch):
    client, sent = recording_client(monkeypatch)
    moment = datetime(2026, 3, 1, 12, tzinfo=UTC)
    client.rate("c1", "checkout-csat", 4, event_id="e1", timestamp=moment)
    client.track("c1", type="rating", metric="nps", value=9, event_id="e2", timestamp=moment)
    client.track("c1", "purchase", "conversion", event_id="e3", timestamp=moment)  # as before
    client.track("c1", "purchase", "satisfaction", value=5, event_id="e4", timestamp=moment)  # as before
    with pytest.raises(ValueError, match="needs its stage"):
        client.track("c1", type="conversion", metric="nps")
    with pytest.raises(ValueError, match="stage, or a rating its metric"):
        client.track("c1", type="rating", value=3)
    assert client.pending == 4
    client.close()
    common = {"customer_id": "c1", "timestamp": moment.isoformat()}
    assert sent == [
        {"event_id": "e1", **common, "type": "rating", "metric": "checkout-csat", "value": 4},
        {"event_id": "e2", **common, "type": "rating", "metric": "nps", "value": 9},
        {"event_id": "e3", **common, "stage": "purchase", "type": "conversion"},
        {"event_id": "e4", **common, "stage": "purchase", "type": "satisfaction", "value": 5},
    ]
    assert (client.accepted, client.duplicates, client.rejected, client.pending) == (3, 1, 0, 0)


def test_the_client_counts_rejections_by_code(monkeypatch):
    answer = {"accepted": 1, "duplicates": 0, "rejected": [{"index": 1, "error": "unknown_metric", "message": "x"}]}
    client, _sent = recording_client(monkeypatch, answer)
    failures = []
    client.on_error = failures.append
    client.track("c1", "purchase")
    client.rate("c1", "nope", 3)
    client.close()
    assert (client.accepted, client.rejected, dict(client.rejections)) == (1, 1, {"unknown_metric": 1})
    assert failures[0].events[0]["metric"] == "nope"


# -- runs against a stand-in service ------------------------------------------------------------


class StandIn:
    """Answers the client as the service would, enough for the simulator: variants by
    the published bucketing, each event_id stored once, a repeated id within one batch
    rejected."""

    def __init__(self, scenario: simulation.Scenario) -> None:
        self.splits = {k: (e.variants, Split.of(k, e.weights)) for k, e in scenario.experiments.items()}
        self.assigned: dict[str, datetime] = {}
        self.assign_calls: Counter[str] = Counter()  # experiment -> calls naming it
        self.exposures: dict[tuple[str, str], str] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def request(self, method: str, path: str, body: Any) -> Any:
        with self.lock:
            if path == "/assign":
                customer = body["customer_id"]
                self.assigned.setdefault(customer, datetime.now(UTC))
                answers = []
                for key in body["experiments"]:
                    self.assign_calls[key] += 1
                    variants, split = self.splits[key]
                    variant = self.exposures.setdefault((customer, key), variants[place(split, customer)])
                    answers.append({"experiment": key, "variant": variant, "stage": "x", "enrolled": True})
                return {"customer_id": customer, "assignments": answers}
            assert path == "/events"
            batch = body["events"]
            ids = [e["event_id"] for e in batch]
            self.batches.append(ids)
            accepted = duplicates = 0
            rejected = []
            for index, event in enumerate(batch):
                if ids.index(event["event_id"]) != index:
                    rejected.append({"index": index, "error": "duplicate_in_batch", "message": ""})
                elif event["event_id"] in self.events:
                    duplicates += 1
                else:
                    self.events[event["event_id"]] = event
                    accepted += 1
            return {"accepted": accepted, "duplicates": duplicates, "rejected": rejected}


def serve(monkeypatch, request) -> None:
    """Answer every client call with ``request(client, method, path, body)``, and the
    liveness probe with yes."""
    monkeypatch.setattr(Client, "_request", request)
    monkeypatch.setattr(simulation.runner, "check_reachable", lambda url: None)


def stand_in(monkeypatch, scenario: simulation.Scenario) -> StandIn:
    service = StandIn(scenario)
    serve(monkeypatch, lambda self, method, path, body=None: service.request(method, path, body))
    return service


def run_against_stand_in(monkeypatch, scenario, **options: Any) -> tuple[StandIn, simulation.Result]:
    service = stand_in(monkeypatch, scenario)
    settings = {"url": "http://127.0.0.1:1", "key": "xp_test", "customers": 400, "concurrency": 4, **options}
    return service, simulation.simulate(scenario, simulation.Options(last_day=LAST_DAY, **settings), stream=None)


def test_a_run_sends_each_customers_journey_with_the_faults_asked_for(monkeypatch):
    scenario = parse(
        {
            **simulation.scenario.read_data(simulation.scenario.find("winner")),
            "faults": {
                "duplicate_rate": 0.05,
                "late_rate": 0.05,
                "before_assignment_rate": 0.05,
                "unknown_customer_rate": 0.05,
            },
        },
        default_name="winner",
    )
    service, result = run_against_stand_in(monkeypatch, scenario, customers=600, batch_size=50)
    summary = result.summary
    tally = summary.tally
    assert tally.customers == 600 and sum(tally.exposures.values()) == 600
    assert summary.rejected == 0 and summary.failed == 0 and summary.dropped == 0
    assert summary.accepted == len(service.events)
    assert summary.accepted + summary.duplicates == tally.events
    assert summary.duplicates == tally.duplicates_sent > 0
    assert tally.late_sent > 0 and tally.before_assignment > 0 and tally.unknown_customers > 0
    events = list(service.events.values())
    ratings = [e for e in events if e["type"] != "conversion"]
    # Ratings name their question; the stage follows from it.
    assert ratings and all(
        e["type"] == "rating" and "stage" not in e and e["metric"] in scenario.questions for e in ratings
    )
    for event in ratings:
        low, high = scenario.questions[event["metric"]].scale
        assert low <= event["value"] <= high
    # Events before assignment are dated before the assign call, the others after it;
    # customers never assigned send events too.
    for event in events:
        when = datetime.fromisoformat(event["timestamp"])
        if event["event_id"].endswith(":early"):
            assert when < service.assigned[event["customer_id"]]
        elif "-ghost-" in event["customer_id"]:
            assert event["customer_id"] not in service.assigned
        else:
            assert when >= service.assigned[event["customer_id"]]
    assert sum(e["event_id"].endswith(":early") for e in events) == tally.before_assignment
    # A customer converts at a stage only after converting at the one before.
    stages = scenario.stages
    converted: dict[str, set[str]] = {}
    for event in events:
        if event["type"] == "conversion" and "-ghost-" not in event["customer_id"] and "early" not in event["event_id"]:
            converted.setdefault(event["customer_id"], set()).add(event["stage"])
    for reached in converted.values():
        assert reached == set(stages[: len(reached)])
    # The truth file holds the true lifts of the customers the experiment enrolled.
    document = simulation.truth_document(scenario, simulation.Options(), result)
    exposed = document["experiments"]["sim-one-page-checkout"]["enrolled"]["variants"]
    assert {v: round(x["exposed"]) for v, x in exposed.items()} == {v: n for (_k, v), n in tally.exposures.items()}
    assert sum(document["calendar"].values()) == 600 and len(document["calendar"]) == 28
    json.dumps(document)


def test_a_second_run_with_the_same_seed_sends_the_same_events(monkeypatch):
    scenario = simulation.load("guardrail")
    service, first = run_against_stand_in(monkeypatch, scenario, seed=5, customers=300)
    stored = dict(service.events)
    second = simulation.simulate(
        scenario,
        simulation.Options(url="http://127.0.0.1:1", key="k", seed=5, customers=300, concurrency=3, last_day=LAST_DAY),
        stream=None,
    )
    assert second.summary.accepted == 0
    assert second.summary.duplicates == second.summary.tally.events == first.summary.tally.events
    assert service.events == stored
    # Another seed is other customers and other events.
    _other, third = run_against_stand_in(monkeypatch, scenario, seed=6, customers=300)
    assert third.summary.accepted == third.summary.tally.events - third.summary.tally.duplicates_sent


def test_through_http_an_experiment_whose_days_ended_is_not_asked_for(monkeypatch):
    """The demo scenario's review-request ran days 1-14 (stopped since, in the demo):
    a run through HTTP, where every day is today, asks only for the others."""
    service, result = run_against_stand_in(monkeypatch, simulation.load("demo"), customers=100)
    assert "review-request" not in service.assign_calls
    assert service.assign_calls["review-request-v2"] == service.assign_calls["social-proof"] == 100
    assert "review-request" not in result.summary.to_dict()["exposures"]


def test_legacy_runs_send_metricless_satisfaction_on_the_legacy_scale(monkeypatch):
    scenario = simulation.load("winner")
    service, result = run_against_stand_in(monkeypatch, scenario, legacy=True)
    ratings = [e for e in service.events.values() if e["type"] != "conversion"]
    assert ratings and all(e["type"] == "satisfaction" and "metric" not in e for e in ratings)
    assert {e["stage"] for e in ratings} <= {"purchase", "retention"}  # checkout-csat, delivery-csat: 1-5
    assert result.summary.tally.ratings_not_sent > 0  # consideration-effort (1-7) and nps (0-10)
    definition = simulation.service.definition_for(scenario, scenario.experiments["sim-one-page-checkout"], legacy=True)
    assert definition["stages"] == list(scenario.stages) and definition["satisfaction_scale"] == {"min": 1, "max": 5}
    assert "journey" not in definition
    assert (
        simulation.service.definition_for(scenario, scenario.experiments["sim-one-page-checkout"], legacy=False)[
            "journey"
        ]
        == "ecommerce"
    )


def test_the_sample_ratio_fault_leaves_one_variant_short_of_exposures(monkeypatch):
    scenario = simulation.load("broken-split")
    _service, result = run_against_stand_in(monkeypatch, scenario, customers=2000)
    exposures = result.summary.tally.exposures
    control, banner = exposures[("sim-shipping-banner", "no-banner")], exposures[("sim-shipping-banner", "banner")]
    skipped = result.summary.tally.sample_ratio_skipped
    assert skipped == 2000 - control - banner
    # About 20% of the control's customers never call assign.
    assert 0.15 < skipped / (control + skipped) < 0.25
    assert 0.9 < (control + skipped) / banner < 1.1


def test_progress_is_a_line_per_interval_off_a_terminal_and_a_summary_at_the_end(monkeypatch):
    scenario = simulation.load("null")
    stand_in(monkeypatch, scenario)
    monkeypatch.setattr(simulation.runner._Progress, "__init__", _fast_progress(simulation.runner._Progress.__init__))
    stream = io.StringIO()
    options = simulation.Options(url="http://127.0.0.1:1", key="k", customers=300, last_day=LAST_DAY)
    result = simulation.simulate(scenario, options, stream=stream)
    assert "null: " in stream.getvalue() and "customers" in stream.getvalue() and "ETA" in stream.getvalue()
    lines = result.summary.lines()
    assert lines[0].startswith("simulated 300 of 300 customers in ")
    assert "customers/s" in lines[0] and "events/s" in lines[0]
    assert any(line.startswith("  exposures sim-button-colour: ") for line in lines)
    assert any(line.startswith("  events sent ") and "rejected 0" in line for line in lines)


def _fast_progress(init):
    def fast(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.every = 0.001

    return fast


def test_a_run_stops_at_max_seconds(monkeypatch):
    scenario = simulation.load("null")
    _service, result = run_against_stand_in(monkeypatch, scenario, customers=20_000, max_seconds=0.3)
    assert result.summary.ended == "time"
    assert 0 < result.summary.tally.customers < 20_000
    assert sum(result.calendar.values()) == result.summary.tally.customers


# -- the command ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("http://192.0.2.10:8000", False),
        ("https://10.1.2.3", False),
        ("not a url", False),
    ],
)
def test_loopback_urls(url, loopback):
    assert simulation.is_loopback(url) is loopback


def test_the_command_refuses_a_service_on_another_machine_without_yes(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "--url", "http://192.0.2.10:8000", "--key", "k"])
    assert result.exit_code == 2 and "not on this machine" in result.output


def test_the_command_uses_the_demo_key_and_writes_the_truth(monkeypatch, tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "demo_client_key").write_text("xp_demo\n")
    monkeypatch.setenv("EXPPLATFORM_INSTANCE_PATH", str(instance))
    scenario = simulation.load("satisfaction-only")
    service = StandIn(scenario)
    keys = []

    def request(self, method, path, body=None):
        keys.append(self._headers["Authorization"])
        return service.request(method, path, body)

    serve(monkeypatch, request)
    out = tmp_path / "truth.json"
    result = CliRunner().invoke(
        main,
        ["simulate", "--scenario", "satisfaction-only", "--customers", "120", "--seed", "3", "--truth-out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "simulated 120 of 120 customers" in result.output and f"true effects written to {out}" in result.output
    assert set(keys) == {"Bearer xp_demo"}
    truth = json.loads(out.read_text())
    assert truth["scenario"] == "satisfaction-only" and truth["seed"] == 3 and truth["customers"] == 120
    lifts = truth["experiments"]["sim-order-tracking"]["population"]["lifts"]["tracking-page"]
    assert_allclose(lifts["retention"]["questions"]["delivery-csat"]["mean_rating_difference"], 0.5)
    assert lifts["retention"]["conversion"] == 0
    run = truth["run"]
    assert run["accepted"] == len(service.events) and run["rejected"] == 0
    assert run["accepted"] + run["duplicates"] == run["events_sent"]


def test_the_command_says_what_to_do_about_an_experiment_that_is_not_running(monkeypatch, tmp_path):
    def request(self, method, path, body=None):
        if path == "/assign":
            return {"customer_id": body["customer_id"], "assignments": [
                {"experiment": k, "enrolled": False, "reason": "not_running"} for k in body["experiments"]
            ]}  # fmt: skip
        return {"accepted": len(body["events"]), "duplicates": 0, "rejected": []}

    serve(monkeypatch, request)
    result = CliRunner().invoke(main, ["simulate", "--key", "k", "--truth-out", str(tmp_path / "t.json")])
    assert result.exit_code == 1
    assert "cannot enrol anyone in sim-one-page-checkout (not_running)" in result.output
    assert "--create --admin-key" in result.output


# -- the real service ---------------------------------------------------------------------------------


@pytest.fixture
def app(database_url, tmp_path):
    """The app, logging only warnings: a line per request would be most of the run."""
    app = make_test_app(database_url, tmp_path, report_wait_seconds=REPORT_WAIT_SECONDS, log_level="WARNING")
    yield app
    app.extensions["report_cache"].slow.wait_idle(REPORT_WAIT_SECONDS)
    app.extensions["db"].engine.dispose()


def define_journey(db, scenario: simulation.Scenario) -> None:
    """The scenario's journey, as the journeys API will define it (rows, until then)."""
    from expplatform.models import Journey, JourneyPersona, JourneyStage, RatingQuestion

    with db.write() as session:
        if session.scalar(select(Journey).where(Journey.key == scenario.journey)) is not None:
            return
        session.add(
            Journey(
                key=scenario.journey,
                name=scenario.journey,
                persona_attribute=scenario.persona_attribute,
                stages=[JourneyStage(key=s, name=s, position=i) for i, s in enumerate(scenario.stages)],
                personas=[JourneyPersona(key=p, name=p, position=i) for i, p in enumerate(scenario.personas)],
                questions=[
                    RatingQuestion(key=q.key, stage=q.stage, text=q.key, scale_min=lo, scale_max=hi, position=i)
                    for i, q in enumerate(scenario.questions.values())
                    for lo, hi in [q.scale]
                ],
            )
        )  # fmt: skip


def live_run(
    live_server, db, make_key, name: str, customers: int, seed: int = 1
) -> tuple[dict, dict, simulation.Result]:
    """Run scenario ``name`` against the live app (creating its experiment); the JSON
    report, the truth document and the run."""
    scenario = simulation.load(name)
    if not LEGACY:
        define_journey(db, scenario)
    admin = make_key("admin", "simulation")
    options = simulation.Options(
        url=live_server,
        key=make_key("client", "simulation"),
        admin_key=admin,
        create=True,
        legacy=LEGACY,
        customers=customers,
        seed=seed,
        concurrency=6,
    )
    result = simulation.simulate(scenario, options, stream=None)
    assert result.summary.rejected == 0 and result.summary.failed == 0, result.summary.lines()
    key = next(iter(scenario.experiments))
    reply = http("GET", f"{live_server}/api/v1/experiments/{key}/report", key=admin, timeout=120)
    assert reply.status == 200, reply.body
    report = reply.json()
    # The report counts exactly the exposures the simulator was given.
    assert report["exposed"] == {v: n for (_k, v), n in result.summary.tally.exposures.items()}
    return report, simulation.truth_document(scenario, options, result)["experiments"][key]["enrolled"], result


def comparison(report: dict, stage: str, metric: str, treatment: str) -> dict:
    found = next(s for s in report["result"]["stages"] if s["stage"] == stage)
    cells = next(m for m in found["metrics"] if m["metric"] == metric)
    return next(c for c in cells["comparisons"] if c["treatment"] == treatment)


def assert_covers(report: dict, truth: dict, stage: str, metric: str, treatment: str, question: str | None = None):
    lift = truth["lifts"][treatment][stage]
    true = lift["conversion"] if question is None else lift["questions"][question]["mean_rating"]
    interval = comparison(report, stage, metric, treatment)["relative_lift"]
    assert interval["low"] < true < interval["high"], (stage, metric, true, interval)


@pytest.mark.slow
def test_a_clear_winner_is_shipped_and_its_lift_recovered(live_server, db, make_key):
    report, truth, result = live_run(live_server, db, make_key, "winner", 4000)
    recommendation = report["result"]["recommendation"]
    assert (recommendation["action"], recommendation["variant"]) == ("ship", "one-page")
    assert truth["lifts"]["one-page"]["purchase"]["conversion"] > 0.3
    assert_covers(report, truth, "purchase", "conversion", "one-page")
    assert comparison(report, "purchase", "conversion", "one-page")["decision"] == "ship"
    # The faults are data quality, never lift.
    quality = report["data_quality"]["stages"]["awareness"]
    assert quality["before_exposure"] + quality["unmatched"] >= result.summary.tally.before_assignment


@pytest.mark.slow
def test_a_winner_that_hurts_a_later_stage_is_vetoed_by_the_guardrail(live_server, db, make_key):
    report, truth, _result = live_run(live_server, db, make_key, "guardrail", 4000)
    recommendation = report["result"]["recommendation"]
    assert recommendation["action"] == "keep_control"
    assert {(g["variant"], g["stage"], g["metric"]) for g in recommendation["guardrails"]} == {
        ("pay-later", "retention", "mean_rating")
    }
    assert comparison(report, "purchase", "conversion", "pay-later")["decision"] == "ship"
    assert_covers(report, truth, "purchase", "conversion", "pay-later")
    assert_covers(report, truth, "retention", "mean_rating", "pay-later", "delivery-csat")


@pytest.mark.slow
def test_a_broken_split_says_investigate(live_server, db, make_key):
    report, _truth, result = live_run(live_server, db, make_key, "broken-split", 3000)
    ratio = report["result"]["sample_ratio"]
    assert ratio["flagged"] and ratio["p_value"] < 0.001
    assert report["result"]["recommendation"]["action"] == "investigate"
    assert "sample_ratio_mismatch" in {w["code"] for w in report["warnings"]}
    assert result.summary.tally.sample_ratio_skipped > 0


def test_a_second_run_with_the_same_seed_stores_nothing_new(live_server, db, make_key):
    scenario = simulation.load("null")
    if not LEGACY:
        define_journey(db, scenario)
    options = simulation.Options(
        url=live_server,
        key=make_key("client", "simulation"),
        admin_key=make_key("admin", "simulation"),
        create=True,
        legacy=LEGACY,
        customers=200,
        seed=11,
        concurrency=4,
    )
    first = simulation.simulate(scenario, options, stream=None)

    def stored() -> tuple[int, int]:
        with db.sessionmaker() as session:
            return session.scalar(select(func.count()).select_from(Event)), session.scalar(
                select(func.count()).select_from(Exposure)
            )

    before = stored()
    assert before == (first.summary.accepted, 200) and first.summary.rejected == 0
    second = simulation.simulate(scenario, options, stream=None)
    assert stored() == before
    assert second.summary.accepted == 0 and second.summary.rejected == 0
    assert second.summary.duplicates == second.summary.tally.events == first.summary.tally.events


def test_a_service_that_does_not_answer_or_refuses_the_key_stops_the_run(monkeypatch):
    scenario = simulation.load("null")
    options = simulation.Options(url="http://127.0.0.1:1", key="k", customers=10)
    with pytest.raises(simulation.SimulationError, match=r"cannot reach http://127\.0\.0\.1:1"):
        simulation.simulate(scenario, options, stream=None)

    def refuse(self, method, path, body=None):
        raise ClientError(401, {"error": "unauthorized", "message": "Unknown API key."})

    serve(monkeypatch, refuse)
    with pytest.raises(simulation.SimulationError, match="refused an assignment: 401 unauthorized"):
        simulation.simulate(scenario, options, stream=None)


def test_with_an_admin_key_the_experiments_are_checked_and_with_create_made(monkeypatch):
    scenario = simulation.load("null")
    calls: list[tuple[str, str]] = []
    state = {"status": None}

    def admin(url, key, method, path, body=None):
        calls.append((method, path))
        if method == "GET":
            return (404, {"error": "not_found"}) if state["status"] is None else (200, {"status": state["status"]})
        if path == "/experiments":
            assert body["key"] == "sim-button-colour" and body["journey"] == "ecommerce"
            state["status"] = "draft"
            return 201, {"status": "draft"}
        state["status"] = "running"
        return 200, {"status": "running"}

    monkeypatch.setattr(simulation.service, "_admin", admin)
    prepare = simulation.service.prepare_experiments
    with pytest.raises(simulation.SimulationError, match="does not exist"):
        prepare(scenario, "u", "k", create=False, legacy=False, say=print)
    said: list[str] = []
    prepare(scenario, "u", "k", create=True, legacy=False, say=said.append)
    assert said == ["created experiment sim-button-colour", "started experiment sim-button-colour"]
    assert calls[-2:] == [("POST", "/experiments"), ("POST", "/experiments/sim-button-colour/start")]
    state["status"] = "paused"
    with pytest.raises(simulation.SimulationError, match="is paused: resume it, or run with --create"):
        prepare(scenario, "u", "k", create=False, legacy=False, say=print)
    state["status"] = "stopped"
    with pytest.raises(simulation.SimulationError, match="is stopped"):
        prepare(scenario, "u", "k", create=True, legacy=False, say=print)
