"""POST/GET /api/v1/assign on SQLite and PostgreSQL: enrolment, exposures, targeting,
layers, forced variants, lifecycle states, the warm hot path, scopes and bad input."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select, update

from expplatform.assignment import Rule, compile_rule, targeting_matches
from expplatform.bucketing import NOT_IN_TRAFFIC, OUTSIDE_LAYER, place
from expplatform.models import Experiment, Exposure, Variant
from expplatform.versioning import bump_version

from .assign_support import URL, customer_where, exposures, seed, statements, variant_key
from .conftest import Api, make_test_app
from .openapi_check import assert_matches_openapi, checked


@pytest.fixture
def api(client_api) -> Api:
    return checked(client_api)


# -- enrolment and exposures --------------------------------------------------------------


def test_first_call_enrols_and_records_one_exposure_with_the_attributes(api, db):
    split = seed(db, "checkout-button")
    attributes = {"country": "FR", "platform": "ios", "visits": 3, "member": True}
    response = api.post(
        URL, json={"customer_id": "c-1042", "attributes": attributes, "experiments": ["checkout-button"]}
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    expected = ["control", "treatment"][place(split, "c-1042")]
    assert response.json == {
        "customer_id": "c-1042",
        "assignments": [{"experiment": "checkout-button", "variant": expected, "stage": "purchase", "enrolled": True}],
    }
    [exposure] = exposures(db)
    assert (exposure.customer_id, variant_key(db, exposure.variant_id)) == ("c-1042", expected)
    assert exposure.attributes == attributes and exposure.forced is False and exposure.mismatches == 0
    assert exposure.exposed_at is not None


def test_variants_follow_the_bucketing_for_many_customers(api, db):
    split = seed(db, "hero", variants=(("a", 0.2), ("b", 0.3), ("c", 0.5)))
    for i in range(40):
        response = api.post(URL, json={"customer_id": f"u{i}"})
        assert response.json["assignments"][0]["variant"] == "abc"[place(split, f"u{i}")]
    assert len(exposures(db)) == 40


def test_repeat_calls_return_the_same_variant_and_write_nothing(api, db):
    seed(db, "checkout-button")
    first = api.post(URL, json={"customer_id": "c1", "attributes": {"country": "FR"}}).json
    with statements(db) as seen:
        again = [api.post(URL, json={"customer_id": "c1", "attributes": {"country": "DE"}}).json for _ in range(3)]
    assert again == [first] * 3
    assert len([s for s in seen if re.search(r"\bFROM exposures\b", s)]) == 3  # the log sees the hot path
    assert not [s for s in seen if re.match(r"\s*(INSERT|UPDATE|DELETE)", s, re.I)]
    [exposure] = exposures(db)
    assert exposure.attributes == {"country": "FR"}  # the first call's attributes


def test_warm_repeat_call_reads_only_the_customers_exposures(database_url, tmp_path):
    """With the caches warm (long refresh interval), a repeat customer costs exactly one
    query, on exposures, for all the experiments asked for."""
    app = make_test_app(database_url, tmp_path, definitions_refresh_seconds=3600)
    try:
        db = app.extensions["db"]
        with db.write() as session:
            from expplatform.auth import create_api_key

            _record, key = create_api_key(session, "client", "shop", created_by="tests")
        for name in ("one", "two", "three"):
            seed(db, name)
        api = Api(app.test_client(), key)
        body = {"customer_id": "repeat", "experiments": ["one", "two", "three"]}
        first = api.post(URL, json=body)
        assert [a["enrolled"] for a in first.json["assignments"]] == [True] * 3
        with statements(db) as seen:
            again = api.post(URL, json=body)
        assert again.json == first.json
        queries = [s for s in seen if not re.match(r"\s*(BEGIN|COMMIT|ROLLBACK)", s, re.I)]
        assert len(queries) == 1, seen
        assert re.search(r"\bFROM exposures\b", queries[0])
        assert not re.search(r"\b(experiments|variants|definitions_version|api_keys)\b", queries[0])
    finally:
        app.extensions["db"].engine.dispose()


def test_customer_outside_traffic_is_not_enrolled_and_leaves_no_exposure(api, db):
    split = seed(db, "ramp", traffic=0.3)
    outside = customer_where(split, lambda p: p == NOT_IN_TRAFFIC)
    inside = customer_where(split, lambda p: p >= 0)
    assert api.post(URL, json={"customer_id": outside}).json["assignments"] == [
        {"experiment": "ramp", "enrolled": False, "reason": "traffic"}
    ]
    assert api.post(URL, json={"customer_id": inside}).json["assignments"][0]["enrolled"] is True
    assert [e.customer_id for e in exposures(db)] == [inside]


def test_raising_traffic_keeps_enrolled_customers_in_their_variant(api, db):
    seed(db, "ramp", traffic=0.2)
    before = {f"r{i}": api.post(URL, json={"customer_id": f"r{i}"}).json["assignments"][0] for i in range(60)}
    with db.write() as session:
        session.execute(update(Experiment).where(Experiment.key == "ramp").values(traffic=0.9))
        bump_version(session)
    after = {cid: api.post(URL, json={"customer_id": cid}).json["assignments"][0] for cid in before}
    assert all(after[cid] == a for cid, a in before.items() if a["enrolled"])
    assert sum(a["enrolled"] for a in after.values()) > sum(a["enrolled"] for a in before.values())


# -- selection and lifecycle states --------------------------------------------------------------


def test_states_and_unknown_keys_are_reported_per_experiment_in_the_order_asked(api, db):
    seed(db, "live")
    seed(db, "on-hold", status="paused")
    seed(db, "planned", status="draft")
    seed(db, "over", status="stopped")
    response = api.post(
        URL, json={"customer_id": "c1", "experiments": ["over", "nope", "on-hold", "live", "planned", "live"]}
    )
    assert response.status_code == 200
    assignments = response.json["assignments"]
    assert [(a["experiment"], a.get("reason")) for a in assignments] == [
        ("over", "not_running"),
        ("nope", "unknown_experiment"),
        ("on-hold", "paused"),
        ("live", None),
        ("planned", "not_running"),
    ]
    assert [e.customer_id for e in exposures(db)] == ["c1"]  # only the running one wrote


def test_paused_experiment_serves_control_to_everyone_and_writes_nothing(api, db):
    seed(db, "hold", status="paused", forced={"qa": "treatment"})
    for cid in ("a", "b", "qa"):
        assert api.post(URL, json={"customer_id": cid}).json["assignments"] == [
            {"experiment": "hold", "enrolled": False, "reason": "paused"}
        ]
    assert exposures(db) == []


def test_stage_selects_the_live_experiments_of_that_stage_and_nothing_selects_all(api, db):
    seed(db, "buy-1", stage="purchase")
    seed(db, "buy-2", stage="purchase", status="paused")
    seed(db, "buy-3", stage="purchase", status="draft")
    seed(db, "keep-1", stage="retention")
    by_stage = api.post(URL, json={"customer_id": "c1", "stage": "purchase"}).json["assignments"]
    assert [(a["experiment"], a["enrolled"]) for a in by_stage] == [("buy-1", True), ("buy-2", False)]
    assert api.post(URL, json={"customer_id": "c1", "stage": "advocacy"}).json["assignments"] == []
    everything = api.post(URL, json={"customer_id": "c1"}).json["assignments"]
    assert [a["experiment"] for a in everything] == ["buy-1", "buy-2", "keep-1"]


def test_get_is_the_same_assignment_as_post(api, db):
    one = seed(db, "one")
    two = seed(db, "two", stage="retention")
    got = api.get(f"{URL}?customer_id=g1&experiment=one&experiment=two&experiment=zzz")
    assert got.status_code == 200 and got.headers["Cache-Control"] == "no-store"
    assert [a.get("variant") for a in got.json["assignments"]] == [
        ["control", "treatment"][place(one, "g1")],
        ["control", "treatment"][place(two, "g1")],
        None,
    ]
    posted = api.post(URL, json={"customer_id": "g1", "experiments": ["one", "two", "zzz"]})
    assert posted.json == got.json
    assert api.get(f"{URL}?customer_id=g1&stage=retention").json["assignments"][0]["experiment"] == "two"
    assert len(exposures(db)) == 2


# -- targeting ------------------------------------------------------------------------------------

TARGETING_CASES = [
    # (op, rule value, attribute value or MISSING, matches)
    ("eq", "FR", "FR", True),
    ("eq", "FR", "fr", False),
    ("eq", 3, 3.0, True),
    ("eq", 1, True, False),  # true/false is not a number
    ("eq", True, 1, False),
    ("eq", True, True, True),
    ("eq", "3", 3, False),
    ("ne", "FR", "DE", True),
    ("ne", "FR", "FR", False),
    ("ne", "FR", 5, False),  # a type mismatch never matches, even for ne
    ("ne", "FR", "MISSING", False),  # nor does a missing attribute
    ("in", ["FR", "DE"], "DE", True),
    ("in", ["FR", "DE"], "ES", False),
    ("in", [1, 2], 2.0, True),
    ("in", [1, 2], True, False),
    ("not_in", ["FR", "DE"], "ES", True),
    ("not_in", ["FR", "DE"], "FR", False),
    ("not_in", ["FR", "DE"], 7, False),
    ("not_in", ["FR"], "MISSING", False),
    ("lt", 5, 4, True),
    ("lt", 5, 5, False),
    ("lte", 5, 5, True),
    ("gt", 5, 5.5, True),
    ("gt", 5, 5, False),
    ("gte", 5, 5, True),
    ("gte", 5, "9", False),
    ("gte", 0, False, False),
    ("lt", 5, "MISSING", False),
]


@pytest.mark.parametrize(("op", "value", "actual", "matches"), TARGETING_CASES)
def test_targeting_rule_semantics(op, value, actual, matches):
    rules = [Rule("x", compile_rule(op, value))]
    attributes = {} if actual == "MISSING" else {"x": actual}
    assert targeting_matches(rules, attributes) is matches


def test_every_rule_must_match():
    rules = [Rule("country", compile_rule("eq", "FR")), Rule("visits", compile_rule("gte", 2))]
    assert targeting_matches(rules, {"country": "FR", "visits": 2})
    assert not targeting_matches(rules, {"country": "FR", "visits": 1})
    assert not targeting_matches(rules, {"country": "FR"})
    assert targeting_matches([], {})


def test_targeting_decides_enrolment_and_non_matching_customers_get_no_exposure(api, db):
    seed(
        db,
        "fr-only",
        targeting=[
            {"attribute": "country", "op": "eq", "value": "FR"},
            {"attribute": "visits", "op": "gte", "value": 2},
        ],
    )
    miss = api.post(URL, json={"customer_id": "t1", "attributes": {"country": "DE", "visits": 5}})
    assert miss.json["assignments"] == [{"experiment": "fr-only", "enrolled": False, "reason": "targeting"}]
    no_attributes = api.get(f"{URL}?customer_id=t1&experiment=fr-only")
    assert no_attributes.json["assignments"][0]["reason"] == "targeting"
    hit = api.post(URL, json={"customer_id": "t2", "attributes": {"country": "FR", "visits": 2}})
    assert hit.json["assignments"][0]["enrolled"] is True
    assert [e.customer_id for e in exposures(db)] == ["t2"]


def test_enrolled_customers_stay_when_targeting_changes(api, db):
    seed(db, "segment", targeting=[{"attribute": "plan", "op": "eq", "value": "pro"}])
    first = api.post(URL, json={"customer_id": "p1", "attributes": {"plan": "pro"}}).json
    with db.write() as session:
        session.execute(
            update(Experiment)
            .where(Experiment.key == "segment")
            .values(targeting=[{"attribute": "plan", "op": "eq", "value": "enterprise"}])
        )
        bump_version(session)
    assert api.post(URL, json={"customer_id": "p1", "attributes": {"plan": "pro"}}).json == first
    assert (
        api.post(URL, json={"customer_id": "p2", "attributes": {"plan": "pro"}}).json["assignments"][0]["reason"]
        == "targeting"
    )
    assert len(exposures(db)) == 1


# -- layers, forced variants, mismatches ------------------------------------------------------


def test_experiments_in_one_layer_never_share_a_customer(api, db):
    seed(db, "hero", layer="home", layer_ranges=[[0, 4000]])
    seed(db, "banner", layer="home", layer_ranges=[[4000, 7000]])
    seen = {"hero": 0, "banner": 0, "none": 0}
    for i in range(120):
        assignments = api.post(URL, json={"customer_id": f"v{i}"}).json["assignments"]
        enrolled = [a["experiment"] for a in assignments if a["enrolled"]]
        assert len(enrolled) <= 1
        assert all(a["reason"] == "layer" for a in assignments if not a["enrolled"])
        seen[enrolled[0] if enrolled else "none"] += 1
    assert min(seen.values()) > 10  # each range and the free space were all hit
    assert len(exposures(db)) == seen["hero"] + seen["banner"]


def test_forced_variant_is_served_marked_and_recorded_as_forced(api, db):
    seed(
        db,
        "qa-test",
        traffic=0.1,
        targeting=[{"attribute": "country", "op": "eq", "value": "FR"}],
        forced={"qa-anna": "treatment", "qa-bob": "control"},
    )
    anna = api.post(URL, json={"customer_id": "qa-anna", "attributes": {"country": "US"}}).json["assignments"]
    bob = api.post(URL, json={"customer_id": "qa-bob"}).json["assignments"]
    assert anna == [
        {"experiment": "qa-test", "variant": "treatment", "stage": "purchase", "enrolled": True, "forced": True}
    ]
    assert bob[0]["variant"] == "control" and bob[0]["forced"] is True
    assert {(e.customer_id, variant_key(db, e.variant_id), e.forced) for e in exposures(db)} == {
        ("qa-anna", "treatment", True),
        ("qa-bob", "control", True),
    }
    assert api.post(URL, json={"customer_id": "qa-anna"}).json["assignments"] == anna  # repeat: same, no new row
    assert len(exposures(db)) == 2


def test_a_changed_recorded_variant_is_served_and_counted_as_a_mismatch(api, db):
    split = seed(db, "edited")
    cid = customer_where(split, lambda p: p == 0)
    assert api.post(URL, json={"customer_id": cid}).json["assignments"][0]["variant"] == "control"
    with db.write() as session:
        other = session.scalar(select(Variant.id).where(Variant.key == "treatment"))
        session.execute(update(Exposure).where(Exposure.customer_id == cid).values(variant_id=other))
    for expected_mismatches in (1, 2):
        assert api.post(URL, json={"customer_id": cid}).json["assignments"][0]["variant"] == "treatment"
        [exposure] = exposures(db)
        assert exposure.mismatches == expected_mismatches


def test_a_customer_forced_after_exposure_sees_the_forced_variant_and_counts_a_mismatch(api, db):
    split = seed(db, "late-qa")
    cid = customer_where(split, lambda p: p == 0)
    api.post(URL, json={"customer_id": cid})
    with db.write() as session:
        session.execute(
            update(Experiment).where(Experiment.key == "late-qa").values(forced_variants={cid: "treatment"})
        )
        bump_version(session)
    served = api.post(URL, json={"customer_id": cid}).json["assignments"][0]
    assert (served["variant"], served["forced"]) == ("treatment", True)
    [exposure] = exposures(db)
    assert (variant_key(db, exposure.variant_id), exposure.forced, exposure.mismatches) == ("control", False, 1)


def test_outside_layer_sentinel_is_what_the_service_reports_as_layer(api, db):
    split = seed(db, "narrow", layer="l", layer_ranges=[[0, 100]])
    cid = customer_where(split, lambda p: p == OUTSIDE_LAYER)
    assert api.post(URL, json={"customer_id": cid}).json["assignments"][0]["reason"] == "layer"


# -- access -----------------------------------------------------------------------------------------


def test_assign_needs_a_client_key(client, admin_key, client_key, db, login):
    seed(db, "x")
    assert client.post(URL, json={"customer_id": "a"}).status_code == 401
    wrong = client.post(URL, json={"customer_id": "a"}, headers={"Authorization": f"Bearer {admin_key}"})
    assert (wrong.status_code, wrong.json["error"]) == (403, "forbidden")
    assert client.get(f"{URL}?customer_id=a", headers={"Authorization": "Bearer xp_nope"}).status_code == 401
    login("admin")
    assert client.post(URL, json={"customer_id": "a"}).status_code == 403  # a web session is not a client app
    assert exposures(db) == []


def test_a_client_key_cannot_reach_admin_routes(client_api):
    for path in ("/api/v1/experiments", "/api/v1/experiments/x"):
        response = client_api.get(path)
        assert (response.status_code, response.json["error"]) == (403, "forbidden")


# -- bad input ----------------------------------------------------------------------------------------

BAD_BODIES = [
    ({}, "customer_id"),
    ({"customer_id": ""}, "customer_id"),
    ({"customer_id": "x" * 257}, "customer_id"),
    ({"customer_id": 42}, "customer_id"),
    ({"customer_id": None}, "customer_id"),
    ({"customer_id": "a\x00b"}, "customer_id"),
    ({"customer_id": "a", "attributes": ["country", "FR"]}, "attributes"),
    ({"customer_id": "a", "attributes": "country=FR"}, "attributes"),
    ({"customer_id": "a", "attributes": {"nested": {"a": 1}}}, "attributes.nested"),
    ({"customer_id": "a", "attributes": {"list": [1]}}, "attributes.list"),
    ({"customer_id": "a", "attributes": {"none": None}}, "attributes.none"),
    ({"customer_id": "a", "attributes": {"long": "x" * 257}}, "attributes.long"),
    ({"customer_id": "a", "attributes": {"": 1}}, "attributes"),
    ({"customer_id": "a", "attributes": {f"k{i}": i for i in range(51)}}, "attributes"),
    ({"customer_id": "a", "experiments": "one"}, "experiments"),
    ({"customer_id": "a", "experiments": []}, "experiments"),
    ({"customer_id": "a", "experiments": [1]}, "experiments.0"),
    ({"customer_id": "a", "experiments": ["k"] * 101}, "experiments"),
    ({"customer_id": "a", "stage": 3}, "stage"),
    ({"customer_id": "a", "stage": "purchase", "experiments": ["x"]}, "stage"),
    ({"customer_id": "a", "customer": "b"}, "customer"),
    ({"customer_id": "a", "attributes": {}, "variant": "b"}, "variant"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_malformed_bodies_are_400_naming_the_field(api, db, body, field):
    response = api.post(URL, json=body)
    assert response.status_code == 400
    assert response.json["error"] == "validation_failed"
    assert field in response.json["fields"]
    assert exposures(db) == []


@pytest.mark.parametrize(
    ("data", "content_type", "code"),
    [
        ('{"customer_id": "a"}', "text/plain", "invalid_content_type"),
        ("customer_id=a", "application/x-www-form-urlencoded", "invalid_content_type"),
        ('{"customer_id": ', "application/json", "malformed_json"),
        ('["customer_id"]', "application/json", "validation_failed"),
        ('{"customer_id": "a", "attributes": {"x": NaN}}', "application/json", "validation_failed"),
        ('{"customer_id": "a", "attributes": {"x": Infinity}}', "application/json", "validation_failed"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_400(client_api, data, content_type, code):
    response = client_api.client.post(URL, data=data, content_type=content_type, headers=client_api.headers())
    assert (response.status_code, response.json["error"]) == (400, code)
    assert response.json["message"]
    assert_matches_openapi(response)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("", "customer_id"),
        ("experiment=x", "customer_id"),
        ("customer_id=a&attributes=x", "attributes"),
        ("customer_id=a&experiment=x&stage=y", "stage"),
        (f"customer_id={'x' * 257}", "customer_id"),
    ],
)
def test_bad_query_strings_are_400(api, query, field):
    response = api.get(f"{URL}?{query}")
    assert response.status_code == 400 and field in response.json["fields"]


def test_unusual_but_valid_text_is_stored_as_given(api, db):
    seed(db, "x")
    attributes = {"name": "Zoë 🙂", "quote": "'\"; --"}  # a NUL is refused (test_hostile_input)
    response = api.post(URL, json={"customer_id": "顧客:1/ü", "attributes": attributes})
    assert response.json["assignments"][0]["enrolled"] is True
    [exposure] = exposures(db)
    assert (exposure.customer_id, exposure.attributes) == ("顧客:1/ü", attributes)


def test_an_oversized_body_is_413_json(client_api, app):
    limit = app.config["MAX_CONTENT_LENGTH"]
    response = client_api.post(URL, json={"customer_id": "a", "attributes": {"x": "y" * limit}})
    assert (response.status_code, response.json["error"]) == (413, "payload_too_large")


def test_an_unusable_stored_definition_is_served_as_not_running_and_spares_the_others(api, db, caplog):
    seed(db, "healthy")
    seed(db, "mangled", targeting=[{"attribute": "age", "op": "gt", "value": "old"}])  # bypassed the parser
    response = api.post(URL, json={"customer_id": "c1", "experiments": ["mangled", "healthy"]})
    assert response.status_code == 200
    assert response.json["assignments"][0] == {"experiment": "mangled", "enrolled": False, "reason": "not_running"}
    assert response.json["assignments"][1]["enrolled"] is True
    assert "mangled" in caplog.text
