"""Definition parsing and validation (one test per rule) and the TOML writer. Pure:
no app, no database."""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest

from analysis.types import DecisionRule, Prior
from expplatform.definitions import (
    DEFAULT_STAGES,
    DefinitionFileError,
    ExperimentDefinition,
    TargetingRule,
    definition_to_mapping,
    dump_toml,
    parse_definition,
    parse_toml,
)
from expplatform.errors import InvalidInput, MalformedRequest
from expplatform.journey_definitions import (
    JourneyDefinition,
    journey_to_mapping,
    journey_toml,
    load_files,
    parse_journey,
    parse_journey_toml,
)

REPO = Path(__file__).resolve().parent.parent


def minimal(**changes) -> dict:
    data = {
        "key": "checkout-button",
        "name": "Green checkout button",
        "target_stage": "purchase",
        "variants": [{"key": "control"}, {"key": "green"}],
    }
    data.update(changes)
    return data


def errors_of(data) -> dict[str, str]:
    with pytest.raises(InvalidInput) as info:
        parse_definition(data)
    assert info.value.code == "validation_failed"
    return info.value.fields


def test_minimal_definition_gets_the_documented_defaults():
    definition = parse_definition(minimal())
    # No journey, stages, questions or scale: the experiment service resolves them
    # (journeys.resolve_definition) to the default journey's five stages, each with
    # its 1-5 question; tests/test_experiments_api.py checks the stored result.
    assert (definition.journey, definition.stages, definition.metrics, definition.scale) == (None, None, None, None)
    assert definition.traffic == 1.0
    assert definition.targeting == () and definition.layer is None and definition.layer_share is None
    assert definition.decision == DecisionRule() and definition.prior == Prior()
    assert dict(definition.forced_variants) == {} and definition.hypothesis == ""
    assert [(v.key, v.weight, v.is_control) for v in definition.variants] == [
        ("control", 0.5, True),
        ("green", 0.5, False),
    ]


def test_definition_is_frozen():
    definition = parse_definition(minimal())
    with pytest.raises(AttributeError):
        definition.traffic = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        definition.forced_variants["x"] = "green"  # type: ignore[index]


def test_body_that_is_not_an_object_is_a_malformed_request():
    with pytest.raises(MalformedRequest) as info:
        parse_definition(["not", "an", "object"])
    assert info.value.fields == {"definition": "must be an object"}


@pytest.mark.parametrize("field", ["key", "name", "target_stage", "variants"])
def test_required_fields(field):
    data = minimal()
    del data[field]
    assert errors_of(data)[field] == "is required"


def test_unknown_fields_are_rejected_at_every_level():
    fields = errors_of(
        minimal(
            colour="green",
            variants=[{"key": "a", "colour": "x"}, {"key": "b"}],
            targeting=[{"attribute": "x", "op": "eq", "value": 1, "negate": True}],
            satisfaction_scale={"min": 1, "max": 5, "step": 1},
        )
    )
    assert set(fields) == {"colour", "variants.0.colour", "targeting.0.negate", "satisfaction_scale.step"}
    assert all(message == "unknown field" for message in fields.values())


def test_every_bad_field_is_reported_at_once():
    fields = errors_of(minimal(key="Bad Key", traffic=2, stages=[], variants=[{"key": "a"}]))
    assert {"key", "traffic", "stages", "variants"} <= set(fields)


@pytest.mark.parametrize("key", ["", "Upper", "-leading", "_leading", "has space", "a" * 65, "dot.ted", 7, None])
def test_key_must_be_a_slug(key):
    assert "slug" in errors_of(minimal(key=key))["key"]


@pytest.mark.parametrize("key", ["a", "0", "checkout_button-2", "a" * 64])
def test_slug_keys_are_accepted(key):
    assert parse_definition(minimal(key=key)).key == key


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "must not be empty"), ("   ", "must not be empty"), ("x" * 201, "at most 200"), (5, "must be text")],
)
def test_name_must_be_short_non_empty_text(name, message):
    assert message in errors_of(minimal(name=name))["name"]


def test_name_and_descriptions_are_trimmed():
    definition = parse_definition(
        minimal(name="  Green  ", variants=[{"key": "a", "description": " grey\n"}, {"key": "b"}])
    )
    assert definition.name == "Green" and definition.variants[0].description == "grey"


@pytest.mark.parametrize(
    ("stages", "path"),
    [
        ([], "stages"),
        ([f"s{i}" for i in range(21)], "stages"),
        ("purchase", "stages"),
        (["purchase", "Bad"], "stages.1"),
        (["purchase", "purchase"], "stages.1"),
    ],
)
def test_stages_are_1_to_20_unique_slugs(stages, path):
    assert path in errors_of(minimal(stages=stages))


def test_custom_stages_up_to_twenty():
    stages = [f"step-{i}" for i in range(20)]
    assert parse_definition(minimal(stages=stages, target_stage="step-3")).stages == tuple(stages)


def test_target_stage_must_be_one_of_the_stages():
    assert "must be one of the stages" in errors_of(minimal(stages=["signup", "activation"]))["target_stage"]


@pytest.mark.parametrize("count", [0, 1, 11])
def test_two_to_ten_variants(count):
    variants = [{"key": f"v{i}"} for i in range(count)]
    assert "2 to 10" in errors_of(minimal(variants=variants))["variants"]


def test_ten_variants_are_allowed():
    assert len(parse_definition(minimal(variants=[{"key": f"v{i}"} for i in range(10)])).variants) == 10


def test_variant_keys_are_unique():
    assert "duplicate" in errors_of(minimal(variants=[{"key": "a"}, {"key": "b"}, {"key": "a"}]))["variants.2.key"]


def test_variant_must_be_an_object_with_a_slug_key():
    fields = errors_of(minimal(variants=["a", {"key": "B"}]))
    assert set(fields) == {"variants.0", "variants.1.key"}


@pytest.mark.parametrize("weight", [0, -1, "1", True, None, math.nan, math.inf])
def test_weights_must_be_positive_numbers(weight):
    assert (
        errors_of(minimal(variants=[{"key": "a"}, {"key": "b", "weight": weight}]))["variants.1.weight"]
        == "must be a positive number"
    )


def test_weights_are_normalised_to_sum_to_one_and_the_caller_is_told():
    definition = parse_definition(minimal(variants=[{"key": "a", "weight": 1}, {"key": "b", "weight": 3}]))
    assert [v.weight for v in definition.variants] == [0.25, 0.75]
    assert definition.notices and "normalised" in definition.notices[0]


def test_weights_that_sum_to_one_are_kept_exactly():
    weights = [0.34, 0.33, 0.33]
    definition = parse_definition(minimal(variants=[{"key": f"v{i}", "weight": w} for i, w in enumerate(weights)]))
    assert [v.weight for v in definition.variants] == weights and definition.notices == ()


def test_normalisation_is_idempotent():
    first = parse_definition(minimal(variants=[{"key": f"v{i}", "weight": 1} for i in range(3)]))
    second = parse_definition(definition_to_mapping(first))
    assert second == first and second.notices == ()
    assert math.isclose(sum(v.weight for v in second.variants), 1.0)


def test_control_defaults_to_the_first_variant_or_is_the_one_marked():
    assert parse_definition(minimal()).control.key == "control"
    marked = parse_definition(
        minimal(variants=[{"key": "a"}, {"key": "b", "control": True}, {"key": "c", "control": False}])
    )
    assert marked.control.key == "b" and [v.is_control for v in marked.variants] == [False, True, False]


def test_only_one_control():
    assert (
        "only one"
        in errors_of(minimal(variants=[{"key": "a", "control": True}, {"key": "b", "control": True}]))[
            "variants.1.control"
        ]
    )


def test_control_must_be_boolean():
    assert "variants.0.control" in errors_of(minimal(variants=[{"key": "a", "control": "yes"}, {"key": "b"}]))


@pytest.mark.parametrize("traffic", [0, -0.1, 1.01, "0.5", True, math.nan])
def test_traffic_is_a_fraction_above_zero_up_to_one(traffic):
    assert "traffic" in errors_of(minimal(traffic=traffic))


@pytest.mark.parametrize("traffic", [1, 0.001, 0.5])
def test_valid_traffic(traffic):
    assert parse_definition(minimal(traffic=traffic)).traffic == traffic


@pytest.mark.parametrize(
    "rule",
    [
        {"attribute": "platform", "op": "eq", "value": "ios"},
        {"attribute": "beta", "op": "ne", "value": True},
        {"attribute": "country", "op": "in", "value": ["NL", "BE"]},
        {"attribute": "persona", "op": "not_in", "value": ["bot"]},
        {"attribute": "age", "op": "lt", "value": 30},
        {"attribute": "age", "op": "lte", "value": 30.5},
        {"attribute": "orders", "op": "gt", "value": 0},
        {"attribute": "orders", "op": "gte", "value": 2},
    ],
)
def test_each_targeting_operator(rule):
    (parsed,) = parse_definition(minimal(targeting=[rule])).targeting
    expected = tuple(rule["value"]) if isinstance(rule["value"], list) else rule["value"]
    assert parsed == TargetingRule(rule["attribute"], rule["op"], expected)


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ({"attribute": "x", "op": "like", "value": "a"}, "targeting.0.op"),
        ({"attribute": "", "op": "eq", "value": "a"}, "targeting.0.attribute"),
        ({"attribute": "x" * 65, "op": "eq", "value": "a"}, "targeting.0.attribute"),
        ({"attribute": "x", "op": "eq"}, "targeting.0.value"),
        ({"attribute": "x", "op": "eq", "value": ["a"]}, "targeting.0.value"),
        ({"attribute": "x", "op": "eq", "value": None}, "targeting.0.value"),
        ({"attribute": "x", "op": "in", "value": "a"}, "targeting.0.value"),
        ({"attribute": "x", "op": "in", "value": []}, "targeting.0.value"),
        ({"attribute": "x", "op": "not_in", "value": ["a", {"b": 1}]}, "targeting.0.value.1"),
        ({"attribute": "x", "op": "lt", "value": "10"}, "targeting.0.value"),
        ({"attribute": "x", "op": "gte", "value": True}, "targeting.0.value"),
        ("platform = ios", "targeting.0"),
    ],
)
def test_bad_targeting_rules(rule, path):
    assert path in errors_of(minimal(targeting=[rule]))


def test_targeting_must_be_a_list():
    assert "targeting" in errors_of(minimal(targeting={"attribute": "x", "op": "eq", "value": 1}))


@pytest.mark.parametrize(("low", "high"), [(1, 5), (0, 10), (1, 2), (-2, 2)])
def test_satisfaction_scales(low, high):
    definition = parse_definition(minimal(satisfaction_scale={"min": low, "max": high}))
    assert definition.scale == (low, high)


@pytest.mark.parametrize(
    ("scale", "path"),
    [
        ({"min": 3, "max": 3}, "satisfaction_scale.max"),
        ({"min": 5, "max": 1}, "satisfaction_scale.max"),
        ({"min": 0, "max": 11}, "satisfaction_scale.max"),
        ({"min": 1.5, "max": 5}, "satisfaction_scale.min"),
        ({"min": 1, "max": "5"}, "satisfaction_scale.max"),
        ({"min": 1}, "satisfaction_scale.max"),
        ([1, 5], "satisfaction_scale"),
    ],
)
def test_bad_satisfaction_scales(scale, path):
    assert path in errors_of(minimal(satisfaction_scale=scale))


def test_layer_needs_a_share():
    assert "required" in errors_of(minimal(layer="checkout"))["layer_share"]


def test_layer_share_needs_a_layer():
    assert "layer" in errors_of(minimal(layer_share=0.5))["layer_share"]


@pytest.mark.parametrize("share", [0, 1.5, "0.5", 0.00001])
def test_layer_share_is_a_fraction_of_at_least_one_bucket(share):
    assert "layer_share" in errors_of(minimal(layer="checkout", layer_share=share))


def test_layer_is_a_slug():
    assert "layer" in errors_of(minimal(layer="Check Out", layer_share=0.5))


def test_layer_with_share():
    definition = parse_definition(minimal(layer="checkout", layer_share=0.25))
    assert (definition.layer, definition.layer_share) == ("checkout", 0.25)


def test_decision_settings_merge_with_the_documented_defaults():
    definition = parse_definition(minimal(decision={"ship_probability": 0.9, "min_exposed": 500}))
    assert definition.decision == DecisionRule(ship_probability=0.9, min_exposed=500)


@pytest.mark.parametrize(
    ("decision", "path", "message"),
    [
        ({"ship_probablity": 0.9}, "decision.ship_probablity", "unknown setting"),
        ({"ship_probability": "high"}, "decision.ship_probability", "must be a number"),
        ({"ship_probability": 1.2}, "decision.ship_probability", "between 0 and 1"),
        ({"min_exposed": 10.5}, "decision.min_exposed", "whole number"),
        ({"ship_probability": 0.5, "harm_probability": 0.5}, "decision.harm_probability", "below ship_probability"),
        ("strict", "decision", "must be an object"),
    ],
)
def test_bad_decision_settings(decision, path, message):
    assert message in errors_of(minimal(decision=decision))[path]


def test_bad_prior():
    fields = errors_of(minimal(prior={"conversion_alpha": -1, "shape": 2}))
    assert "positive" in fields["prior.conversion_alpha"] and fields["prior.shape"] == "unknown setting"


def test_forced_variants_name_existing_variants():
    definition = parse_definition(minimal(forced_variants={"qa-2": "green", "qa-1": "control"}))
    assert dict(definition.forced_variants) == {"qa-1": "control", "qa-2": "green"}
    assert "no variant 'blue'" in errors_of(minimal(forced_variants={"qa-1": "blue"}))["forced_variants.qa-1"]


@pytest.mark.parametrize("forced", [["qa-1"], {"qa-1": 1}, {"": "green"}, {"x" * 257: "green"}])
def test_bad_forced_variants(forced):
    assert any(name.startswith("forced_variants") for name in errors_of(minimal(forced_variants=forced)))


def rich_definition() -> ExperimentDefinition:
    return parse_definition(
        minimal(
            hypothesis='Say "why"\nin two lines \\ with a backslash, a tab\tand ü',
            stages=["signup", "activation", "subscription"],
            target_stage="activation",
            variants=[
                {"key": "a", "description": "old", "weight": 2},
                {"key": "b", "description": "new", "weight": 1, "control": True},
                {"key": "c", "weight": 1},
            ],
            traffic=0.1,
            targeting=[
                {"attribute": "country", "op": "in", "value": ["NL", 3, True, 2.5]},
                {"attribute": "app version", "op": "gte", "value": 7},
                {"attribute": "beta", "op": "eq", "value": False},
            ],
            satisfaction_scale={"min": 0, "max": 10},
            layer="onboarding",
            layer_share=0.3,
            decision={"ship_probability": 0.99, "min_exposed": 250},
            prior={"conversion_alpha": 0.5},
            forced_variants={"qa.1": "a", "qa 2": "c", 'qa"3': "b"},
        )
    )


def test_mapping_round_trip_is_exact():
    definition = rich_definition()
    assert parse_definition(definition_to_mapping(definition)) == definition


def test_toml_round_trip_is_exact():
    definition = rich_definition()
    text = dump_toml(definition_to_mapping(definition))
    assert tomllib.loads(text) == definition_to_mapping(definition)
    assert parse_toml(text) == definition


def test_toml_output_is_deterministic_and_ordered():
    text = dump_toml(definition_to_mapping(rich_definition()))
    assert text == dump_toml(definition_to_mapping(rich_definition()))
    lines = text.splitlines()
    assert lines.index('key = "checkout-button"') < lines.index("[satisfaction_scale]") < lines.index("[[variants]]")
    assert lines.index("[[variants]]") < lines.index("[[targeting]]")
    assert text.endswith("\n")


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        'q"uote',
        "back\\slash",
        "new\nline",
        "tab\t",
        "bell\x07",
        "del\x7f",
        "ünïcødé ✓",
        "",
        "'single'",
        "#not a comment",
    ],
)
def test_toml_strings_round_trip(value):
    data = {"text": value, "list": [value, 1, 0.1, True], "table": {value or "empty-key": value}}
    assert tomllib.loads(dump_toml(data)) == data


@pytest.mark.parametrize("number", [0.1, 1 / 3, 1e-5, 1e22, 0.30000000000000004, 1.0, -2.5])
def test_toml_floats_round_trip_exactly(number):
    assert tomllib.loads(dump_toml({"x": number}))["x"] == number


def test_empty_targeting_and_forced_variants_survive_toml():
    data = definition_to_mapping(parse_definition(minimal()))
    loaded = tomllib.loads(dump_toml(data))
    assert loaded["targeting"] == [] and loaded["forced_variants"] == {}


def test_toml_syntax_errors_are_reported_as_a_field():
    with pytest.raises(InvalidInput) as info:
        parse_toml('key = "unterminated\n')
    assert "toml" in info.value.fields


def test_toml_validation_errors_use_the_same_field_paths():
    text = (
        'key = "a"\nname = "A"\ntarget_stage = "purchase"\n'
        '[[variants]]\nkey = "x"\n[[variants]]\nkey = "y"\nweight = -1\n'
    )
    with pytest.raises(InvalidInput) as info:
        parse_toml(text)
    assert set(info.value.fields) == {"variants.1.weight"}


def test_demo_definition_files_are_valid():
    loaded = load_files([REPO / "experiments"])
    ((path, shop),) = loaded.journeys
    assert path.name == "ecommerce.journey.toml" and shop.key == "ecommerce"
    assert shop.stage_keys == DEFAULT_STAGES and all(stage.goal and stage.touchpoints for stage in shop.stages)
    assert [p.key for p in shop.personas] == ["bargain-hunter", "first-timer", "returning", "loyal"]
    assert [(q.key, q.stage, q.scale) for q in shop.questions] == [
        ("consideration-effort", "consideration", (1, 7)),
        ("checkout-csat", "purchase", (1, 5)),
        ("delivery-csat", "retention", (1, 5)),
        ("nps", "advocacy", (0, 10)),
    ]
    keys = {definition.key for _, definition in loaded.experiments}
    assert {"checkout-page", "onboarding-tour"} <= keys
    by_key = {definition.key: definition for _, definition in loaded.experiments}
    questions = {q.key: q.stage for q in shop.questions}
    personas = {p.key for p in shop.personas}
    for definition in by_key.values():
        # On the demo journey, measuring its stages with its questions, targeting its personas.
        assert definition.journey == "ecommerce" and definition.scale is None
        assert definition.stages is not None and set(definition.stages) <= set(shop.stage_keys)
        assert definition.metrics is not None and {questions[m] for m in definition.metrics} <= set(definition.stages)
        for rule in definition.targeting:
            if rule.attribute == shop.persona_attribute:
                values = rule.value if isinstance(rule.value, tuple) else (rule.value,)
                assert set(values) <= personas
    checkout = by_key["checkout-page"]
    assert checkout.target_stage == "purchase" and checkout.metrics == ("checkout-csat", "delivery-csat", "nps")
    assert {rule.attribute for rule in checkout.targeting} >= {"persona", "platform"}
    tour = by_key["onboarding-tour"]
    assert tour.target_stage == "retention" and tour.metrics == ("nps",)


def test_load_files_reads_folders_in_name_order(tmp_path):
    for name in ("b.toml", "a.toml"):
        (tmp_path / name).write_text(dump_toml(definition_to_mapping(parse_definition(minimal(key=name[0])))))
    (tmp_path / "notes.txt").write_text("not a definition")
    assert [path.name for path, _ in load_files([tmp_path]).experiments] == ["a.toml", "b.toml"]


def test_load_files_reports_every_problem_with_its_file(tmp_path):
    good = dump_toml(definition_to_mapping(parse_definition(minimal(key="same"))))
    (tmp_path / "one.toml").write_text(good)
    (tmp_path / "two.toml").write_text(good)
    (tmp_path / "bad.toml").write_text('key = "bad"\nname = ""\n')
    (tmp_path / "broken.toml").write_text("key = \n")
    with pytest.raises(DefinitionFileError) as info:
        load_files([tmp_path])
    text = str(info.value)
    assert "bad.toml: name: must not be empty" in text and "bad.toml: variants: is required" in text
    assert "broken.toml: toml:" in text
    assert "two.toml: key: 'same' is also defined in" in text


def test_load_files_with_nothing_to_load(tmp_path):
    with pytest.raises(DefinitionFileError, match="no definition files"):
        load_files([tmp_path])


def test_settings_are_stored_in_full():
    data = definition_to_mapping(parse_definition(minimal(decision={"min_exposed": 7})))
    assert data["decision"] == asdict(DecisionRule(min_exposed=7)) and data["prior"] == asdict(Prior())


# -- hostile input (issue 11) ----------------------------------------------------------

UNSTORABLE = ["\ud800", "a\x00b", "x\udfff"]
# The same strings with each unstorable character replaced by "?".
SHOWN = {"\ud800": "?", "a\x00b": "a?b", "x\udfff": "x?"}


@pytest.mark.parametrize("key", ["key\n", "checkout\n", "a\r\n"])
def test_slugs_are_matched_whole_so_a_trailing_newline_is_refused(key):
    fields = errors_of(minimal(key=key, stages=["purchase", "b\n"], layer="l\n", layer_share=0.5))
    assert {"key", "stages.1", "layer"} <= set(fields)


@pytest.mark.parametrize("bad", UNSTORABLE)
def test_nul_and_lone_surrogates_are_refused_in_every_text_field(bad):
    fields = errors_of(
        minimal(
            name=f"Name {bad}",
            hypothesis=f"Because {bad}",
            variants=[{"key": "control", "description": bad}, {"key": "green"}],
            targeting=[
                {"attribute": f"country{bad}", "op": "eq", "value": "FR"},
                {"attribute": "platform", "op": "eq", "value": bad},
                {"attribute": "persona", "op": "in", "value": ["new", bad]},
            ],
        )
    )
    message = "must not contain NUL characters or unpaired surrogates"
    for path in (
        "name",
        "hypothesis",
        "variants.0.description",
        "targeting.0.attribute",
        "targeting.1.value",
        "targeting.2.value.1",
    ):
        assert fields[path] == message, path


@pytest.mark.parametrize("bad", UNSTORABLE)
def test_nul_and_lone_surrogates_are_refused_in_forced_customer_ids(bad):
    fields = errors_of(minimal(forced_variants={f"qa{bad}": "green"}))
    assert list(fields) == [f"forced_variants.qa{SHOWN[bad]}"]
    (message,) = fields.values()
    assert "NUL" in message
    # The error can be encoded as UTF-8 JSON: no unstorable character travels back.
    assert all(name.encode() for name in fields)


@pytest.mark.parametrize(
    "weight", [1e308, 1e-320, 1e-7, 2e6, pytest.param(10**400, id="10**400"), pytest.param(2**60, id="2**60")]
)
def test_weights_are_bounded(weight):
    fields = errors_of(minimal(variants=[{"key": "a"}, {"key": "b", "weight": weight}]))
    assert set(fields) == {"variants.1.weight"}


def test_weights_of_1e308_each_are_refused_not_overflowed():
    fields = errors_of(minimal(variants=[{"key": "a", "weight": 1e308}, {"key": "b", "weight": 1e308}]))
    assert set(fields) == {"variants.0.weight", "variants.1.weight"}


def test_weights_need_a_sane_ratio():
    fields = errors_of(minimal(variants=[{"key": "a", "weight": 1e6}, {"key": "b", "weight": 1e-6}]))
    assert "largest weight" in fields["variants.1.weight"]
    fine = parse_definition(minimal(variants=[{"key": "a", "weight": 1e6}, {"key": "b", "weight": 1}]))
    assert math.isclose(sum(v.weight for v in fine.variants), 1.0) and fine.variants[1].weight > 0


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("conversion_alpha", 1e308),
        ("conversion_beta", 1e-300),
        ("rating_concentration", 1e6),
        ("conversion_alpha", math.inf),
        ("conversion_alpha", math.nan),
        pytest.param("conversion_alpha", 10**400, id="alpha-10**400"),
    ],
)
def test_priors_are_bounded_to_meaningful_pseudo_counts(setting, value):
    assert set(errors_of(minimal(prior={setting: value}))) == {f"prior.{setting}"}


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        pytest.param("min_exposed", 2**70, id="min_exposed-2**70"),
        pytest.param("min_exposed", 10**400, id="min_exposed-10**400"),
        ("min_exposed", math.inf),
        ("min_exposed", math.nan),
        ("max_expected_loss", 1e308),
        ("ship_probability", 0.3),
        ("harm_probability", 1e-300),
        ("credible_level", 0.99999999),
        ("srm_alpha", 0.9),
    ],
)
def test_decision_thresholds_are_bounded(setting, value):
    assert set(errors_of(minimal(decision={setting: value}))) == {f"decision.{setting}"}


def test_bounded_settings_at_their_limits_are_accepted():
    definition = parse_definition(
        minimal(
            prior={"conversion_alpha": 0.5, "conversion_beta": 10_000, "rating_concentration": 0.01},
            decision={"min_exposed": 1_000_000_000, "ship_probability": 0.9999, "max_expected_loss": 0},
        )
    )
    assert definition.prior.conversion_beta == 10_000 and definition.decision.min_exposed == 1_000_000_000


@pytest.mark.parametrize("scale", [{"min": 2**60, "max": 2**60 + 5}, {"min": -5000, "max": -4995}])
def test_satisfaction_scale_bounds(scale):
    assert any(name.startswith("satisfaction_scale") for name in errors_of(minimal(satisfaction_scale=scale)))


def test_huge_numbers_in_targeting_and_traffic_are_errors_not_crashes():
    fields = errors_of(minimal(traffic=10**400, targeting=[{"attribute": "age", "op": "gt", "value": 10**400}]))
    assert {"traffic", "targeting.0.value"} <= set(fields)


def test_toml_inf_and_nul_escapes_are_field_errors():
    text = dump_toml(definition_to_mapping(parse_definition(minimal())))
    text = text.replace('name = "Green checkout button"', 'name = "Green\\u0000"')
    text = text.replace("min_exposed = 100", "min_exposed = inf")
    with pytest.raises(InvalidInput) as info:
        parse_toml(text)
    assert {"name", "decision.min_exposed"} <= set(info.value.fields)


def test_toml_keys_with_a_trailing_newline_are_quoted():
    assert dump_toml({"forced_variants": {"qa\n": "a"}}).splitlines()[-1] == '"qa\\n" = "a"'


# -- experiments on a journey ----------------------------------------------------------


def test_journey_stages_and_metrics_are_kept_as_given():
    definition = parse_definition(
        minimal(journey="shop", stages=["purchase", "advocacy"], metrics=["checkout-csat", "nps"])
    )
    assert (definition.journey, definition.stages, definition.metrics) == (
        "shop",
        ("purchase", "advocacy"),
        ("checkout-csat", "nps"),
    )
    assert parse_definition(definition_to_mapping(definition)) == definition


def test_an_empty_metrics_list_means_no_question():
    definition = parse_definition(minimal(journey="shop", metrics=[]))
    assert definition.metrics == ()
    assert parse_toml(dump_toml(definition_to_mapping(definition))) == definition


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"metrics": ["nps"]}, "metrics"),  # needs a journey
        ({"journey": "shop", "metrics": ["nps", "nps"]}, "metrics.1"),
        ({"journey": "shop", "metrics": ["Bad"]}, "metrics.0"),
        ({"journey": "shop", "metrics": "nps"}, "metrics"),
        ({"journey": "Shop"}, "journey"),
        ({"journey": "shop", "satisfaction_scale": {"min": 1, "max": 5}}, "satisfaction_scale"),
    ],
)
def test_bad_journey_fields(changes, path):
    assert path in errors_of(minimal(**changes))


# -- journeys ------------------------------------------------------------------------------


def shop(**changes) -> dict:
    data = {
        "key": "shop",
        "name": "Online shop",
        "stages": [
            {"key": "awareness", "touchpoints": ["ads"]},
            {"key": "purchase", "name": "Buying", "goal": "Ordered"},
        ],
        "personas": [{"key": "loyal"}],
        "questions": [
            {"key": "checkout-csat", "text": "How was checkout?", "stage": "purchase", "scale": {"min": 1, "max": 5}}
        ],
    }
    data.update(changes)
    return data


def journey_errors(data) -> dict[str, str]:
    with pytest.raises(InvalidInput) as info:
        parse_journey(data)
    assert info.value.code == "validation_failed"
    return info.value.fields


def test_a_journey_gets_the_documented_defaults():
    journey = parse_journey(shop())
    assert journey_to_mapping(journey) == {
        "key": "shop",
        "name": "Online shop",
        "description": "",
        "persona_attribute": "persona",
        "stages": [
            {"key": "awareness", "name": "Awareness", "goal": "", "touchpoints": ["ads"]},
            {"key": "purchase", "name": "Buying", "goal": "Ordered", "touchpoints": []},
        ],
        "personas": [{"key": "loyal", "name": "Loyal", "description": ""}],
        "questions": [
            {"key": "checkout-csat", "text": "How was checkout?", "stage": "purchase", "scale": {"min": 1, "max": 5}}
        ],
    }
    assert journey.stage_keys == ("awareness", "purchase")


def test_a_journey_is_frozen():
    journey = parse_journey(shop())
    with pytest.raises(AttributeError):
        journey.name = "x"  # type: ignore[misc]


def test_a_journey_body_that_is_not_an_object_is_a_malformed_request():
    with pytest.raises(MalformedRequest):
        parse_journey([shop()])


@pytest.mark.parametrize("name", ["key", "name", "stages"])
def test_journey_required_fields(name):
    data = shop()
    del data[name]
    assert journey_errors(data)[name] == "is required"


def test_journey_unknown_fields_are_rejected_at_every_level():
    data = shop(colour="green")
    data["stages"][0]["colour"] = "x"
    data["personas"][0]["age"] = 3
    data["questions"][0]["weight"] = 1
    data["questions"][0]["scale"]["step"] = 1
    fields = journey_errors(data)
    assert set(fields) == {
        "colour",
        "stages.0.colour",
        "personas.0.age",
        "questions.0.weight",
        "questions.0.scale.step",
    }
    assert set(fields.values()) == {"unknown field"}


def test_every_bad_journey_field_is_reported_at_once():
    data = shop(key="Bad Key", name="", persona_attribute="")
    data["stages"][1]["touchpoints"] = ["x" * 101]
    data["personas"] = [{"key": "Loyal"}]
    data["questions"][0]["scale"] = {"min": 1, "max": 1}
    assert set(journey_errors(data)) == {
        "key",
        "name",
        "persona_attribute",
        "stages.1.touchpoints.0",
        "personas.0.key",
        "questions.0.scale.max",
    }


@pytest.mark.parametrize(
    ("stages", "path"),
    [
        ([], "stages"),
        ([{"key": f"s{i}"} for i in range(21)], "stages"),
        ("awareness", "stages"),
        (["awareness"], "stages.0"),
        ([{"name": "No key"}], "stages.0.key"),
        ([{"key": "a"}, {"key": "a"}], "stages.1.key"),
        ([{"key": "a", "name": ""}], "stages.0.name"),
        ([{"key": "a", "goal": "x" * 1001}], "stages.0.goal"),
        ([{"key": "a", "touchpoints": [f"t{i}" for i in range(21)]}], "stages.0.touchpoints"),
        ([{"key": "a", "touchpoints": ["cart", " cart "]}], "stages.0.touchpoints.1"),
        ([{"key": "a", "touchpoints": [3]}], "stages.0.touchpoints.0"),
    ],
)
def test_bad_journey_stages(stages, path):
    assert path in journey_errors(shop(stages=stages, questions=[]))


def test_twenty_stages_with_twenty_touchpoints_each_are_allowed():
    stages = [{"key": f"s{i}", "touchpoints": [f"t{j}" for j in range(20)]} for i in range(20)]
    assert len(parse_journey(shop(stages=stages, questions=[])).stages) == 20


@pytest.mark.parametrize(
    ("question", "path"),
    [
        ({"stage": "checkout"}, "questions.0.stage"),
        ({"stage": None}, "questions.0.stage"),
        ({"text": ""}, "questions.0.text"),
        ({"text": "x" * 501}, "questions.0.text"),
        ({"key": "Bad"}, "questions.0.key"),
        ({"scale": {"min": 0, "max": 11}}, "questions.0.scale.max"),
        ({"scale": {"min": 5, "max": 1}}, "questions.0.scale.max"),
        ({"scale": {"min": 1.5, "max": 5}}, "questions.0.scale.min"),
        ({"scale": {"min": True, "max": 5}}, "questions.0.scale.min"),
        ({"scale": {"min": -5000, "max": -4995}}, "questions.0.scale.min"),
        ({"scale": {"max": 5}}, "questions.0.scale.min"),
        ({"scale": "1-5"}, "questions.0.scale"),
    ],
)
def test_bad_questions(question, path):
    data = shop()
    data["questions"][0] = {**data["questions"][0], **question}
    assert path in journey_errors(data)


def test_question_keys_are_unique_and_there_are_at_most_a_hundred():
    question = shop()["questions"][0]
    assert "questions.1.key" in journey_errors(shop(questions=[question, question]))
    many = [{**question, "key": f"q{i}"} for i in range(101)]
    assert "questions" in journey_errors(shop(questions=many))


@pytest.mark.parametrize(("low", "high"), [(1, 5), (0, 10), (1, 2), (-2, 2), (1, 7)])
def test_question_scales(low, high):
    data = shop()
    data["questions"][0]["scale"] = {"min": low, "max": high}
    assert parse_journey(data).questions[0].scale == (low, high)


@pytest.mark.parametrize("personas", [[{"key": "a"}, {"key": "a"}], [{"key": "Loyal customer"}], "loyal"])
def test_bad_personas(personas):
    assert any(name.startswith("personas") for name in journey_errors(shop(personas=personas)))


def test_at_most_fifty_personas():
    assert "personas" in journey_errors(shop(personas=[{"key": f"p{i}"} for i in range(51)]))


def test_new_is_not_a_journey_key_and_kind_must_say_journey():
    assert "reserved" in journey_errors(shop(key="new"))["key"]
    assert "kind" in journey_errors(shop(kind="experiment"))
    assert parse_journey(shop(kind="journey")) == parse_journey(shop())


def test_journey_texts_are_trimmed():
    data = shop(name="  Shop  ", description=" words ", persona_attribute=" segment ")
    data["stages"][0]["touchpoints"] = ["  ads "]
    journey = parse_journey(data)
    assert (journey.name, journey.description, journey.persona_attribute) == ("Shop", "words", "segment")
    assert journey.stages[0].touchpoints == ("ads",)


@pytest.mark.parametrize("bad", UNSTORABLE)
def test_nul_and_lone_surrogates_are_refused_in_every_journey_text(bad):
    data = shop(name=bad, description=bad, persona_attribute=bad)
    data["stages"][0] = {"key": "awareness", "name": bad, "goal": bad, "touchpoints": [bad]}
    data["personas"][0] = {"key": "loyal", "name": bad, "description": bad}
    data["questions"][0]["text"] = bad
    fields = journey_errors(data)
    assert set(fields) == {
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
    assert all("NUL" in message for message in fields.values())


def test_journey_mapping_and_toml_round_trip_exactly():
    data = shop(description='Quotes " and \\ and\nnew lines', persona_attribute="segment")
    data["stages"][0]["touchpoints"] = ["ads", "search ✓", "#not a comment"]
    journey = parse_journey(data)
    assert parse_journey(journey_to_mapping(journey)) == journey
    text = journey_toml(journey)
    assert text == journey_toml(journey)  # deterministic
    assert text.startswith('# expplatform journey definition\nkind = "journey"\nkey = "shop"\n')
    assert "scale = { min = 1, max = 5 }" in text
    assert tomllib.loads(text) == {"kind": "journey", **journey_to_mapping(journey)}
    assert parse_journey_toml(text) == journey


def test_a_journey_without_personas_or_questions_survives_toml():
    journey = parse_journey(shop(personas=[], questions=[]))
    loaded = tomllib.loads(journey_toml(journey))
    assert loaded["personas"] == [] and loaded["questions"] == []
    assert parse_journey(loaded) == journey


# -- definition files: journeys and experiments together ------------------------------------


def _journey_file(key: str = "shop", **changes) -> str:
    return journey_toml(parse_journey(shop(key=key, **changes)))


def test_files_that_say_kind_journey_are_journeys(tmp_path):
    (tmp_path / "a.toml").write_text(dump_toml(definition_to_mapping(parse_definition(minimal(key="shop")))))
    (tmp_path / "z.journey.toml").write_text(_journey_file())
    loaded = load_files([tmp_path])
    assert [(path.name, type(d)) for path, d in loaded.journeys] == [("z.journey.toml", JourneyDefinition)]
    # A journey and an experiment may share a key: they are different things.
    assert [(path.name, d.key) for path, d in loaded.experiments] == [("a.toml", "shop")]


def test_a_journey_file_without_its_kind_is_told_what_is_missing(tmp_path):
    text = _journey_file().replace('kind = "journey"\n', "")
    (tmp_path / "shop.toml").write_text(text)
    with pytest.raises(DefinitionFileError) as info:
        load_files([tmp_path])
    assert info.value.problems == [
        f"{tmp_path / 'shop.toml'}: kind: is required: stages given as tables describe a journey, "
        'which says kind = "journey"'
    ]


def test_journey_file_problems_are_reported_with_their_files(tmp_path):
    (tmp_path / "one.toml").write_text(_journey_file())
    (tmp_path / "two.toml").write_text(_journey_file())
    (tmp_path / "other.toml").write_text(_journey_file("other"))  # asks checkout-csat too
    (tmp_path / "odd.toml").write_text('kind = "report"\nkey = "x"\n')
    (tmp_path / "bad.toml").write_text('kind = "journey"\nkey = "bad"\nname = "Bad"\nstages = []\n')
    with pytest.raises(DefinitionFileError) as info:
        load_files([tmp_path])
    text = str(info.value)
    assert "two.toml: key: 'shop' is also defined in" in text
    assert "other.toml: questions.0.key: question 'checkout-csat' is also defined in" in text
    assert "odd.toml: kind: must be 'journey' for a journey, or left out for an experiment" in text
    assert "bad.toml: stages: must be a list of 1 to 20 stages" in text
