"""The duration estimate on the experiment form (issue 12): the "Estimate duration"
button shows the form again as entered, unsaved, with the customers and days the
experiment page would estimate for the same inputs; bad boxes are named, never a 500."""

from __future__ import annotations

import re

import pytest

from analysis.types import DecisionRule
from expplatform import experiments as service
from expplatform.models import Experiment
from expplatform.reports.planning import PlanInput, plan_estimate

from .test_web_experiments import FORM

PLANNING = {"baseline": "10", "lift": "15", "per_day": "900", "estimate": "1"}
# FORM's decision rule as entered; the rest are the defaults.
FORM_RULE = DecisionRule(ship_probability=0.9, min_exposed=250, max_expected_loss=0.002)


@pytest.fixture
def editor(client, login):
    login("editor")
    return client


def _panel(page: str) -> str:
    start = page.index('id="duration-title"')
    return page[start : page.index("</fieldset>", start)]


def _count(db) -> int:
    with db.sessionmaker() as session:
        return session.query(Experiment).count()


def test_the_new_form_has_an_empty_estimate_with_its_button(editor):
    panel = _panel(editor.get("/experiments/new").text)
    assert 'name="baseline" inputmode="decimal" value=""' in panel
    assert 'name="estimate" value="1"' in panel and "Estimate duration" in panel
    assert "About <strong>" not in panel and "plan-error" not in panel


def test_estimate_shows_the_plan_for_the_form_as_entered_and_saves_nothing(editor, db):
    response = editor.post("/experiments/new", data={**FORM, **PLANNING})
    assert response.status_code == 200
    panel = _panel(response.text)
    # Three variant rows, the decision rule typed in the form, traffic split evenly.
    expected = plan_estimate(PlanInput(0.10, 0.15, 900, 3), FORM_RULE)
    assert expected.median_days is not None and expected.days_for_power is not None
    assert f"About <strong>{expected.median_days} days</strong>" in panel
    per_arm = expected.median_customers_per_arm
    assert f"({per_arm:,} customers per variant, {per_arm * 3:,} in all)" in panel
    assert f"have decided by day {expected.days_for_power}" in panel
    assert "3 variants as filled in above" in panel
    # The rule matters: the default rule gives another estimate for the same boxes.
    default = plan_estimate(PlanInput(0.10, 0.15, 900, 3), DecisionRule())
    assert (default.median_days, default.median_customers_per_arm) != (expected.median_days, per_arm)
    # Everything typed is kept, the estimate's boxes too; nothing is saved.
    assert 'value="checkout-copy"' in response.text and 'value="Bold CTA"' in response.text
    assert 'name="lift" inputmode="decimal" value="15"' in panel and 'value="900"' in panel
    assert _count(db) == 0


def test_the_estimate_counts_the_variant_rows_filled_in(editor):
    two = {**FORM, "variants-2-key": "", "variants-2-description": "", "variants-2-weight": "", **PLANNING}
    panel = _panel(editor.post("/experiments/new", data=two).text)
    expected = plan_estimate(PlanInput(0.10, 0.15, 900, 2), FORM_RULE)
    assert f"About <strong>{expected.median_days} days</strong>" in panel and "2 variants" in panel


@pytest.mark.parametrize(
    "boxes, field",
    [
        ({"baseline": "0"}, "baseline"),
        ({"baseline": "ten"}, "baseline"),
        ({"baseline": "nan"}, "baseline"),
        ({"lift": "0"}, "lift"),
        ({"baseline": "60", "lift": "80"}, "lift"),
        ({"lift": "1e400"}, "lift"),
        ({"per_day": "-5"}, "per_day"),
        ({"per_day": ""}, "per_day"),
        ({"per_day": "inf"}, "per_day"),
    ],
)
def test_a_bad_box_is_named_beside_the_estimate(editor, db, boxes, field):
    response = editor.post("/experiments/new", data={**FORM, **PLANNING, **boxes})
    assert response.status_code == 422
    panel = _panel(response.text)
    assert re.search(rf'class="field-error plan-error" role="alert" data-field="{field}"', panel)
    assert "About <strong>" not in panel
    assert _count(db) == 0


def test_fewer_than_two_variants_or_a_bad_rule_give_no_estimate(editor, db):
    one = {**FORM, **PLANNING, "control": "0"}
    for index in (1, 2):
        one.update({f"variants-{index}-key": "", f"variants-{index}-description": "", f"variants-{index}-weight": ""})
    panel = _panel(editor.post("/experiments/new", data=one).text)
    assert 'data-field="variants"' in panel and "About <strong>" not in panel

    bad_rule = editor.post("/experiments/new", data={**FORM, **PLANNING, "decision_ship_probability": "2"})
    assert bad_rule.status_code == 422
    assert 'data-field="decision"' in _panel(bad_rule.text) and "About <strong>" not in bad_rule.text
    # The rule's own box says what is wrong, as a save would.
    assert re.search(
        r'id="decision_ship_probability"[^>]*>\s*(<p class="help">[^<]*</p>\s*)?<p class="field-error"', bad_rule.text
    )
    assert _count(db) == 0


def test_the_edit_form_estimates_without_saving_and_a_save_ignores_the_boxes(editor, db):
    created = editor.post("/experiments/new", data={**FORM, "baseline": "10", "lift": "15", "per_day": "900"})
    assert created.status_code == 302  # the estimate's boxes are not part of the definition
    with db.sessionmaker() as session:
        before = service.export_definition(service.get_experiment(session, "checkout-copy"))
    edit = editor.get("/experiments/checkout-copy/edit")
    assert "Duration estimate" in edit.text and "About <strong>" not in edit.text
    changed = {**FORM, **PLANNING, "name": "Renamed", "decision_ship_probability": "0.95"}
    response = editor.post("/experiments/checkout-copy/edit", data=changed)
    assert response.status_code == 200
    expected = plan_estimate(
        PlanInput(0.10, 0.15, 900, 3), DecisionRule(ship_probability=0.95, min_exposed=250, max_expected_loss=0.002)
    )
    assert f"About <strong>{expected.median_days} days</strong>" in _panel(response.text)
    assert 'value="Renamed"' in response.text
    with db.sessionmaker() as session:
        assert service.export_definition(service.get_experiment(session, "checkout-copy")) == before
