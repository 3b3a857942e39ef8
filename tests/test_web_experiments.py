"""The experiment pages: the form, inline validation, lifecycle buttons, clone, roles,
escaping, and the promise that the form, the JSON API and a TOML file store the same
experiment."""

from __future__ import annotations

import html
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


def _shown_fields(page: str) -> dict[str, str | list[str]]:
    """What a browser would post from a form page, as shown: text inputs, hidden
    inputs, checked boxes and radios, textareas and each select's selected option
    (an input's name repeated gives a list)."""
    fields: dict[str, list[str]] = {}

    def add(name: str, value: str) -> None:
        fields.setdefault(name, []).append(html.unescape(value))

    for tag in re.findall(r"<input[^>]*>", page):
        name = re.search(r'name="([^"]+)"', tag)
        if name is None or name.group(1) == "csrf_token" or " disabled" in tag:
            continue
        kind = re.search(r'type="([^"]+)"', tag)
        if kind and kind.group(1) in ("checkbox", "radio") and " checked" not in tag:
            continue
        value = re.search(r'value="([^"]*)"', tag)
        add(name.group(1), value.group(1) if value else "")
    for name, text in re.findall(r'<textarea[^>]*?name="([^"]+)"[^>]*>\s*([^<]*)</textarea>', page):
        add(name, text)
    for tag, options in re.findall(r"(<select[^>]*>)(.*?)</select>", page, re.S):
        selected = re.search(r'<option selected value="([^"]*)"', options)
        if " disabled" not in tag and selected:
            add(re.search(r'name="([^"]+)"', tag).group(1), selected.group(1))
    return {name: values[0] if len(values) == 1 else values for name, values in fields.items()}


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
    # The stored definition is shown: its journey, stages and questions selected.
    fields = _shown_fields(page.text)
    assert fields["journey"] == before["journey"] == "default"
    assert fields["measured"] == before["stages"] and fields["target_stage"] == "purchase"
    assert [fields[f"question-{stage}"] for stage in before["stages"]] == before["metrics"]
    assert fields["control"] == "1" and fields["traffic_percent"] == "33.3"
    # Re-submit exactly what the edit page shows: nothing may change.
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
    assert "Stopped by editor-" in history.text and "Started by editor-" in history.text


def test_started_experiment_form_freezes_fields_and_refuses_lower_traffic(editor, db):
    editor.post("/experiments/new", data={**FORM, "layer": "", "layer_share_percent": ""})
    editor.post("/experiments/checkout-copy/start")
    page = editor.get("/experiments/checkout-copy/edit")
    assert re.search(r'name="variants-0-weight"[^>]*readonly|readonly[^>]*name="variants-0-weight"', page.text)
    # The journey, the stage under test, the measured stages and their questions are
    # shown disabled, their values carried by hidden inputs.
    assert re.search(r'<select[^>]*disabled[^>]*name="journey"|<select[^>]*name="journey"[^>]*disabled', page.text)
    assert re.search(r'<select[^>]*name="question-purchase"[^>]*disabled', page.text)
    assert re.search(r'<input type="checkbox" name="measured" value="purchase"[^>]*checked disabled', page.text)
    shown = _shown_fields(page.text)
    assert shown["journey"] == "default" and shown["question-purchase"] == "purchase-rating"
    lower = editor.post("/experiments/checkout-copy/edit", data={**shown, "traffic_percent": "10"})
    assert lower.status_code == 409 and any("at least 33.3%" in m for m in _errors(lower.text))
    # The stored weights come back rounded for display (three thirds); saving them
    # unchanged says nothing about normalising.
    unchanged = editor.post("/experiments/checkout-copy/edit", data=shown, follow_redirects=True)
    assert "No changes." in unchanged.text and "normalised" not in unchanged.text
    renamed = editor.post(
        "/experiments/checkout-copy/edit",
        data={**shown, "name": "Checkout copy, round 1", "traffic_percent": "50"},
    )
    assert renamed.status_code == 302, _errors(renamed.text)
    stored = _stored(db, "checkout-copy")
    assert stored["name"] == "Checkout copy, round 1" and stored["traffic"] == 0.5
    # A tampered post cannot change what is frozen.
    moved = editor.post("/experiments/checkout-copy/edit", data={**shown, "measured": ["purchase"]})
    assert moved.status_code == 409 and "frozen since the experiment started" in _errors(moved.text)


def test_clone_makes_a_new_draft_with_the_same_definition(editor, db):
    editor.post("/experiments/new", data=FORM)
    response = editor.post("/experiments/checkout-copy/clone")
    assert response.status_code == 302 and response.location == "/experiments/checkout-copy-v2/edit"
    original, clone = _stored(db, "checkout-copy"), _stored(db, "checkout-copy-v2")
    assert {**original, "key": "x", "name": "x"} == {**clone, "key": "x", "name": "x"}
    assert clone["name"] == "Checkout copy (iteration 2)"
    editor.post("/experiments/checkout-copy-v2/clone")
    assert _stored(db, "checkout-copy-v3")["name"] == "Checkout copy (iteration 3)"


def test_a_taken_key_is_said_with_every_other_error(editor, db):
    editor.post("/experiments/new", data=FORM)
    again = editor.post("/experiments/new", data={**FORM, "traffic_percent": "0"})
    errors = _errors(again.text)
    assert again.status_code == 422
    assert "is taken" in errors and any("percentage" in m for m in errors), errors


def test_form_errors_speak_the_forms_units_and_operators(editor, db):
    page = editor.post(
        "/experiments/new",
        data={**FORM, "traffic_percent": "150", "targeting-2-value": "adult", "layer": "", "layer_share_percent": ""},
    )
    errors = [html.unescape(message) for message in _errors(page.text)]
    assert page.status_code == 422
    assert "must be a percentage greater than 0 and at most 100" in errors
    assert any("must be a number for '≥'" in m for m in errors), errors
    assert not any("'gte'" in m or "at most 1" in m.replace("at most 100", "") for m in errors), errors


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


# -- experiments on a journey -----------------------------------------------------------

SHOP = {
    "key": "shop",
    "name": "Online shop",
    "stages": [
        {"key": "awareness"},
        {"key": "consideration", "name": "Looking around"},
        {"key": "purchase"},
        {"key": "advocacy"},
    ],
    "personas": [{"key": "loyal"}, {"key": "first-timer"}],
    "questions": [
        {"key": "effort", "text": "How easy was it to find?", "stage": "consideration", "scale": {"min": 1, "max": 7}},
        {"key": "checkout-csat", "text": "How was <checkout>?", "stage": "purchase", "scale": {"min": 1, "max": 5}},
        {"key": "checkout-ease", "text": "How easy was paying?", "stage": "purchase", "scale": {"min": 1, "max": 7}},
        {"key": "nps", "text": "Would you recommend us?", "stage": "advocacy", "scale": {"min": 0, "max": 10}},
    ],
}
OTHER = {"key": "other", "name": "Subscriptions", "stages": [{"key": "signup"}, {"key": "renewal"}]}

ON_SHOP = {
    "key": "one-page",
    "name": "One-page checkout",
    "journey": "shop",
    "shown_journey": "shop",
    "target_stage": "purchase",
    "measured": ["purchase", "advocacy"],
    "question-awareness": "none",
    "question-consideration": "effort",
    "question-purchase": "checkout-ease",
    "question-advocacy": "none",
    "variants-0-key": "control",
    "variants-0-weight": "1",
    "variants-1-key": "one-page",
    "variants-1-weight": "1",
    "control": "0",
    "traffic_percent": "100",
    "targeting-0-attribute": "persona",
    "targeting-0-op": "eq",
    "targeting-0-value": "loyal",
}


@pytest.fixture
def shop(admin_api):
    for body in (SHOP, OTHER):
        assert admin_api.post("/api/v1/journeys", json=body).status_code == 201


def test_the_new_form_offers_the_journeys_stages_and_questions(editor, shop):
    page = editor.get("/experiments/new?journey=shop&stage=purchase").text
    assert '<option selected value="shop">Online shop (shop)</option>' in page
    assert '<option value="other">Subscriptions (other)</option>' in page
    # The stage under test is a select of the journey's stages, by name.
    target = re.search(r'<select id="target_stage" name="target_stage">(.*?)</select>', page, re.S).group(1)
    assert re.findall(r'value="([^"]+)">([^<]+)<', target) == [
        ("awareness", "Awareness"),
        ("consideration", "Looking around"),
        ("purchase", "Purchase"),
        ("advocacy", "Advocacy"),
    ]
    assert '<option selected value="purchase">' in target
    # Every stage a checkbox (ticked by default), each with a select of its questions or none.
    assert re.findall(r'<input type="checkbox" name="measured" value="([^"]+)"[^>]*checked', page) == [
        "awareness",
        "consideration",
        "purchase",
        "advocacy",
    ]
    purchase = re.search(r'<select name="question-purchase"[^>]*>(.*?)</select>', page, re.S).group(1)
    assert re.findall(r'value="([^"]+)">([^<]+)<', purchase) == [
        ("none", "none: conversion only"),
        ("checkout-csat", "How was &lt;checkout&gt;? (1 to 5)"),
        ("checkout-ease", "How easy was paying? (1 to 7)"),
    ]
    assert '<option selected value="checkout-csat">' in purchase  # the stage's first question
    assert "satisfaction" not in page.lower() and 'name="scale_min"' not in page and 'name="stages"' not in page
    # Targeting suggests the persona attribute and the journey's personas as values.
    attributes = re.search(r'<datalist id="rule-attributes">(.*?)</datalist>', page, re.S).group(1)
    assert re.findall(r'value="([^"]+)"', attributes) == ["persona", "platform"]
    values = re.search(r'<datalist id="rule-values">(.*?)</datalist>', page, re.S).group(1)
    assert re.findall(r'value="([^"]+)"', values) == ["loyal", "first-timer"]
    assert page.count('list="rule-attributes"') == page.count('name="targeting-') // 3 > 0


def test_the_form_creates_an_experiment_on_a_chosen_journey_stage_and_question(editor, admin_api, shop, db):
    created = editor.post("/experiments/new", data=ON_SHOP)
    assert created.status_code == 302, _errors(created.text)
    stored = _stored(db, "one-page")
    assert (stored["journey"], stored["target_stage"]) == ("shop", "purchase")
    assert stored["stages"] == ["purchase", "advocacy"] and stored["metrics"] == ["checkout-ease"]
    # The same experiment through the API: identical exports.
    definition = {**stored, "key": "one-page-api"}
    assert admin_api.post("/api/v1/experiments", json=definition).status_code == 201
    assert {**_stored(db, "one-page-api"), "key": "x"} == {**stored, "key": "x"}


def test_the_detail_page_lists_measured_stages_with_their_questions_and_links_the_map(editor, shop):
    editor.post("/experiments/new", data={**ON_SHOP, "question-advocacy": "nps"})
    page = editor.get("/experiments/one-page").text
    assert '<a href="/journeys/shop">Online shop</a>' in page
    rows = re.findall(r"<tr>\s*<td>([^<]+) <code[^>]*>([^<]+)</code>.*?</tr>", page, re.S)
    assert [(name.strip(), key) for name, key in rows] == [("Purchase", "purchase"), ("Advocacy", "advocacy")]
    assert "How easy was paying?" in page and "1\N{EN DASH}7" in page and "0\N{EN DASH}10" in page
    assert "How was &lt;checkout&gt;?" not in page  # not the question measured


def test_a_stage_without_a_question_is_measured_by_conversion_only(editor, shop, db):
    created = editor.post("/experiments/new", data={**ON_SHOP, "question-purchase": "none"})
    assert created.status_code == 302, _errors(created.text)
    assert _stored(db, "one-page")["metrics"] == []
    assert "none: conversion only" in editor.get("/experiments/one-page").text


def test_choosing_another_journey_shows_its_stages_before_anything_is_saved(editor, shop, db):
    response = editor.post("/experiments/new", data={**ON_SHOP, "journey": "other"})
    assert response.status_code == 200
    assert "These are the stages of Subscriptions" in response.text
    fields = _shown_fields(response.text)
    assert fields["journey"] == fields["shown_journey"] == "other"
    assert fields["measured"] == ["signup", "renewal"] and fields["target_stage"] == "signup"
    assert fields["key"] == "one-page" and fields["variants-1-key"] == "one-page"  # the rest is kept
    with db.sessionmaker() as session:
        assert session.query(Experiment).count() == 0
    # The button does the same without changing the select.
    shown = editor.post("/experiments/new", data={**ON_SHOP, "pick_journey": "1"})
    assert shown.status_code == 200 and "These are the stages of Online shop" in shown.text
    created = editor.post("/experiments/new", data=fields)
    assert created.status_code == 302, _errors(created.text)
    assert _stored(db, "one-page")["stages"] == ["signup", "renewal"]


@pytest.mark.parametrize(
    ("changes", "name", "message"),
    [
        ({"measured": []}, "measured", "tick at least one stage to measure"),
        (
            {"measured": ["advocacy"]},
            "target_stage",
            "must be one of the stages measured: tick it, or test another stage",
        ),
        ({"question-advocacy": "checkout-csat"}, "question-advocacy", "is a second question at stage 'purchase'"),
        ({"question-purchase": "gone"}, "question-purchase", "'gone' is not a rating question of journey 'shop'"),
        ({"journey": "nope", "shown_journey": "nope"}, "journey", "no journey has the key 'nope'"),
    ],
)
def test_journey_errors_are_said_beside_the_right_box(editor, shop, db, changes, name, message):
    response = editor.post("/experiments/new", data={**ON_SHOP, **changes})
    assert response.status_code == 422
    error = re.search(rf'name="{re.escape(name)}".*?class="field-error" role="alert">([^<]*)<', response.text, re.S)
    assert error is not None and message in html.unescape(error.group(1)), _errors(response.text)
    with db.sessionmaker() as session:
        assert session.query(Experiment).count() == 0


def test_a_fresh_installation_offers_the_default_journey(editor, db):
    page = editor.get("/experiments/new").text
    assert '<option selected value="">Default journey: the five default stages, made when saved</option>' in page
    fields = _shown_fields(page)
    assert fields["measured"] == ["awareness", "consideration", "purchase", "retention", "advocacy"]
    data = {
        **fields,
        "key": "first",
        "name": "First",
        "target_stage": "purchase",
        "measured": ["purchase", "retention"],
    }
    created = editor.post("/experiments/new", data=data)
    assert created.status_code == 302, _errors(created.text)
    stored = _stored(db, "first")
    assert stored["journey"] == "default" and stored["stages"] == ["purchase", "retention"]
    assert stored["metrics"] == ["purchase-rating", "retention-rating"]  # 1-5, made with the journey


def test_the_edit_form_of_a_journey_experiment_saves_unchanged(editor, shop, db):
    editor.post("/experiments/new", data=ON_SHOP)
    before = _stored(db, "one-page")
    fields = _shown_fields(editor.get("/experiments/one-page/edit").text)
    assert fields["measured"] == ["purchase", "advocacy"] and fields["question-purchase"] == "checkout-ease"
    assert fields["question-advocacy"] == "none" and fields["question-consideration"] == "effort"
    saved = editor.post("/experiments/one-page/edit", data=fields, follow_redirects=True)
    assert "No changes." in saved.text, _errors(saved.text)
    assert _stored(db, "one-page") == before
    changed = editor.post("/experiments/one-page/edit", data={**fields, "question-advocacy": "nps"})
    assert changed.status_code == 302 and _stored(db, "one-page")["metrics"] == ["checkout-ease", "nps"]
