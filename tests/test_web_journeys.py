"""The journey form (/journeys/new, /journeys/<key>/edit): repeated rows that grow
without JavaScript, validation beside the boxes, frozen parts read-only with the
reason, roles, escaping, and the promise that the form, the JSON API and a TOML
file store the same journey."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from expplatform import journeys
from expplatform.cli import main
from expplatform.journey_definitions import journey_toml, parse_journey
from expplatform.models import Event, Journey

from .conftest import make_test_app, sign_in

FORM: dict[str, str] = {
    "key": "shop",
    "name": "Online shop",
    "description": "From first visit to recommending us.",
    "persona_attribute": "persona",
    "stages-0-key": "awareness",
    "stages-0-goal": "Visited",
    "stages-0-touchpoints": "ads\nsearch\n",
    "stages-1-key": "purchase",
    "stages-1-name": "Buying",
    "stages-1-goal": "Ordered",
    "stages-1-touchpoints": "cart\n\n  checkout  ",
    "stages-2-key": "advocacy",
    "personas-0-key": "loyal",
    "personas-0-name": "Loyal customer",
    "personas-0-description": "Orders often.",
    "personas-1-key": "first-timer",
    "questions-0-key": "shop-checkout",
    "questions-0-text": "How satisfied are you with checkout?",
    "questions-0-stage": "purchase",
    "questions-0-scale_min": "1",
    "questions-0-scale_max": "5",
    "questions-1-key": "shop-nps",
    "questions-1-text": "How likely are you to recommend us?",
    "questions-1-stage": "advocacy",
    "questions-1-scale_min": "0",
    "questions-1-scale_max": "10",
}

DEFINITION: dict[str, Any] = {
    "key": "shop",
    "name": "Online shop",
    "description": "From first visit to recommending us.",
    "stages": [
        {"key": "awareness", "goal": "Visited", "touchpoints": ["ads", "search"]},
        {"key": "purchase", "name": "Buying", "goal": "Ordered", "touchpoints": ["cart", "checkout"]},
        {"key": "advocacy"},
    ],
    "personas": [
        {"key": "loyal", "name": "Loyal customer", "description": "Orders often."},
        {"key": "first-timer"},
    ],
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


def _renamed(data: Any, key: str, old: str = "shop") -> Any:
    """A copy of the journey under another key, its question keys too (they are unique
    across journeys)."""
    if isinstance(data, dict):
        return {k: _renamed(v, key, old) for k, v in data.items()}
    if isinstance(data, list):
        return [_renamed(v, key, old) for v in data]
    if isinstance(data, str):
        return key if data == old else data.replace(f"{old}-", f"{key}-")
    return data


def _stored(db, key: str) -> dict[str, Any]:
    with db.sessionmaker() as session:
        return journeys.export_journey(journeys.get_journey(session, key))


def _errors(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'class="field-error" role="alert">([^<]*)<', page)]


def _error_at(page: str, name: str) -> str | None:
    found = re.search(rf'name="{re.escape(name)}".*?class="field-error" role="alert">([^<]*)<', page, re.S)
    return html.unescape(found.group(1)) if found else None


def _shown_fields(page: str) -> dict[str, str]:
    """What a browser would post from the page: inputs (checked boxes only), textareas,
    selected options of enabled selects."""
    fields: dict[str, str] = {}
    for tag in re.findall(r"<input[^>]*>", page):
        name = re.search(r'name="([^"]+)"', tag)
        if name is None or name.group(1) == "csrf_token" or " disabled" in tag:
            continue
        if 'type="checkbox"' in tag and " checked" not in tag:
            continue
        value = re.search(r'value="([^"]*)"', tag)
        fields[name.group(1)] = html.unescape(value.group(1) if value else "")
    for name, text in re.findall(r'<textarea[^>]*?name="([^"]+)"[^>]*>\r?\n?([^<]*)</textarea>', page):
        fields[name] = html.unescape(text)
    for tag, options in re.findall(r"(<select[^>]*>)(.*?)</select>", page, re.S):
        selected = re.search(r'<option selected value="([^"]*)"', options)
        if " disabled" not in tag and selected:
            fields[re.search(r'name="([^"]+)"', tag).group(1)] = html.unescape(selected.group(1))
    return fields


def _count(db) -> int:
    with db.sessionmaker() as session:
        return session.scalar(select(func.count()).select_from(Journey)) or 0


@pytest.fixture
def editor(client, login):
    login("editor")
    return client


def test_form_api_and_toml_file_store_identical_journeys(editor, db, admin_api, runner, tmp_path):
    created = editor.post("/journeys/new", data=FORM)
    assert created.status_code == 302, _errors(created.text)
    assert created.location == "/journeys/shop"  # the journey's map
    from_form = _stored(db, "shop")

    assert admin_api.post("/api/v1/journeys", json=_renamed(DEFINITION, "api")).status_code == 201
    path = tmp_path / "file.toml"
    path.write_text(journey_toml(parse_journey(_renamed(DEFINITION, "file"))))
    applied = runner.invoke(main, ["experiments", "apply", str(path)])
    assert applied.exit_code == 0, applied.output

    assert _renamed(_stored(db, "api"), "shop", "api") == from_form == _renamed(_stored(db, "file"), "shop", "file")
    assert from_form["stages"][1] == {
        "key": "purchase",
        "name": "Buying",
        "goal": "Ordered",
        "touchpoints": ["cart", "checkout"],
    }
    assert from_form["stages"][2]["name"] == "Advocacy" and from_form["personas"][1]["name"] == "First timer"
    with db.sessionmaker() as session:
        entry = journeys.journey_audit_log(session, journeys.get_journey(session, "shop"))[0]
    assert entry.action == "created" and entry.actor.startswith("user:editor-")


def test_the_new_form_starts_from_the_five_default_stages(editor):
    page = editor.get("/journeys/new")
    assert page.status_code == 200
    fields = _shown_fields(page.text)
    assert [fields[f"stages-{i}-key"] for i in range(5)] == [
        "awareness",
        "consideration",
        "purchase",
        "retention",
        "advocacy",
    ]
    assert fields["persona_attribute"] == "persona"
    # A question's stage is chosen among the stages typed above.
    stage_select = re.search(r'<select[^>]*name="questions-0-stage"[^>]*>(.*?)</select>', page.text, re.S)
    assert re.findall(r'value="([^"]+)"', stage_select.group(1)) == [
        "awareness",
        "consideration",
        "purchase",
        "retention",
        "advocacy",
    ]


def test_row_buttons_grow_and_reorder_the_form_without_saving(editor, db):
    for button, name in (
        ("add_stage", "stages-3-key"),
        ("add_persona", "personas-2-key"),
        ("add_question", "questions-2-key"),
    ):
        response = editor.post("/journeys/new", data={**FORM, button: "1"})
        assert response.status_code == 200 and f'name="{name}"' in response.text, button
        assert 'value="How likely are you to recommend us?"' in response.text  # what was typed stays
    moved = editor.post("/journeys/new", data={**FORM, "move_up": "2"})
    fields = _shown_fields(moved.text)
    assert [fields[f"stages-{i}-key"] for i in range(3)] == ["awareness", "advocacy", "purchase"]
    assert fields["stages-2-name"] == "Buying" and fields["stages-2-touchpoints"].split() == ["cart", "checkout"]
    assert _count(db) == 0
    saved = editor.post("/journeys/new", data=fields)
    assert saved.status_code == 302, _errors(saved.text)
    assert [s["key"] for s in _stored(db, "shop")["stages"]] == ["awareness", "advocacy", "purchase"]


def test_blank_and_removed_rows_are_left_out(editor, db):
    data = {
        **FORM,
        "stages-3-key": "",
        "stages-3-name": "",
        "personas-1-remove": "y",
        "questions-2-key": "",
        "questions-2-text": "",
        "questions-2-stage": "awareness",
        "questions-2-scale_min": "1",
        "questions-2-scale_max": "5",
    }
    assert editor.post("/journeys/new", data=data).status_code == 302
    stored = _stored(db, "shop")
    assert len(stored["stages"]) == 3 and [p["key"] for p in stored["personas"]] == ["loyal"]
    assert len(stored["questions"]) == 2


def test_an_invalid_form_keeps_what_was_typed_and_says_what_is_wrong(editor, db):
    data = {
        **FORM,
        "key": "Bad Key",
        "stages-1-key": "Buying Stage",
        "stages-2-touchpoints": "x" * 101,
        "personas-1-key": "loyal",
        "questions-0-scale_max": "1",
        "questions-1-scale_min": "zero",
    }
    response = editor.post("/journeys/new", data=data)
    assert response.status_code == 422
    assert "slug" in _error_at(response.text, "key")
    assert "slug" in _error_at(response.text, "stages-1-key")
    assert "at most 100 characters" in _error_at(response.text, "stages-2-touchpoints")
    assert "duplicate persona key 'loyal'" in _error_at(response.text, "personas-1-key")
    assert "must be 1 to 10 above min" in _error_at(response.text, "questions-0-scale_max")
    assert "whole number" in _error_at(response.text, "questions-1-scale_min")
    assert 'value="Bad Key"' in response.text and 'value="zero"' in response.text
    assert _count(db) == 0


def test_taken_keys_are_said_beside_the_box(editor, admin_api, db):
    assert admin_api.post("/api/v1/journeys", json=_renamed(DEFINITION, "api")).status_code == 201
    taken = editor.post("/journeys/new", data={**FORM, "key": "api"})
    assert taken.status_code == 409 and _error_at(taken.text, "key") == "is taken"
    asked = editor.post("/journeys/new", data={**FORM, "questions-1-key": "api-nps"})
    assert asked.status_code == 409 and _error_at(asked.text, "questions-1-key") == "is taken by journey 'api'"


def test_the_edit_form_shows_the_stored_journey_and_saves_it_unchanged(editor, db):
    editor.post("/journeys/new", data=FORM)
    before = _stored(db, "shop")
    page = editor.get("/journeys/shop/edit")
    assert page.status_code == 200
    fields = _shown_fields(page.text)
    assert re.search(r'<input[^>]*name="key"[^>]*readonly', page.text)  # the key never changes
    saved = editor.post("/journeys/shop/edit", data=fields)
    assert saved.status_code == 302 and saved.location == "/journeys/shop"
    assert "No changes." in editor.get("/experiments").text  # the flash, on the next page
    assert _stored(db, "shop") == before
    renamed = editor.post("/journeys/shop/edit", data={**fields, "name": "Web shop", "stages-0-goal": "Came by"})
    assert renamed.status_code == 302 and "Journey saved." in editor.get("/experiments").text
    stored = _stored(db, "shop")
    assert stored["name"] == "Web shop" and stored["stages"][0]["goal"] == "Came by"
    key_changed = editor.post("/journeys/shop/edit", data={**fields, "key": "store"})
    assert key_changed.status_code == 409 and "must stay 'shop'" in _error_at(key_changed.text, "key")


def _run_experiment_and_answer(admin_api, db) -> None:
    experiment = {
        "key": "one-page",
        "name": "One-page checkout",
        "journey": "shop",
        "stages": ["purchase", "advocacy"],
        "metrics": ["shop-nps"],
        "target_stage": "purchase",
        "variants": [{"key": "control"}, {"key": "one-page"}],
    }
    assert admin_api.post("/api/v1/experiments", json=experiment).status_code == 201
    assert admin_api.post("/api/v1/experiments/one-page/start").status_code == 200
    now = datetime.now(UTC)
    with db.write() as session:
        session.add(
            Event(
                event_id="e-1",
                customer_id="c-1",
                stage="purchase",
                type="satisfaction",
                metric="shop-checkout",
                value=4,
                occurred_at=now,
                received_at=now,
                exposure_cutoff=now,
            )
        )


def test_frozen_parts_are_read_only_with_the_reason(editor, admin_api, db):
    editor.post("/journeys/new", data=FORM)
    _run_experiment_and_answer(admin_api, db)
    page = editor.get("/journeys/shop/edit").text
    # Stored stage and question keys are read-only; in-use ones cannot be removed.
    assert re.search(r'<input[^>]*name="stages-1-key"[^>]*readonly', page)
    assert 'name="stages-0-remove"' in page and 'name="stages-1-remove"' not in page
    assert "In use: measured by running experiment &#39;one-page&#39;" in page
    assert "Order: keeps its order among the stages running experiment &#39;one-page&#39; measures" in page
    # The answered question: scale read-only, stage fixed, not removable; the measured one too.
    assert re.search(r'<input[^>]*name="questions-0-scale_min"[^>]*readonly', page)
    assert "Scale frozen: it has answers" in page
    assert re.search(r'<select[^>]*disabled[^>]*name="questions-0-stage"', page)
    assert 'name="questions-0-remove"' not in page and 'name="questions-1-remove"' not in page
    assert "Scale frozen: measured by running experiment &#39;one-page&#39;" in page
    # What is not frozen still saves, and the page as shown saves unchanged.
    fields = _shown_fields(page)
    assert fields["questions-0-stage"] == "purchase"  # carried by a hidden input
    before = _stored(db, "shop")
    assert editor.post("/journeys/shop/edit", data=fields).status_code == 302
    assert _stored(db, "shop") == before
    texts = {**fields, "questions-0-text": "How was checkout?", "stages-2-name": "Telling friends"}
    assert editor.post("/journeys/shop/edit", data=texts).status_code == 302
    assert _stored(db, "shop")["questions"][0]["text"] == "How was checkout?"


def test_a_post_that_breaks_a_freeze_rule_is_refused_beside_the_boxes(editor, admin_api, db):
    editor.post("/journeys/new", data=FORM)
    _run_experiment_and_answer(admin_api, db)
    fields = _shown_fields(editor.get("/journeys/shop/edit").text)
    before = _stored(db, "shop")
    swapped = {
        **fields,
        **{f"stages-1-{name}": fields[f"stages-2-{name}"] for name in ("key", "name", "goal", "touchpoints")},
        **{f"stages-2-{name}": fields[f"stages-1-{name}"] for name in ("key", "name", "goal", "touchpoints")},
    }
    response = editor.post("/journeys/shop/edit", data=swapped)
    assert response.status_code == 409
    assert _error_at(response.text, "stages-1-key") == (
        "'advocacy' must stay after 'purchase': running experiment 'one-page' measures them in that order"
    )
    rescaled = editor.post("/journeys/shop/edit", data={**fields, "questions-0-scale_max": "7"})
    assert rescaled.status_code == 409
    assert "frozen at 1-5: it has answers" in _error_at(rescaled.text, "questions-0-scale_max")
    assert _stored(db, "shop") == before


def test_an_unused_stage_can_be_removed_with_its_box(editor, db):
    editor.post("/journeys/new", data=FORM)
    fields = _shown_fields(editor.get("/journeys/shop/edit").text)
    response = editor.post("/journeys/shop/edit", data={**fields, "stages-0-remove": "y"})
    assert response.status_code == 302, _errors(response.text)
    assert [s["key"] for s in _stored(db, "shop")["stages"]] == ["purchase", "advocacy"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/journeys/new"),
        ("post", "/journeys/new"),
        ("get", "/journeys/shop/edit"),
        ("post", "/journeys/shop/edit"),
    ],
)
def test_viewers_cannot_change_journeys(client, login, admin_api, db, method, path):
    assert admin_api.post("/api/v1/journeys", json=DEFINITION).status_code == 201
    login("viewer")
    assert getattr(client, method)(path, data=FORM).status_code == 403
    assert _stored(db, "shop")["name"] == "Online shop"


@pytest.mark.parametrize("path", ["/journeys/new", "/journeys/shop/edit"])
def test_logged_out_visitors_are_sent_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302 and response.location.startswith("/login?next=")


def test_an_unknown_journey_is_404(editor):
    assert editor.get("/journeys/nope/edit").status_code == 404
    assert editor.post("/journeys/nope/edit", data=FORM).status_code == 404


def test_user_text_is_escaped(editor):
    script = "<script>alert('x')</script>"
    data = {**FORM, "name": script, "stages-0-goal": script, "stages-0-touchpoints": script, "personas-0-name": script}
    assert editor.post("/journeys/new", data=data).status_code == 302
    page = editor.get("/journeys/shop/edit").text
    assert script not in page and "&lt;script&gt;" in page


def test_the_form_needs_a_csrf_token(database_url, tmp_path, make_user):
    app = make_test_app(database_url, tmp_path, wtf_csrf_enabled=True)
    try:
        client = app.test_client()
        sign_in(client, app, make_user("editor", "csrf@example.com"))
        refused = client.post("/journeys/new", data=FORM)
        assert refused.status_code == 400 and "expired" in refused.text
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', client.get("/journeys/new").text)
        assert client.post("/journeys/new", data={**FORM, "csrf_token": token.group(1)}).status_code == 302
    finally:
        app.extensions["db"].engine.dispose()
