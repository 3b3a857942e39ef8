"""The journeys JSON API: CRUD, validation by field path, the freeze rules (stages
experiments measure, scales of answered questions), the audit log, and who may call
what. Every response is also checked against the OpenAPI document."""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from sqlalchemy import select

from expplatform.models import AuditEntry, Event, Experiment
from expplatform.versioning import read_version

from .conftest import sign_in
from .openapi_check import API_PREFIX, assert_matches_openapi, checked, request_examples

BASE = "/api/v1/journeys"
EXPERIMENTS = "/api/v1/experiments"


def journey(key: str = "shop", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "key": key,
        "name": "Online shop",
        "description": "From first visit to recommending us.",
        "stages": [
            {"key": "awareness", "goal": "Visited", "touchpoints": ["ads", "search"]},
            {"key": "consideration", "name": "Looking around", "touchpoints": ["product page"]},
            {"key": "purchase", "goal": "Ordered", "touchpoints": ["cart", "checkout", "payment"]},
            {"key": "advocacy", "touchpoints": ["review request"]},
        ],
        "personas": [
            {"key": "bargain-hunter", "name": "Bargain hunter", "description": "Waits for discounts."},
            {"key": "loyal", "name": "Loyal customer"},
        ],
        "questions": [
            {
                "key": f"{key}-effort",
                "text": "How easy was it to find what you wanted?",
                "stage": "consideration",
                "scale": {"min": 1, "max": 7},
            },
            {
                "key": f"{key}-checkout",
                "text": "How satisfied are you with checkout?",
                "stage": "purchase",
                "scale": {"min": 1, "max": 5},
            },
            {
                "key": f"{key}-nps",
                "text": "How likely are you to recommend us?",
                "stage": "advocacy",
                "scale": {"min": 0, "max": 10},
            },
        ],
    }
    data.update(changes)
    return data


def experiment(key: str = "checkout", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "key": key,
        "name": "One-page checkout",
        "journey": "shop",
        "stages": ["purchase", "advocacy"],
        "metrics": ["shop-checkout", "shop-nps"],
        "target_stage": "purchase",
        "variants": [{"key": "control"}, {"key": "one-page"}],
    }
    data.update(changes)
    return data


@pytest.fixture
def api(admin_api):
    return checked(admin_api)


def put(admin_api, path: str, body: Any):
    """PUT through the bearer key (the test helper has no put), checked against the document."""
    response = admin_api.client.put(path, json=body, headers=admin_api.headers())
    assert_matches_openapi(response)
    return response


@pytest.fixture
def create(api):
    def _create(key: str = "shop", **changes: Any) -> dict[str, Any]:
        response = api.post(BASE, json=journey(key, **changes))
        assert response.status_code == 201, response.json
        return response.json

    return _create


@pytest.fixture
def run_experiment(api):
    """An experiment on the journey in ``status``."""

    def _run(status: str = "running", key: str = "checkout", **changes: Any) -> dict[str, Any]:
        response = api.post(EXPERIMENTS, json=experiment(key, **changes))
        assert response.status_code == 201, response.json
        for action in {"draft": [], "running": ["start"], "paused": ["start", "pause"], "stopped": ["start", "stop"]}[
            status
        ]:
            response = api.post(f"{EXPERIMENTS}/{key}/{action}")
            assert response.status_code == 200, response.json
        return response.json

    return _run


def answer(db, question: str, stage: str, value: int = 4) -> None:
    """A stored rating event naming ``question``, as ingest stores one."""
    now = datetime.now(UTC)
    with db.write() as session:
        number = len(session.scalars(select(Event.id)).all())
        session.add(
            Event(
                event_id=f"e-{question}-{number}",
                customer_id="c-1",
                stage=stage,
                type="satisfaction",
                metric=question,
                value=value,
                occurred_at=now,
                received_at=now,
                exposure_cutoff=now,
            )
        )


def version(db) -> int:
    with db.sessionmaker() as session:
        return read_version(session)


def without(data: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in names}


# -- create, read, list ------------------------------------------------------------------


def test_create_returns_201_with_location_and_the_stored_journey(api, admin_key):
    response = api.post(BASE, json=journey())
    assert response.status_code == 201
    assert response.headers["Location"].endswith("/api/v1/journeys/shop")
    body = response.json
    assert body["persona_attribute"] == "persona" and "notices" not in body
    # Defaults written out: names made from keys, empty goals and touchpoints.
    assert [(s["key"], s["name"], s["goal"]) for s in body["stages"]] == [
        ("awareness", "Awareness", "Visited"),
        ("consideration", "Looking around", ""),
        ("purchase", "Purchase", "Ordered"),
        ("advocacy", "Advocacy", ""),
    ]
    assert body["personas"][1] == {"key": "loyal", "name": "Loyal customer", "description": ""}
    assert body["questions"][0] == journey()["questions"][0]
    fetched = api.get(response.headers["Location"]).json
    assert without(fetched, "audit") == body
    assert [(e["action"], e["actor"], e["journey"]) for e in fetched["audit"]] == [
        ("created", f"key:{admin_key[:12]}", "shop")
    ]


def test_minimal_journey_gets_the_documented_defaults(api):
    body = api.post(BASE, json={"key": "tiny", "name": "Tiny", "stages": [{"key": "first-visit"}]}).json
    assert without(body, "created_at", "updated_at") == {
        "key": "tiny",
        "name": "Tiny",
        "description": "",
        "persona_attribute": "persona",
        "stages": [{"key": "first-visit", "name": "First visit", "goal": "", "touchpoints": []}],
        "personas": [],
        "questions": [],
    }


def test_list_is_ordered_by_key(api, create):
    create("zoo")
    create("alpha")
    assert [item["key"] for item in api.get(BASE).json["items"]] == ["alpha", "zoo"]


def test_duplicate_key_is_a_409(api, create):
    create()
    response = api.post(BASE, json=journey(name="Another", questions=[]))
    assert response.status_code == 409 and response.json["error"] == "duplicate_key"
    assert api.get(f"{BASE}/shop").json["name"] == "Online shop"


def test_question_keys_are_unique_across_journeys(api, create):
    create()
    other = journey("other")
    other["questions"][1]["key"] = "shop-checkout"
    response = api.post(BASE, json=other)
    assert response.status_code == 409 and response.json["error"] == "duplicate_question"
    assert response.json["fields"] == {"questions.1.key": "is taken by journey 'shop'"}
    assert api.get(f"{BASE}/other").status_code == 404


# -- validation ----------------------------------------------------------------------------


def _bad_stage(**stage: Any) -> dict[str, Any]:
    data = journey()
    data["stages"][2] = {"key": "purchase", **stage}
    return data


def _bad_question(**question: Any) -> dict[str, Any]:
    data = journey()
    data["questions"][1] = {**data["questions"][1], **question}
    return data


INVALID = [
    ({"key": "Bad Key", "questions": []}, {"key"}),
    ({"key": "new"}, {"key"}),
    ({"name": ""}, {"name"}),
    ({"name": "x" * 201}, {"name"}),
    ({"colour": "green"}, {"colour"}),
    ({"kind": "experiment"}, {"kind"}),
    ({"persona_attribute": ""}, {"persona_attribute"}),
    ({"stages": []}, {"stages"}),
    ({"stages": [{"key": f"s{i}"} for i in range(21)]}, {"stages"}),
    ({"stages": ["awareness", "purchase"]}, {"stages.0", "stages.1"}),
    (
        {"stages": [{"key": "a"}, {"key": "a"}], "questions": []},
        {"stages.1.key"},
    ),
    ({"personas": [{"key": "Loyal Customer"}]}, {"personas.0.key"}),
    ({"personas": [{"key": "loyal"}, {"key": "loyal"}]}, {"personas.1.key"}),
    ({"personas": [{"name": "No key"}]}, {"personas.0.key"}),
    ({"questions": [{"key": "q"}]}, {"questions.0.text", "questions.0.stage", "questions.0.scale"}),
]


@pytest.mark.parametrize(("changes", "fields"), INVALID)
def test_invalid_journeys_are_422_naming_every_field(api, changes, fields):
    response = api.post(BASE, json=journey(**changes))
    assert response.status_code == 422 and response.json["error"] == "validation_failed"
    assert set(response.json["fields"]) == fields, response.json["fields"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (_bad_stage(goal=5), {"stages.2.goal"}),
        (_bad_stage(touchpoints="cart"), {"stages.2.touchpoints"}),
        (_bad_stage(touchpoints=["cart", "cart"]), {"stages.2.touchpoints.1"}),
        (_bad_stage(touchpoints=["cart", ""]), {"stages.2.touchpoints.1"}),
        (_bad_stage(touchpoints=["x" * 101]), {"stages.2.touchpoints.0"}),
        (_bad_stage(touchpoints=[f"t{i}" for i in range(21)]), {"stages.2.touchpoints"}),
        (_bad_stage(step=1), {"stages.2.step"}),
        (_bad_question(stage="checkout"), {"questions.1.stage"}),
        (_bad_question(scale={"min": 3, "max": 3}), {"questions.1.scale.max"}),
        (_bad_question(scale={"min": 0, "max": 11}), {"questions.1.scale.max"}),
        (_bad_question(scale={"min": 1.5, "max": 5}), {"questions.1.scale.min"}),
        (_bad_question(scale={"min": 1, "max": "5"}), {"questions.1.scale.max"}),
        (_bad_question(scale={"min": 2**60, "max": 2**60 + 5}), {"questions.1.scale.min", "questions.1.scale.max"}),
        (_bad_question(scale={"min": 1, "max": 5, "step": 1}), {"questions.1.scale.step"}),
        (_bad_question(scale=[1, 5]), {"questions.1.scale"}),
        (_bad_question(key="shop-effort"), {"questions.1.key"}),
        (_bad_question(text=""), {"questions.1.text"}),
        (_bad_question(text="x" * 501), {"questions.1.text"}),
    ],
)
def test_bad_stages_and_questions_are_named_by_path(api, body, fields):
    response = api.post(BASE, json=body)
    assert response.status_code == 422 and set(response.json["fields"]) == fields, response.json


@pytest.mark.parametrize("bad", ["x\x00y", "x\ud800y", "\udfff"])
def test_nul_and_lone_surrogates_are_refused_in_every_text(api, bad):
    data = journey(name=bad, description=bad, persona_attribute=bad)
    data["stages"][0] = {"key": "awareness", "name": bad, "goal": bad, "touchpoints": [bad]}
    data["personas"][0] = {"key": "bargain-hunter", "name": bad, "description": bad}
    data["questions"][0] = {**data["questions"][0], "text": bad}
    response = api.post(BASE, json=data)
    assert response.status_code == 422
    assert set(response.json["fields"]) == {
        "name",
        "description",
        "persona_attribute",
        "stages.0.name",
        "stages.0.goal",
        "stages.0.touchpoints.0",
        "personas.0.name",
        "personas.0.description",
        "questions.0.text",
    }
    assert api.get(f"{BASE}/shop").status_code == 404


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"data": "{not json", "content_type": "application/json"}, "malformed_json"),
        ({"json": ["a", "list"]}, "invalid_body"),
        ({"data": "key=x", "content_type": "application/x-www-form-urlencoded"}, "invalid_content_type"),
    ],
)
def test_malformed_bodies_are_400(api, kwargs, code):
    response = api.post(BASE, **kwargs)
    assert response.status_code == 400 and response.json["error"] == code


@pytest.mark.parametrize(("method", "suffix"), [("get", ""), ("patch", ""), ("put", ""), ("get", "/audit")])
def test_unknown_journey_is_404(admin_api, method, suffix):
    path = f"{BASE}/nope{suffix}"
    if method == "put":
        response = put(admin_api, path, journey("nope"))
    else:
        kwargs = {"json": {"name": "x"}} if method == "patch" else {}
        response = checked(admin_api).__getattr__(method)(path, **kwargs)
    assert response.status_code == 404 and response.json["error"] == "journey_not_found"


# -- updates and the audit log ---------------------------------------------------------------


def test_put_replaces_the_definition_and_the_audit_log_says_from_what_to_what(admin_api, api, create, db):
    create()
    before = version(db)
    changed = journey(name="Online shop (EU)", personas=[])
    changed["stages"].insert(3, {"key": "retention", "touchpoints": ["order emails"]})
    response = put(admin_api, f"{BASE}/shop", changed)
    assert response.status_code == 200, response.json
    assert [s["key"] for s in response.json["stages"]] == [
        "awareness",
        "consideration",
        "purchase",
        "retention",
        "advocacy",
    ]
    assert version(db) > before
    entry = api.get(f"{BASE}/shop/audit").json["items"][0]
    assert entry["action"] == "updated" and set(entry["details"]["changes"]) == {"name", "stages", "personas"}
    assert entry["details"]["changes"]["name"] == {"from": "Online shop", "to": "Online shop (EU)"}
    assert entry["details"]["changes"]["personas"]["to"] == []
    assert len(entry["details"]["changes"]["personas"]["from"]) == 2


def test_an_unchanged_put_writes_no_audit_entry(admin_api, api, create):
    created = create()
    response = put(admin_api, f"{BASE}/shop", journey())
    assert response.status_code == 200 and without(response.json, "updated_at") == without(created, "updated_at")
    assert [e["action"] for e in api.get(f"{BASE}/shop/audit").json["items"]] == ["created"]


def test_patch_replaces_given_fields_and_null_resets_to_the_default(api, create):
    create(persona_attribute="segment")
    body = api.patch(f"{BASE}/shop", json={"description": None, "persona_attribute": None, "name": "Shop"}).json
    assert (body["description"], body["persona_attribute"], body["name"]) == ("", "persona", "Shop")
    assert len(body["stages"]) == 4 and len(body["questions"]) == 3
    required = api.patch(f"{BASE}/shop", json={"stages": None})
    assert required.status_code == 422 and required.json["fields"] == {"stages": "is required"}


def test_the_key_cannot_change(admin_api, api, create):
    create()
    renamed = api.patch(f"{BASE}/shop", json={"key": "store"})
    assert renamed.status_code == 409 and renamed.json["error"] == "key_immutable"
    replaced = put(admin_api, f"{BASE}/shop", journey("store"))
    assert replaced.status_code == 409 and replaced.json["error"] == "key_immutable"


def test_stage_and_question_rows_keep_their_ids_through_edits(api, create, db):
    from expplatform.models import JourneyStage, RatingQuestion

    create()
    with db.sessionmaker() as session:
        before = dict(session.execute(select(JourneyStage.key, JourneyStage.id)).all())
        questions = dict(session.execute(select(RatingQuestion.key, RatingQuestion.id)).all())
    stages = journey()["stages"]
    api.patch(f"{BASE}/shop", json={"stages": [stages[1], stages[0], *stages[2:]]})
    with db.sessionmaker() as session:
        assert dict(session.execute(select(JourneyStage.key, JourneyStage.id)).all()) == before
        assert dict(session.execute(select(RatingQuestion.key, RatingQuestion.id)).all()) == questions


# -- what experiments and answers freeze -----------------------------------------------------


@pytest.mark.parametrize("status", ["draft", "running", "paused", "stopped"])
def test_a_stage_an_experiment_measures_cannot_be_removed(api, create, run_experiment, status):
    create()
    run_experiment(status)
    stages = [s for s in journey()["stages"] if s["key"] != "advocacy"]
    questions = [q for q in journey()["questions"] if q["stage"] != "advocacy"]
    response = api.patch(f"{BASE}/shop", json={"stages": stages, "questions": questions})
    assert response.status_code == 409 and response.json["error"] == "stage_in_use"
    assert "'advocacy' is measured by" in response.json["fields"]["stages"]
    assert f"{status} experiment 'checkout'" in response.json["fields"]["stages"]
    assert [s["key"] for s in api.get(f"{BASE}/shop").json["stages"]][-1] == "advocacy"


def test_a_stage_no_experiment_measures_can_be_removed(api, create, run_experiment):
    create()
    run_experiment("running")
    stages = [s for s in journey()["stages"] if s["key"] != "awareness"]
    assert api.patch(f"{BASE}/shop", json={"stages": stages}).status_code == 200


@pytest.mark.parametrize("status", ["running", "paused"])
def test_a_started_experiments_stages_keep_their_order(api, create, run_experiment, status):
    create()
    run_experiment(status)
    awareness, consideration, purchase, advocacy = journey()["stages"]
    swapped = api.patch(f"{BASE}/shop", json={"stages": [awareness, consideration, advocacy, purchase]})
    assert swapped.status_code == 409 and swapped.json["error"] == "stage_in_use"
    assert swapped.json["fields"] == {
        "stages.2": f"'advocacy' must stay after 'purchase': {status} experiment 'checkout' measures them in that order"
    }
    # Stages it does not measure may move around its own.
    moved = api.patch(f"{BASE}/shop", json={"stages": [consideration, purchase, awareness, advocacy]})
    assert moved.status_code == 200, moved.json


def test_a_stopped_experiment_with_enrolled_customers_keeps_its_order_too(api, client_api, create, run_experiment):
    create()
    run_experiment("running")
    assigned = client_api.post("/api/v1/assign", json={"customer_id": "c-1", "experiments": ["checkout"]})
    assert assigned.status_code == 200, assigned.json
    api.post(f"{EXPERIMENTS}/checkout/stop")
    awareness, consideration, purchase, advocacy = journey()["stages"]
    swapped = api.patch(f"{BASE}/shop", json={"stages": [awareness, consideration, advocacy, purchase]})
    assert swapped.status_code == 409 and "stopped experiment 'checkout'" in swapped.json["fields"]["stages.2"]


def test_a_drafts_stages_follow_a_reordered_journey(api, create, run_experiment, db):
    create()
    run_experiment("draft")
    awareness, consideration, purchase, advocacy = journey()["stages"]
    response = api.patch(f"{BASE}/shop", json={"stages": [awareness, consideration, advocacy, purchase]})
    assert response.status_code == 200
    assert response.json["notices"] == ["the stages of checkout now follow the journey's new order"]
    stored = api.get(f"{EXPERIMENTS}/checkout").json
    assert stored["stages"] == ["advocacy", "purchase"] and stored["metrics"] == ["shop-nps", "shop-checkout"]
    assert stored["audit"][0]["action"] == "updated"
    assert stored["audit"][0]["details"]["changes"] == {
        "stages": {"from": ["purchase", "advocacy"], "to": ["advocacy", "purchase"]}
    }
    # The draft still saves as it is shown (its stages are in journey order).
    assert api.patch(f"{EXPERIMENTS}/checkout", json={"traffic": 0.5}).status_code == 200


def _rescaled(index: int, low: int, high: int) -> list[dict[str, Any]]:
    questions = copy.deepcopy(journey()["questions"])
    questions[index]["scale"] = {"min": low, "max": high}
    return questions


def test_the_scale_of_an_answered_question_is_frozen(api, create, db):
    create()
    answer(db, "shop-checkout", "purchase")
    response = api.patch(f"{BASE}/shop", json={"questions": _rescaled(1, 0, 10)})
    assert response.status_code == 409 and response.json["error"] == "frozen_field"
    assert set(response.json["fields"]) == {"questions.1.scale"}
    assert "frozen at 1-5: it has answers" in response.json["fields"]["questions.1.scale"]
    # An unanswered question's scale may change; the text of an answered one too.
    questions = _rescaled(0, 1, 5)
    questions[1]["text"] = "How was checkout?"
    assert api.patch(f"{BASE}/shop", json={"questions": questions}).status_code == 200


def test_an_answered_question_cannot_be_removed_or_moved(api, create, db):
    create()
    answer(db, "shop-effort", "consideration")
    questions = journey()["questions"]
    removed = api.patch(f"{BASE}/shop", json={"questions": questions[1:]})
    assert removed.status_code == 409 and removed.json["error"] == "question_in_use"
    assert removed.json["fields"] == {"questions": "'shop-effort' has answers: such a question cannot be removed"}
    moved = api.patch(f"{BASE}/shop", json={"questions": [{**questions[0], "stage": "awareness"}, *questions[1:]]})
    assert moved.status_code == 409 and set(moved.json["fields"]) == {"questions.0.stage"}


@pytest.mark.parametrize(("status", "frozen"), [("draft", False), ("running", True), ("paused", True)])
def test_the_scale_a_started_experiment_measures_is_frozen(api, create, run_experiment, status, frozen):
    create()
    run_experiment(status)
    response = api.patch(f"{BASE}/shop", json={"questions": _rescaled(2, 1, 5)})
    if frozen:
        assert response.status_code == 409 and response.json["error"] == "frozen_field"
        assert f"measured by {status} experiment 'checkout'" in response.json["fields"]["questions.2.scale"]
    else:
        assert response.status_code == 200 and response.json["questions"][2]["scale"] == {"min": 1, "max": 5}


def test_a_question_any_experiment_measures_cannot_be_removed(api, create, run_experiment):
    create()
    run_experiment("draft")
    questions = journey()["questions"]
    response = api.patch(f"{BASE}/shop", json={"questions": questions[:2]})
    assert response.status_code == 409 and response.json["error"] == "question_in_use"
    assert "measured by draft experiment 'checkout'" in response.json["fields"]["questions"]
    # Unmeasured and unanswered: free to go.
    assert api.patch(f"{BASE}/shop", json={"questions": questions[1:]}).status_code == 200


def test_every_frozen_part_is_named_at_once_and_nothing_is_stored(api, create, run_experiment, db):
    create()
    run_experiment("running")
    answer(db, "shop-effort", "consideration")
    stages = [s for s in journey()["stages"] if s["key"] != "advocacy"]
    response = api.patch(
        f"{BASE}/shop",
        json={"stages": stages, "questions": [{**journey()["questions"][0], "scale": {"min": 1, "max": 5}}]},
    )
    assert response.status_code == 409 and response.json["error"] == "stage_in_use"
    assert set(response.json["fields"]) == {"stages", "questions", "questions.0.scale"}
    stored = api.get(f"{BASE}/shop").json
    assert len(stored["stages"]) == 4 and len(stored["questions"]) == 3


def test_a_renamed_stage_is_a_new_stage(api, create, run_experiment):
    create()
    run_experiment("running")
    stages = copy.deepcopy(journey()["stages"])
    stages[3]["key"] = "recommendation"
    response = api.patch(f"{BASE}/shop", json={"stages": stages, "questions": journey()["questions"][:2]})
    assert response.status_code == 409 and response.json["error"] == "stage_in_use"
    # Its name, goal and touchpoints are free to change.
    stages[3] = {"key": "advocacy", "name": "Recommendation", "goal": "Told a friend", "touchpoints": []}
    assert api.patch(f"{BASE}/shop", json={"stages": stages}).json["stages"][3]["name"] == "Recommendation"


# -- version bumps and concurrency -----------------------------------------------------------


def test_changes_bump_the_definitions_version_and_failures_do_not(api, create, db):
    start = version(db)
    create()
    after_create = version(db)
    assert after_create > start
    assert api.patch(f"{BASE}/shop", json={"name": "Shop"}).status_code == 200
    assert version(db) > after_create
    current = version(db)
    assert api.post(BASE, json=journey()).status_code == 409
    assert api.patch(f"{BASE}/shop", json={"stages": []}).status_code == 422
    assert version(db) == current


def test_concurrent_patches_of_different_fields_all_survive(live_server, admin_key, create):
    create()
    changes = [
        {"name": "New name"},
        {"description": "New description"},
        {"persona_attribute": "segment"},
        {"personas": [{"key": "first-timer", "name": "First-timer", "description": ""}]},
    ]
    barrier = threading.Barrier(len(changes))
    statuses: list[int] = []

    def patch(change: dict[str, Any]) -> None:
        barrier.wait()
        response = requests.patch(
            f"{live_server}{BASE}/shop", json=change, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=patch, args=(change,)) for change in changes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * len(changes)
    final = requests.get(f"{live_server}{BASE}/shop", headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)
    body = final.json()
    for change in changes:
        ((name, value),) = change.items()
        assert body[name] == value, name
    assert sum(entry["action"] == "updated" for entry in body["audit"]) == len(changes)


# -- the experiments on a journey -------------------------------------------------------------


def test_an_experiment_on_the_journey_measures_its_questions(api, create):
    create()
    response = api.post(EXPERIMENTS, json=without(experiment(), "metrics"))
    assert response.status_code == 201, response.json
    assert response.json["metrics"] == ["shop-checkout", "shop-nps"]  # each measured stage's first question
    none = api.post(EXPERIMENTS, json=experiment("no-questions", metrics=[]))
    assert none.status_code == 201 and none.json["metrics"] == []
    wrong = api.post(EXPERIMENTS, json=experiment("wrong", metrics=["shop-effort"]))
    assert wrong.status_code == 422 and "not measured" in wrong.json["fields"]["metrics.0"]


def test_the_documented_examples_are_accepted(admin_api):
    examples = {(path, method, name): value for path, method, name, value in request_examples()}
    created = admin_api.post(f"{API_PREFIX}/journeys", json=examples[("/journeys", "post", "ecommerce")])
    assert created.status_code == 201, created.json
    assert_matches_openapi(created)
    replaced = put(admin_api, f"{API_PREFIX}/journeys/ecommerce", examples[("/journeys/{key}", "put", "ecommerce")])
    assert replaced.status_code == 200 and replaced.json["name"] == "Online shop (EU)"
    for name in ("rename", "personas"):
        patched = admin_api.patch(f"{API_PREFIX}/journeys/ecommerce", json=examples[("/journeys/{key}", "patch", name)])
        assert patched.status_code == 200, patched.json
        assert_matches_openapi(patched)


# -- who may call what ------------------------------------------------------------------------

ROUTES = [
    ("get", "", None),
    ("post", "", "create"),
    ("get", "/j", None),
    ("put", "/j", "replace"),
    ("patch", "/j", {"name": "Renamed"}),
    ("get", "/j/audit", None),
]
CALLERS = ["nobody", "client_key", "admin_key", "viewer", "editor", "admin"]


def expected_status(method: str, caller: str) -> str:
    if caller == "nobody":
        return "401"
    if caller == "client_key" or (caller == "viewer" and method != "get"):
        return "403"
    return "2xx"


@pytest.mark.parametrize(("method", "suffix", "body"), ROUTES, ids=[f"{m} {s or '/'}" for m, s, _ in ROUTES])
def test_access_table(app, admin_api, make_key, make_user, method, suffix, body):
    client_key = make_key("client", "shop")
    for n, caller in enumerate(CALLERS):
        key = f"j-{n}"
        assert admin_api.post(BASE, json=journey(key)).status_code == 201
        client = app.test_client()
        headers = {}
        if caller == "client_key":
            headers["Authorization"] = f"Bearer {client_key}"
        elif caller == "admin_key":
            headers["Authorization"] = f"Bearer {admin_api.key}"
        elif caller != "nobody":
            sign_in(client, app, make_user(caller, f"{caller}-{n}@example.com"))
        payload = body
        if body == "create":
            payload = journey(f"new-{n}")
        elif body == "replace":
            payload = journey(key, name="Replaced")
        path = BASE + suffix.replace("/j", f"/{key}")
        response = getattr(client, method)(path, json=payload, headers=headers)
        outcome = "2xx" if 200 <= response.status_code < 300 else str(response.status_code)
        assert outcome == expected_status(method, caller), f"{caller} {method} {path}: {response.json}"
        assert response.is_json
        assert_matches_openapi(response)


def test_session_writes_must_be_json(client, login, create):
    create()
    login("editor")
    as_form = client.patch(f"{BASE}/shop", data={"name": "x"})
    assert as_form.status_code == 400 and as_form.json["error"] == "invalid_content_type"
    assert client.patch(f"{BASE}/shop", json={"name": "By session"}).status_code == 200
    user_entry = client.get(f"{BASE}/shop/audit").json["items"][0]
    assert user_entry["actor"].startswith("user:editor-")


def test_experiment_audit_entries_name_the_journey_change(db, api, create, run_experiment):
    """The re-ordering of a draft's stages is in the experiment's own audit log."""
    create()
    run_experiment("draft")
    awareness, consideration, purchase, advocacy = journey()["stages"]
    api.patch(f"{BASE}/shop", json={"stages": [advocacy, awareness, consideration, purchase]})
    with db.sessionmaker() as session:
        entry = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
        stored = session.scalars(select(Experiment).where(Experiment.key == "checkout")).one()
    assert entry.details["journey"] == "shop" and stored.stages == ["advocacy", "purchase"]
