"""The experiment pages: the form, inline validation, lifecycle buttons, clone, roles,
escaping, and the promise that the form, the JSON API and a TOML file store the same
experiment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from expplatform import experiments as service
from expplatform.cli import main
from expplatform.definitions import dump_toml, parse_definition
from expplatform.models import Experiment

from .conftest import make_test_app, sign_in

DEFINITION = {
    "key": "checkout-copy",
    "name": "Checkout copy",
    "hypothesis": "Plain words at checkout lift purchases.",
    "stages": ["awareness", "consideration", "purchase", "retention", "advocacy"],
    "target_stage": "purchase",
    "traffic": 0.333,
    "variants": [
        {"key": "current", "description": "Today's copy", "weight": 0.25, "control": False},
        {"key": "plain", "description": "Plain words", "weight": 0.5, "control": True},
        {"key": "bold", "description": "Bold CTA", "weight": 0.25, "control": False},
    ],
    "targeting": [
        {"attribute": "persona", "op": "in", "value": ["returning", "loyal"]},
        {"attribute": "platform", "op": "ne", "value": "android"},
        {"attribute": "age", "op": "gte", "value": 18},
        {"attribute": "zip", "op": "eq", "value": "02134"},
        {"attribute": "beta", "op": "eq", "value": True},
    ],
    "satisfaction_scale": {"min": 0, "max": 10},
    "layer": "checkout",
    "layer_share": 0.4,
    "decision": {"ship_probability": 0.9, "min_exposed": 250, "max_expected_loss": 0.002},
    "prior": {"conversion_alpha": 2.0, "conversion_beta": 8.0},
    "forced_variants": {"qa-alice": "bold", "qa-bob": "plain"},
}

FORM = {
    "key": "checkout-copy",
    "name": "Checkout copy",
    "hypothesis": "Plain words at checkout lift purchases.",
    "stages": "awareness, consideration, purchase, retention, advocacy",
    "target_stage": "purchase",
    "variants-0-key": "current",
    "variants-0-description": "Today's copy",
    "variants-0-weight": "1",
    "variants-1-key": "plain",
    "variants-1-description": "Plain words",
    "variants-1-weight": "2",
    "variants-2-key": "bold",
    "variants-2-description": "Bold CTA",
    "variants-2-weight": "1",
    "control": "1",
    "traffic_percent": "33.3",
    "targeting-0-attribute": "persona",
    "targeting-0-op": "in",
    "targeting-0-value": "returning, loyal",
    "targeting-1-attribute": "platform",
    "targeting-1-op": "ne",
    "targeting-1-value": "android",
    "targeting-2-attribute": "age",
    "targeting-2-op": "gte",
    "targeting-2-value": "18",
    "targeting-3-attribute": "zip",
    "targeting-3-op": "eq",
    "targeting-3-value": '"02134"',
    "targeting-4-attribute": "beta",
    "targeting-4-op": "eq",
    "targeting-4-value": "true",
    "scale_min": "0",
    "scale_max": "10",
    "layer": "checkout",
    "layer_share_percent": "40",
    "decision_ship_probability": "0.9",
    "decision_min_exposed": "250",
    "decision_max_expected_loss": "0.002",
    "prior_conversion_alpha": "2",
    "prior_conversion_beta": "8",
    "forced_variants": "qa-alice = bold\nqa-bob = plain\n",
}


def _stored(db, key: str) -> dict:
    with db.sessionmaker() as session:
        return service.export_definition(service.get_experiment(session, key))


def _errors(html: str) -> list[str]:
    return re.findall(r'class="field-error" role="alert">([^<]*)<', html)


@pytest.fixture
def editor(client, login):
    login("editor")
    return client


def test_form_api_and_toml_store_identical_experiments(editor, db, admin_api, runner, tmp_path):
    created = editor.post("/experiments/new", data=FORM)
    assert created.status_code == 302, _errors(created.text)
    from_form = _stored(db, "checkout-copy")

    via_api = admin_api.post("/api/v1/experiments", json={**DEFINITION, "key": "checkout-copy-api"})
    assert via_api.status_code == 201, via_api.json
    from_api = _stored(db, "checkout-copy-api")

    path = Path(tmp_path / "file.toml")
    path.write_text(dump_toml({**DEFINITION, "key": "checkout-copy-toml"}))
    applied = runner.invoke(main, ["experiments", "apply", str(path)])
    assert applied.exit_code == 0, applied.output
    from_file = _stored(db, "checkout-copy-toml")

    def without_key(data: dict) -> dict:
        return {name: value for name, value in data.items() if name != "key"}

    assert without_key(from_form) == without_key(from_api) == without_key(from_file)
    assert from_form["traffic"] == 0.333
    assert [v["weight"] for v in from_form["variants"]] == [0.25, 0.5, 0.25]
    assert from_form["targeting"][3]["value"] == "02134" and from_form["targeting"][4]["value"] is True


def test_edit_form_shows_the_stored_definition_and_saves_it_unchanged(editor, db):
    editor.post("/experiments/new", data=FORM)
    before = _stored(db, "checkout-copy")
    page = editor.get("/experiments/checkout-copy/edit")
    assert page.status_code == 200
    # Re-submit exactly what the edit page shows: nothing may change.
    fields = dict(re.findall(r'<input[^>]*?name="([^"]+)"[^>]*?value="([^"]*)"', page.text))
    fields.update(dict(re.findall(r'<textarea[^>]*?name="([^"]+)"[^>]*>\s*([^<]*)</textarea>', page.text)))
    for name, op in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>.*?<option selected value="([^"]+)"', page.text, re.S):
        fields[name] = op
    fields["control"] = re.search(r'name="control" value="(\d)"[^>]*checked', page.text).group(1)
    import html

    fields = {name: html.unescape(value) for name, value in fields.items() if name != "csrf_token"}
    saved = editor.post("/experiments/checkout-copy/edit", data=fields, follow_redirects=True)
    assert "No changes." in saved.text, _errors(saved.text)
    assert _stored(db, "checkout-copy") == before


def test_invalid_form_keeps_what_was_typed_and_says_what_is_wrong(editor, db):
    data = {**FORM, "variants-1-weight": "lots", "target_stage": "checkout", "traffic_percent": "150", "key": "Bad Key"}
    response = editor.post("/experiments/new", data=data)
    assert response.status_code == 422
    messages = _errors(response.text)
    assert any("positive number" in m for m in messages)
    assert any("one of the stages" in m for m in messages)
    assert any("slug" in m or "lowercase" in m for m in messages)
    assert len(messages) >= 4
    assert 'value="lots"' in response.text and 'value="checkout"' in response.text and 'value="150"' in response.text
    with db.sessionmaker() as session:
        assert session.query(Experiment).count() == 0


def test_add_row_buttons_grow_the_form_without_saving(editor, db):
    response = editor.post("/experiments/new", data={**FORM, "add_variant": "1"})
    assert response.status_code == 200
    assert 'name="variants-3-key"' in response.text and 'value="bold"' in response.text
    response = editor.post("/experiments/new", data={**FORM, "add_rule": "1"})
    assert 'name="targeting-5-attribute"' in response.text
    with db.sessionmaker() as session:
        assert session.query(Experiment).count() == 0


def test_lifecycle_buttons_walk_the_states_with_confirmation(editor, db):
    editor.post("/experiments/new", data={**FORM, "layer": "", "layer_share_percent": ""})
    detail = editor.get("/experiments/checkout-copy")
    assert 'href="/experiments/checkout-copy/start"' in detail.text
    confirm = editor.get("/experiments/checkout-copy/start")
    assert confirm.status_code == 200 and "frozen" in confirm.text
    for action, status in [("start", "running"), ("pause", "paused"), ("resume", "running"), ("stop", "stopped")]:
        done = editor.post(f"/experiments/checkout-copy/{action}", follow_redirects=True)
        assert f"is now {status}" in done.text
    with db.sessionmaker() as session:
        stored = service.get_experiment(session, "checkout-copy")
        assert stored.status == "stopped" and stored.started_at and stored.stopped_at
        actions = [entry.action for entry in service.audit_log(session, stored)]
    assert actions == ["stopped", "resumed", "paused", "started", "created"]
    again = editor.post("/experiments/checkout-copy/start", follow_redirects=True)
    assert "Cannot start" in again.text
    assert editor.get("/experiments/checkout-copy/edit").status_code == 302
    history = editor.get("/experiments/checkout-copy")
    assert "user:editor-" in history.text and "stopped" in history.text


def test_started_experiment_form_freezes_fields_and_refuses_lower_traffic(editor, db):
    editor.post("/experiments/new", data={**FORM, "layer": "", "layer_share_percent": ""})
    editor.post("/experiments/checkout-copy/start")
    page = editor.get("/experiments/checkout-copy/edit")
    assert re.search(r'name="variants-0-weight"[^>]*readonly|readonly[^>]*name="variants-0-weight"', page.text)
    lower = editor.post(
        "/experiments/checkout-copy/edit",
        data={**FORM, "layer": "", "layer_share_percent": "", "traffic_percent": "10"},
    )
    assert lower.status_code == 409 and any("at least 0.333" in m for m in _errors(lower.text))
    renamed = editor.post(
        "/experiments/checkout-copy/edit",
        data={
            **FORM,
            "layer": "",
            "layer_share_percent": "",
            "name": "Checkout copy, round 1",
            "traffic_percent": "50",
        },
    )
    assert renamed.status_code == 302
    stored = _stored(db, "checkout-copy")
    assert stored["name"] == "Checkout copy, round 1" and stored["traffic"] == 0.5


def test_clone_makes_a_new_draft_with_the_same_definition(editor, db):
    editor.post("/experiments/new", data=FORM)
    response = editor.post("/experiments/checkout-copy/clone")
    assert response.status_code == 302 and response.location == "/experiments/checkout-copy-v2/edit"
    original, clone = _stored(db, "checkout-copy"), _stored(db, "checkout-copy-v2")
    assert {**original, "key": "x"} == {**clone, "key": "x"}


def test_list_filters_and_pages(editor, db):
    with db.write() as session:
        for number in range(30):
            definition = parse_definition(
                {
                    **DEFINITION,
                    "key": f"exp-{number:02d}",
                    "layer": None,
                    "layer_share": None,
                    "target_stage": "purchase" if number % 2 else "retention",
                }
            )
            service.create_experiment(session, definition, "tests")
        service.change_status(session, "exp-03", "start", "tests")
    first = editor.get("/experiments")
    assert first.text.count('class="status status-') == 25 and "page 1 of 2" in first.text
    assert "exp-00" not in first.text and "exp-29" in first.text  # newest first
    assert "exp-00" in editor.get("/experiments?page=2").text
    running = editor.get("/experiments?status=running")
    assert running.text.count('class="status status-') == 1 and "exp-03" in running.text
    retention = editor.get("/experiments?stage=retention")
    assert retention.text.count('class="status status-') == 15


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/experiments/new"),
        ("post", "/experiments/new"),
        ("get", "/experiments/checkout-copy/edit"),
        ("post", "/experiments/checkout-copy/edit"),
        ("get", "/experiments/checkout-copy/start"),
        ("post", "/experiments/checkout-copy/start"),
        ("post", "/experiments/checkout-copy/clone"),
    ],
)
def test_viewers_read_but_cannot_change(client, login, db, method, path):
    with db.write() as session:
        service.create_experiment(
            session, parse_definition({**DEFINITION, "layer": None, "layer_share": None}), "tests"
        )
    login("viewer")
    assert client.get("/experiments").status_code == 200
    assert client.get("/experiments/checkout-copy").status_code == 200
    assert getattr(client, method)(path).status_code == 403
    with db.sessionmaker() as session:
        assert service.get_experiment(session, "checkout-copy").status == "draft"


@pytest.mark.parametrize("path", ["/experiments", "/experiments/new", "/experiments/anything"])
def test_logged_out_visitors_are_sent_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302 and response.location.startswith("/login?next=")


def test_unknown_experiment_is_404(editor):
    assert editor.get("/experiments/nope").status_code == 404
    assert editor.post("/experiments/nope/start").status_code == 404


def test_user_text_is_escaped_everywhere(editor, db):
    script = "<script>alert('x')</script>"
    response = editor.post(
        "/experiments/new",
        data={
            **FORM,
            "name": script,
            "hypothesis": script,
            "variants-0-description": script,
            "layer": "",
            "layer_share_percent": "",
        },
    )
    assert response.status_code == 302
    for page in (
        "/experiments",
        "/experiments/checkout-copy",
        "/experiments/checkout-copy/edit",
        "/experiments/checkout-copy/stop",
    ):
        html = editor.get(page).text
        assert script not in html, page
        assert "&lt;script&gt;" in html, page


def test_form_without_csrf_token_is_refused(database_url, tmp_path, make_user):
    app = make_test_app(database_url, tmp_path, wtf_csrf_enabled=True)
    client = app.test_client()
    user = make_user("editor", "csrf@example.com")
    sign_in(client, app, user)
    refused = client.post("/experiments/new", data=FORM)
    assert refused.status_code == 400 and "expired" in refused.text and "CSRF token is missing" in refused.text
    page = client.get("/experiments/new")
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text).group(1)
    accepted = client.post("/experiments/new", data={**FORM, "csrf_token": token})
    assert accepted.status_code == 302
    assert client.post("/experiments/checkout-copy/start").status_code == 400
    app.extensions["db"].engine.dispose()
