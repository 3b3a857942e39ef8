"""History a person can read: lifecycle entries as sentences, updates as old → new
values in the units the forms use, one actor format (a person's e-mail, a key's
name) on the experiment and journey pages, while the API keeps the stored JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from expplatform.history import actor_label, ago, describe_change, duration, history_lines
from expplatform.models import AuditEntry

from .conftest import sign_in

AT = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def _entry(action: str, details: dict | None = None, actor: str = "user:demo@example.com") -> AuditEntry:
    return AuditEntry(at=AT, actor=actor, action=action, details=details or {}, experiment_key="checkout")


@pytest.mark.parametrize(
    ("actor", "label"),
    [
        ("user:demo@example.com", "demo@example.com"),
        ("key:xp_AbCdEfGhI", "key ci-deploy"),
        ("key:xp_unknown1", "key xp_unknown1…"),  # a key deleted since: its prefix
        ("cli", "the command line"),
        ("demo", "the demo setup"),
    ],
)
def test_one_actor_format(actor, label):
    assert actor_label(actor, {"xp_AbCdEfGhI": "ci-deploy"}) == label


@pytest.mark.parametrize(
    ("action", "details", "sentence"),
    [
        ("started", {"from": "draft", "to": "running"}, "Started by demo@example.com"),
        ("paused", {"from": "running", "to": "paused"}, "Paused by demo@example.com"),
        ("resumed", {"from": "paused", "to": "running"}, "Resumed by demo@example.com"),
        ("stopped", {"from": "running", "to": "stopped"}, "Stopped by demo@example.com"),
        ("created", {}, "Created by demo@example.com"),
        ("created", {"cloned_from": "checkout"}, "Created by demo@example.com as the next iteration of checkout"),
        ("cloned", {"to": "checkout-v2"}, "Cloned by demo@example.com as checkout-v2"),
        ("updated", {"changes": {}}, "Updated by demo@example.com"),
    ],
)
def test_lifecycle_entries_are_sentences(action, details, sentence):
    (line,) = history_lines([_entry(action, details)])
    assert line.sentence == sentence and line.at == AT


@pytest.mark.parametrize(
    ("name", "change", "lines"),
    [
        ("traffic", {"from": 0.5, "to": 0.8}, ["Traffic 50% → 80%"]),
        ("traffic", {"from": 0.125, "to": 1.0}, ["Traffic 12.5% → 100%"]),
        (
            "variants",
            {
                "from": [
                    {"key": "control", "weight": 0.5, "control": True, "description": "grey"},
                    {"key": "green", "weight": 0.5, "control": False, "description": "green"},
                ],
                "to": [
                    {"key": "control", "weight": 0.2, "control": True, "description": "grey"},
                    {"key": "green", "weight": 0.8, "control": False, "description": "bright green"},
                ],
            },
            ["Weights control 50%, green 50% → control 20%, green 80%", "Description of green changed"],
        ),
        (
            "targeting",
            {
                "from": [],
                "to": [
                    {"attribute": "age", "op": "gt", "value": 30},
                    {"attribute": "os", "op": "in", "value": ["ios", "android"]},
                ],
            },
            ["Targeting everyone → age > 30 and os in ios, android"],
        ),
        ("name", {"from": "Green button", "to": "Greener button"}, ["Name “Green button” → “Greener button”"]),
        ("stages", {"from": ["cart", "purchase"], "to": ["purchase"]}, ["Measured stages cart, purchase → purchase"]),
        ("target_stage", {"from": "cart", "to": "purchase"}, ["Stage under test cart → purchase"]),
        (
            "decision",
            {"from": {"credible_level": 0.95, "min_exposed": 100}, "to": {"credible_level": 0.9, "min_exposed": 1000}},
            ["Credible level 95% → 90%", "Customers per variant before a call 100 → 1,000"],
        ),
        ("layer_share", {"from": 0.2, "to": 0.3}, ["Share of the layer 20% → 30%"]),
        (
            "satisfaction_scale",
            {"from": {"min": 1, "max": 5}, "to": {"min": 0, "max": 10}},
            ["Rating scale 1\u20135 → 0\u201310"],
        ),
        ("forced_variants", {"from": {}, "to": {"qa-1": "green"}}, ["Forced (QA) customers 0 → 1"]),
        (
            "stages",
            {
                "from": [{"key": "cart", "name": "Cart"}, {"key": "purchase", "name": "Buy"}],
                "to": [{"key": "cart", "name": "Basket"}, {"key": "purchase", "name": "Buy"}],
            },
            ["Stages: cart edited"],
        ),
        (
            "personas",
            {"from": [{"key": "loyal"}], "to": [{"key": "loyal"}, {"key": "new"}]},
            ["Personas loyal → loyal, new"],
        ),
        ("something_new", {"from": 1, "to": 2}, ["Something new 1 → 2"]),
    ],
)
def test_updates_list_old_and_new_values_in_the_users_units(name, change, lines):
    assert describe_change(name, change) == lines


def test_durations_and_ages_read_as_people_say_them():
    assert [duration(s) for s in (None, 8.4, 125, 3600, 3840)] == ["—", "8 s", "2 min 5 s", "1 h", "1 h 4 min"]
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    moments = [
        None,
        now,
        now.replace(hour=11, minute=55),
        now.replace(hour=9),
        now.replace(day=1),
        now.replace(month=1),
    ]
    assert [ago(m, now) for m in moments] == ["never", "just now", "5 min ago", "3 h ago", "2 days ago", "2026-01-03"]


def test_the_experiment_page_tells_its_history_in_sentences_with_one_actor_format(app, client, make_user, make_key):
    key = make_key("admin", "ci-deploy")
    bearer = {"Authorization": f"Bearer {key}"}
    definition = {
        "key": "checkout",
        "name": "Green checkout button",
        "target_stage": "purchase",
        "variants": [{"key": "control", "weight": 0.5}, {"key": "green", "weight": 0.5}],
        "traffic": 0.5,
    }
    assert client.post("/api/v1/experiments", json=definition, headers=bearer).status_code == 201
    sign_in(client, app, make_user("editor", "demo@example.com"))
    assert client.post("/experiments/checkout/start").status_code == 302
    patched = client.patch("/api/v1/experiments/checkout", json={"traffic": 0.8}, headers=bearer)
    assert patched.status_code == 200, patched.json
    assert client.post("/experiments/checkout/pause").status_code == 302

    page = client.get("/experiments/checkout").text
    history = page[page.index('id="history"') :]
    sentences = ["Paused by demo@example.com", "Updated by key ci-deploy", "Started by demo@example.com"]
    positions = [history.index(sentence) for sentence in [*sentences, "Created by key ci-deploy"]]
    assert positions == sorted(positions)  # newest first
    assert "Traffic 50% → 80%" in history
    assert "user:" not in history and "key:" not in history and "&#34;from&#34;" not in history

    raw = client.get("/api/v1/experiments/checkout", headers=bearer).json["audit"]  # the API keeps what is stored
    assert raw[0]["actor"] == "user:demo@example.com" and raw[0]["details"] == {"from": "running", "to": "paused"}
    assert raw[1]["actor"] == f"key:{key[:12]}" and raw[1]["details"]["changes"]["traffic"] == {"from": 0.5, "to": 0.8}


def test_the_journey_page_tells_its_history_too(app, client, make_user, make_key):
    key = make_key("admin", "ci-deploy")
    bearer = {"Authorization": f"Bearer {key}"}
    journey = {
        "key": "shop",
        "name": "Online shop",
        "stages": [{"key": "visit"}, {"key": "purchase", "goal": "Ordered"}],
        "personas": [{"key": "loyal", "name": "Loyal customer"}],
    }
    assert client.post("/api/v1/journeys", json=journey, headers=bearer).status_code == 201
    changed = client.patch("/api/v1/journeys/shop", json={"name": "Web shop"}, headers=bearer)
    assert changed.status_code == 200, changed.json
    sign_in(client, app, make_user("viewer", "vi@example.com"))
    page = client.get("/journeys/shop").text
    history = page[page.index('id="history"') :]
    assert history.index("Updated by key ci-deploy") < history.index("Created by key ci-deploy")
    assert "Name “Online shop” → “Web shop”" in history
