"""The journey map's figures against a seeded set of journey counters whose expected
values this module computes on its own (plain sums over the seeded cells, the Beta and
Dirichlet posteriors written out), through the JSON API on each database: reach, step
conversion, mean rating, top-box share and NPS; a period boundary, a rating that moved
days, the unknown persona, a stage without a question, stale cells the journey no
longer has; persona filters and comparisons; pain points; bad parameters; and that
the map reads the counters in one statement, never events or outcomes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import pairwise

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sqlalchemy import select

from analysis.types import Scale
from expplatform.journey_map import (
    Counts,
    JourneyShape,
    MapOptions,
    PersonaShape,
    QuestionShape,
    StageShape,
    build_map,
)
from expplatform.models import (
    Journey,
    JourneyCount,
    JourneyPersona,
    JourneyStage,
    RatingQuestion,
    utcnow,
)

from .assign_support import statements
from .openapi_check import assert_matches_openapi

STAGES = (
    ("discover", "Discover", "Finds the shop", ["search ad", "social post"]),
    ("compare", "Compare", "Opens two product pages", ["product page"]),
    ("buy", "Buy", "Places an order", ["checkout", "payment"]),
    ("return", "Come back", "Orders again", ["email"]),
)
# key -> (stage, scale); 'compare' has no question.
QUESTIONS = {
    "discover-csat": ("discover", 1, 5),
    "buy-nps": ("buy", 0, 10),
    "buy-ease": ("buy", 1, 3),
    "return-csat": ("return", 1, 5),
}
PERSONAS = (("new", "New customers"), ("returning", "Returning customers"))


@dataclass(frozen=True)
class Cell:
    stage: str
    metric: str  # '' for conversions
    persona: str  # '' unknown
    ago: int  # days before today
    kind: str
    value: int
    customers: int


def conversions(persona: str, stage: str, by_day: dict[int, int]) -> list[Cell]:
    return [Cell(stage, "", persona, ago, "converted", 0, n) for ago, n in by_day.items()]


def ratings(persona: str, question: str, ago: int, histogram: dict[int, int]) -> list[Cell]:
    stage = QUESTIONS[question][0]
    return [Cell(stage, question, persona, ago, "rating", value, n) for value, n in histogram.items()]


CELLS: list[Cell] = [
    # Conversions. 'new' at discover: 900 more 28 days ago, just outside the default 28-day period.
    *conversions("new", "discover", {0: 400, 10: 500, 27: 100, 28: 900}),
    *conversions("new", "compare", {0: 300, 10: 300, 28: 50}),
    *conversions("new", "buy", {1: 120}),
    *conversions("new", "return", {1: 30}),
    *conversions("returning", "discover", {1: 1000}),
    *conversions("returning", "compare", {1: 300}),
    *conversions("returning", "buy", {1: 60}),
    *conversions("returning", "return", {1: 48}),
    # Unknown persona: more customers reach 'buy' than 'compare' (they skip it), few overall.
    *conversions("", "discover", {1: 40}),
    *conversions("", "compare", {1: 5}),
    *conversions("", "buy", {1: 8}),
    # Ratings. One 'new' customer rated 1 twenty-eight days ago and 4 today: the old cell
    # was moved to today's (left at 0 customers), so they count once, as a 4, today.
    *ratings("new", "discover-csat", 0, {5: 300, 4: 101, 3: 50, 2: 30, 1: 20}),
    *ratings("new", "discover-csat", 28, {1: 0, 3: 10}),
    *ratings("returning", "discover-csat", 1, {1: 200, 2: 200, 3: 60, 4: 30, 5: 10}),
    *ratings("", "discover-csat", 1, {3: 4, 4: 3}),
    *ratings("new", "buy-nps", 1, {10: 40, 9: 20, 8: 20, 7: 10, 5: 5, 0: 5}),
    *ratings("returning", "buy-nps", 1, {10: 10, 9: 10, 8: 20, 6: 10}),
    *ratings("new", "buy-ease", 1, {3: 50, 2: 30, 1: 20}),
    *ratings("returning", "buy-ease", 1, {3: 25, 2: 15, 1: 10}),
    *ratings("new", "return-csat", 1, {5: 10, 4: 10, 3: 5}),
]
# Cells of things the journey no longer has: a removed stage, a removed question, a
# rating outside its question's scale. The map leaves them out.
STALE: list[Cell] = [
    *conversions("new", "legacy", {1: 999}),
    Cell("discover", "gone-question", "new", 1, "rating", 3, 50),
    Cell("buy", "buy-nps", "new", 1, "rating", 11, 7),
]


def seed(db, today: date, *, key: str = "shop", cells: Iterable[Cell] = (*CELLS, *STALE)) -> int:
    with db.write() as session:
        journey = Journey(key=key, name="Online shop", description="From first visit to repeat order.")
        journey.stages = [
            JourneyStage(key=k, name=name, position=i, goal=goal, touchpoints=points)
            for i, (k, name, goal, points) in enumerate(STAGES)
        ]
        journey.personas = [JourneyPersona(key=k, name=name, position=i) for i, (k, name) in enumerate(PERSONAS)]
        journey.questions = [
            RatingQuestion(
                key=f"{key}-{q}" if key != "shop" else q,
                stage=stage,
                text=f"How was {stage}?",
                scale_min=low,
                scale_max=high,
                position=i,
            )
            for i, (q, (stage, low, high)) in enumerate(QUESTIONS.items())
        ]
        session.add(journey)
        session.flush()
        session.add_all(
            JourneyCount(
                journey_id=journey.id,
                stage=c.stage,
                metric=c.metric if key == "shop" or not c.metric else f"{key}-{c.metric}",
                persona=c.persona,
                day=today - timedelta(days=c.ago),
                kind=c.kind,
                value=c.value,
                customers=c.customers,
            )
            for c in cells
        )
        return journey.id


@pytest.fixture
def today() -> date:
    return utcnow().date()


@pytest.fixture
def shop(db, today):
    seed(db, today)
    # Another journey with the same stage keys: its counts must not leak into this one.
    seed(db, today, key="other", cells=[*conversions("new", "discover", {1: 5000})])


# -- what the test expects, computed from the cells ---------------------------------------------


def in_period(cell: Cell, first: int, last: int, personas: set[str] | None) -> bool:
    """``first``/``last``: days ago (first >= last)."""
    return last <= cell.ago <= first and (personas is None or cell.persona in personas)


def expected_reach(stage: str, first: int = 27, last: int = 0, personas: set[str] | None = None) -> int:
    return sum(
        c.customers for c in CELLS if c.kind == "converted" and c.stage == stage and in_period(c, first, last, personas)
    )


def expected_histogram(question: str, first: int = 27, last: int = 0, personas: set[str] | None = None) -> np.ndarray:
    _stage, low, high = QUESTIONS[question]
    histogram = np.zeros(high - low + 1)
    for c in CELLS:
        if c.kind == "rating" and c.metric == question and in_period(c, first, last, personas):
            histogram[c.value - low] += c.customers
    return histogram


def beta_figures(this: int, following: int) -> tuple[float, float, float]:
    a, b = 1 + following, 1 + max(this - following, 0)
    low, high = scipy_stats.beta.ppf([0.025, 0.975], a, b)
    return a / (a + b), low, high


def dirichlet_mean(histogram: np.ndarray, low: int) -> tuple[float, float]:
    """Posterior mean of the mean rating under Dirichlet(histogram + 1/K) (a prior
    worth one rating) and its standard deviation (closed form)."""
    values = np.arange(low, low + len(histogram))
    alpha = histogram + 1 / len(histogram)
    total = alpha.sum()
    mean = alpha @ values / total
    second = alpha @ values**2 / total
    return mean, np.sqrt((second - mean**2) / (total + 1))


def reference_means(histogram: np.ndarray, low: int, draws: int = 200_000) -> np.ndarray:
    """Draws of the mean rating under Dirichlet(histogram + 1/K), as normalised gammas."""
    gammas = np.random.default_rng(12345).gamma(histogram + 1 / len(histogram), size=(draws, len(histogram)))
    return (gammas / gammas.sum(axis=1, keepdims=True)) @ np.arange(low, low + len(histogram))


def stage_of(body: dict, stage: str, group: int = 0) -> dict:
    return next(s for s in body["groups"][group]["stages"] if s["stage"] == stage)


def question_of(body: dict, stage: str, question: str, group: int = 0) -> dict:
    return next(q for q in stage_of(body, stage, group)["questions"] if q["key"] == question)


def get_map(admin_api, query: str = "", status: int = 200) -> dict:
    response = admin_api.get(f"/api/v1/journeys/shop/map{query}")
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert_matches_openapi(response)
    return response.get_json()


# -- the figures --------------------------------------------------------------------------------


def test_reach_and_step_conversion_for_everyone_in_the_default_period(shop, admin_api, today):
    body = get_map(admin_api)
    assert body["period"] == {"from": (today - timedelta(days=27)).isoformat(), "to": today.isoformat(), "days": 28}
    assert body["persona"] == "all" and body["compare"] is None and len(body["groups"]) == 1
    assert [s["key"] for s in body["stages"]] == [k for k, *_ in STAGES]
    buy = body["stages"][2]
    assert buy["touchpoints"] == ["checkout", "payment"] and buy["goal"] == "Places an order" and buy["name"] == "Buy"
    reached = {s["stage"]: s["reached"] for s in body["groups"][0]["stages"]}
    # By hand: discover 400 + 500 + 100 (new) + 1000 (returning) + 40 (unknown); not the
    # 900 of 28 days ago, not the other journey's 5000, not the removed stage.
    assert reached == {"discover": 2040, "compare": 905, "buy": 188, "return": 78}
    assert reached == {k: expected_reach(k) for k, *_ in STAGES}
    for (stage, *_), (following, *_) in pairwise(STAGES):
        step = stage_of(body, stage)["step"]
        this, nxt = reached[stage], reached[following]
        assert step["to_stage"] == following and (step["reached"], step["continued"]) == (this, nxt)
        assert step["observed"] == pytest.approx(nxt / this)
        mean, low, high = beta_figures(this, nxt)
        assert step["conversion"] == pytest.approx({"mean": mean, "low": low, "high": high}, rel=1e-6)
        assert step["drop_off"] == pytest.approx({"mean": 1 - mean, "low": 1 - high, "high": 1 - low}, rel=1e-6)
        assert step["skipped"] is False and step["enough_data"] is True
    assert stage_of(body, "return")["step"] is None  # the last stage goes nowhere


def test_ratings_mean_top_box_and_nps_with_their_posteriors(shop, admin_api):
    body = get_map(admin_api)
    for question, (stage, low, high) in QUESTIONS.items():
        figures = question_of(body, stage, question)
        histogram = expected_histogram(question)
        n = histogram.sum()
        values = np.arange(low, high + 1)
        assert figures["histogram"] == histogram.astype(int).tolist() and figures["rated"] == n
        assert figures["observed_mean"] == pytest.approx(histogram @ values / n)
        mean, sd = dirichlet_mean(histogram, low)
        assert figures["mean"]["mean"] == pytest.approx(mean)
        # The interval's ends against a reference of 200,000 draws of our own: the map's
        # 4,000 draws put a 2.5% quantile within about 0.045 sd of it (standard error);
        # 0.15 sd is over three of them. (A normal approximation would be off by that
        # much on its own for the skewed 0-10 ratings.)
        reference = np.quantile(reference_means(histogram, low), [0.025, 0.975])
        assert figures["mean"]["low"] == pytest.approx(reference[0], abs=0.15 * sd)
        assert figures["mean"]["high"] == pytest.approx(reference[1], abs=0.15 * sd)
        assert abs(figures["mean"]["low"] - (mean - 1.96 * sd)) < 0.3 * sd  # and roughly normal
        span = high - low
        assert figures["satisfaction"]["mean"] == pytest.approx((mean - low) / span)
        # Top box: the top two ratings on 5+ point scales, the top one on 1-3.
        top_min = high - 1 if high - low + 1 >= 5 else high
        assert figures["top_box_min"] == top_min
        top = values >= top_min
        assert figures["observed_top_box"] == pytest.approx(histogram[top].sum() / n)
        alpha = histogram + 1 / len(histogram)
        a, b = alpha[top].sum(), alpha[~top].sum()
        assert figures["top_box"]["mean"] == pytest.approx(a / (a + b))
        assert figures["top_box"]["low"] == pytest.approx(scipy_stats.beta.ppf(0.025, a, b), rel=1e-6)
        if (low, high) == (0, 10):
            promoters, detractors = histogram[values >= 9].sum(), histogram[values <= 6].sum()
            assert figures["observed_nps"] == pytest.approx(100 * (promoters - detractors) / n)
            weights = np.where(values >= 9, 100, np.where(values <= 6, -100, 0))
            assert figures["nps"]["mean"] == pytest.approx(alpha @ weights / alpha.sum())
            assert figures["nps"]["low"] < figures["nps"]["mean"] < figures["nps"]["high"]
        else:
            assert figures["nps"] is None and figures["observed_nps"] is None
    # Literal checks of the hand sums: NPS of buy for everyone (new 60-10, returning 20-10, of 150).
    nps = question_of(body, "buy", "buy-nps")
    assert nps["rated"] == 150 and nps["observed_nps"] == pytest.approx(100 * (80 - 20) / 150)
    ease = question_of(body, "buy", "buy-ease")
    assert ease["top_box_min"] == 3 and ease["observed_top_box"] == pytest.approx(75 / 150)
    # The out-of-scale rating 11 and the removed question are left out.
    assert sum(nps["histogram"]) == 150
    assert [q["key"] for q in stage_of(body, "discover")["questions"]] == ["discover-csat"]


def test_a_stage_without_a_question_has_no_satisfaction_and_stage_satisfaction_averages_questions(shop, admin_api):
    body = get_map(admin_api)
    compare = stage_of(body, "compare")
    assert compare["questions"] == [] and compare["satisfaction"] is None
    assert body["stages"][1]["questions"] == []
    buy = stage_of(body, "buy")
    scaled = [q["satisfaction"]["mean"] for q in buy["questions"]]
    assert buy["satisfaction"]["mean"] == pytest.approx(sum(scaled) / 2)
    # Observed: NPS question mean 8.3 of 0-10 (0.83), ease 2.3 of 1-3 (0.65).
    assert buy["observed_satisfaction"] == pytest.approx((0.83 + 0.65) / 2)
    assert buy["satisfaction"]["low"] < buy["satisfaction"]["mean"] < buy["satisfaction"]["high"]
    # 25 ratings at 'return': figures shown, but not enough to name a pain point.
    back = question_of(body, "return", "return-csat")
    assert back["rated"] == 25 and back["enough_data"] is False
    assert stage_of(body, "return")["satisfaction_enough_data"] is False


def test_period_boundaries_and_a_rating_that_moved_days(shop, admin_api, today):
    def day(ago: int) -> str:
        return (today - timedelta(days=ago)).isoformat()

    body = get_map(admin_api, "?persona=new&days=29")
    assert stage_of(body, "discover")["reached"] == 400 + 500 + 100 + 900 == expected_reach("discover", 28, 0, {"new"})
    body = get_map(admin_api, "?persona=new")
    assert stage_of(body, "discover")["reached"] == 1000
    # Only the day 28 days ago: 900 customers, and the ratings of that day: 10 threes. The
    # customer whose rating of 1 moved to today is not among them.
    body = get_map(admin_api, f"?persona=new&from={day(28)}&to={day(28)}")
    assert body["period"] == {"from": day(28), "to": day(28), "days": 1}
    assert stage_of(body, "discover")["reached"] == 900 and stage_of(body, "compare")["reached"] == 50
    csat = question_of(body, "discover", "discover-csat")
    assert csat["histogram"] == [0, 0, 10, 0, 0] and csat["observed_mean"] == 3.0
    # ... and today they count once, as a 4.
    body = get_map(admin_api, f"?persona=new&from={day(0)}&to={day(0)}")
    csat = question_of(body, "discover", "discover-csat")
    assert csat["histogram"] == [20, 30, 50, 101, 300] and csat["rated"] == 501
    # `to` with `days`: the period ends there.
    body = get_map(admin_api, f"?persona=new&days=2&to={day(9)}")
    assert body["period"] == {"from": day(10), "to": day(9), "days": 2}
    assert stage_of(body, "discover")["reached"] == 500
    # A period with no data: zero customers, no estimates, nothing to point at.
    body = get_map(admin_api, f"?from={day(60)}&to={day(50)}")
    assert all(s["reached"] == 0 for s in body["groups"][0]["stages"])
    assert stage_of(body, "discover")["step"]["conversion"] is None
    assert question_of(body, "discover", "discover-csat")["mean"] is None
    pains = body["groups"][0]["pain_points"]
    assert pains["drop_off"]["status"] == pains["satisfaction"]["status"] == "not_enough_data"
    assert "Not enough data" in pains["drop_off"]["message"]


# -- personas -----------------------------------------------------------------------------------


def test_persona_filter_and_the_unknown_persona(shop, admin_api):
    body = get_map(admin_api, "?persona=returning")
    assert body["persona"] == "returning" and body["groups"][0]["label"] == "Returning customers"
    assert {s["stage"]: s["reached"] for s in body["groups"][0]["stages"]} == {
        "discover": 1000,
        "compare": 300,
        "buy": 60,
        "return": 48,
    }
    csat = question_of(body, "discover", "discover-csat")
    assert csat["histogram"] == expected_histogram("discover-csat", personas={"returning"}).astype(int).tolist()

    body = get_map(admin_api, "?persona=unknown")
    assert body["persona"] == "unknown" and body["groups"][0]["persona"] == "unknown"
    reached = {s["stage"]: s["reached"] for s in body["groups"][0]["stages"]}
    assert reached == {"discover": 40, "compare": 5, "buy": 8, "return": 0}
    # More customers reach 'buy' than 'compare': said, and the ratio is still the posterior's.
    step = stage_of(body, "compare")["step"]
    assert step["skipped"] is True and step["observed"] == pytest.approx(8 / 5)
    assert step["conversion"]["mean"] == pytest.approx(9 / 10)  # Beta(1 + 8, 1 + 0)
    assert step["enough_data"] is False
    pains = body["groups"][0]["pain_points"]
    assert pains["drop_off"]["stage"] == "discover" and "only stage with enough data" in pains["drop_off"]["message"]
    assert pains["satisfaction"]["status"] == "not_enough_data"  # 7 ratings
    counts = {p["key"]: p["first_stage_customers"] for p in body["personas"]}
    assert counts == {"new": 1000, "returning": 1000, "unknown": 40}


def test_comparison_marks_a_credible_difference_and_not_a_null_one(shop, admin_api):
    body = get_map(admin_api, "?persona=new&compare=returning")
    assert [g["key"] for g in body["groups"]] == ["new", "returning"]
    differences = {d["stage"]: d for d in body["differences"]}
    # discover -> compare: 60% against 30%: credible.
    conversion = differences["discover"]["conversion"]
    assert conversion["credible"] is True
    assert conversion["difference"]["mean"] == pytest.approx(beta_figures(1000, 600)[0] - beta_figures(1000, 300)[0])
    assert conversion["observed"] == pytest.approx(0.6 - 0.3) and conversion["difference"]["low"] > 0.25
    # compare -> buy: 120/600 and 60/300, both 20%: not credible, the interval spans 0.
    null = differences["compare"]["conversion"]
    assert null["credible"] is False and null["difference"]["low"] < 0 < null["difference"]["high"]
    # buy -> return: 25% against 80%: credible, negative.
    assert differences["buy"]["conversion"]["credible"] is True
    assert differences["buy"]["conversion"]["difference"]["high"] < 0
    assert differences["return"]["conversion"] is None  # the last stage has no step
    ratings = {r["question"]: r for d in body["differences"] for r in d["mean_ratings"]}
    assert ratings["discover-csat"]["credible"] is True and ratings["discover-csat"]["difference"]["low"] > 2
    new_mean = dirichlet_mean(expected_histogram("discover-csat", personas={"new"}), 1)[0]
    returning_mean = dirichlet_mean(expected_histogram("discover-csat", personas={"returning"}), 1)[0]
    assert ratings["discover-csat"]["difference"]["mean"] == pytest.approx(new_mean - returning_mean)
    # Same distribution of ease ratings (50/30/20 and 25/15/10): not credible.
    assert ratings["buy-ease"]["credible"] is False
    assert ratings["buy-ease"]["difference"]["low"] < 0 < ratings["buy-ease"]["difference"]["high"]
    # No return ratings from returning customers: no difference to show.
    assert ratings["return-csat"]["difference"] is None and ratings["return-csat"]["credible"] is False
    # A persona's figures are the same alone and beside another (draws seeded by what they describe).
    alone = get_map(admin_api, "?persona=new")
    assert alone["groups"][0]["stages"] == body["groups"][0]["stages"]


def test_comparison_with_everyone_is_everyone_else(shop, admin_api):
    body = get_map(admin_api, "?compare=new")
    first, second = body["groups"]
    assert first["persona"] is None and first["excluding"] == "new" and second["persona"] == "new"
    reached = {s["stage"]: s["reached"] for s in first["stages"]}
    assert reached == {k: expected_reach(k, personas={"returning", ""}) for k, *_ in STAGES}


# -- pain points ------------------------------------------------------------------------------


def test_pain_points_name_the_worst_stage_with_its_probability(shop, admin_api):
    pains = get_map(admin_api)["groups"][0]["pain_points"]
    drop = pains["drop_off"]
    # 2040 -> 905 -> 188 -> 78: compare -> buy loses 79%, far more than the others.
    assert drop["status"] == "ok" and drop["stage"] == "compare" and drop["p_worst"] > 0.999
    assert drop["value"]["mean"] == pytest.approx(1 - beta_figures(905, 188)[0])
    assert drop["observed"] == pytest.approx(1 - 188 / 905)
    assert "from Compare to Buy: 79.2% of the customers" in drop["message"] and "> 0.999" in drop["message"]
    satisfaction = pains["satisfaction"]
    # discover's mean rating is about 3.08 of 1-5 (0.52); buy's questions average about 0.74;
    # return has too few ratings to be named.
    assert satisfaction["stage"] == "discover" and satisfaction["p_worst"] > 0.999
    assert satisfaction["value"]["mean"] == pytest.approx(
        (dirichlet_mean(expected_histogram("discover-csat"), 1)[0] - 1) / 4
    )
    # Observed: (2134 + 950 + 24) / 1008 ratings = 3.083 of 1-5: 0.52 on the 0-1 axis.
    assert satisfaction["observed"] == pytest.approx((3108 / 1008 - 1) / 4)
    assert "at Discover: 0.52 on the 0-1 scale" in satisfaction["message"]


def test_a_close_call_says_it_is_not_settled(shop, admin_api):
    # New customers: compare -> buy loses 80% of 600, buy -> return 75% of 120.
    drop = get_map(admin_api, "?persona=new")["groups"][0]["pain_points"]["drop_off"]
    assert drop["stage"] == "compare" and drop["runner_up"] == "buy"
    assert 0.6 < drop["p_worst"] < 0.97 and drop["p_worst"] + drop["p_runner_up"] == pytest.approx(1, abs=0.01)
    assert "not settled: Buy to Come back could be (" in drop["message"]


def test_pure_map_with_a_near_tie_and_a_one_stage_journey():
    shape = JourneyShape(
        "j",
        "J",
        "",
        "persona",
        (StageShape("a", "A", "", ()), StageShape("b", "B", "", ()), StageShape("c", "C", "", ())),
        (QuestionShape("qa", "a", "?", Scale(1, 5)), QuestionShape("qc", "c", "?", Scale(1, 5))),
        (PersonaShape("p", "P"),),
    )
    options = MapOptions.parse({}, ["p"], date(2026, 1, 31))
    counts = Counts({"a": 1000, "b": 500, "c": 250}, {"qa": [0, 0, 100, 0, 0], "qc": [0, 0, 100, 0, 0]})
    built = build_map(shape, options, {"p": counts})
    drop, satisfaction = built.groups[0].drop_off, built.groups[0].satisfaction
    # Two steps of exactly 50%: either could be the worst.
    assert 0.3 < drop.p_worst < 0.7 and drop.runner_up is not None and "not settled" in drop.message
    assert 0.3 < satisfaction.p_worst < 0.7
    again = build_map(shape, options, {"p": counts})
    assert again.groups == built.groups  # seeded: the same data gives the same numbers
    one = JourneyShape("k", "K", "", "persona", (StageShape("a", "A", "", ()),), (), ())
    alone = build_map(one, MapOptions.parse({}, [], date(2026, 1, 31)), {"": Counts({"a": 5})}).groups[0]
    assert alone.drop_off.status == alone.satisfaction.status == "not_applicable"


# -- requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?days=0", "days"),
        ("?days=367", "days"),
        ("?days=seven", "days"),
        ("?days=-3", "days"),
        ("?days=%C2%B2", "days"),  # a superscript two: a digit to str.isdigit, not to int()
        ("?days=%D9%A3", "days"),  # an Arabic-Indic three
        ("?days=0028", "days"),
        ("?from=%EF%BC%92026-01-01", "from"),  # a fullwidth digit
        ("?from=2026-02-30", "from"),
        ("?from=yesterday", "from"),
        ("?to=20260101", "to"),
        ("?from=2025-01-01&to=2024-01-01", "from"),
        ("?from=2024-01-01&to=2025-06-01", "from"),
        ("?from=2025-01-01&days=3", "days"),
        ("?persona=vip", "persona"),
        ("?compare=vip", "compare"),
        ("?compare=all", "compare"),
        ("?persona=new&compare=new", "compare"),
        ("?persona=unknown&compare=unknown", "compare"),
        ("?segment=platform", "segment"),
    ],
)
def test_bad_parameters_are_400_with_the_field_named(shop, admin_api, query, field):
    body = get_map(admin_api, query, status=400)
    assert body["error"] == "validation_failed" and field in body["fields"], body


def test_unknown_journey_is_a_404_and_reading_needs_a_reader(shop, admin_api, client, client_key, login):
    response = admin_api.get("/api/v1/journeys/nope/map")
    assert response.status_code == 404 and response.get_json()["error"] == "journey_not_found"
    assert_matches_openapi(response)
    assert client.get("/api/v1/journeys/shop/map").status_code == 401
    forbidden = client.get("/api/v1/journeys/shop/map", headers={"Authorization": f"Bearer {client_key}"})
    assert forbidden.status_code == 403 and forbidden.get_json()["error"] == "forbidden"
    login("viewer")
    assert client.get("/api/v1/journeys/shop/map").status_code == 200


def test_the_map_reads_the_counters_in_one_statement(shop, admin_api, db):
    with statements(db) as seen:
        get_map(admin_api, "?persona=new&compare=returning")
    counters = [s for s in seen if "journey_counts" in s]
    assert len(counters) == 1 and "GROUP BY" in counters[0].upper()
    for table in ("events", "outcomes", "journey_outcomes", "outcome_counts", "exposures"):
        assert not any(f"FROM {table}" in s or f"JOIN {table}" in s for s in seen), table


def test_a_persona_the_journey_no_longer_has_counts_as_unknown(db, admin_api, today):
    seed(db, today, cells=[*CELLS, *conversions("vip", "discover", {1: 7})])
    body = get_map(admin_api, "?persona=unknown")
    assert stage_of(body, "discover")["reached"] == 40 + 7
    assert stage_of(get_map(admin_api), "discover")["reached"] == 2040 + 7


def test_a_question_with_a_wide_scale_is_read_a_row_per_value(db, admin_api, today):
    """More rating values than MAX_PIVOT columns: the other form of the statement,
    with the same figures."""
    with db.write() as session:
        journey = Journey(key="wide", name="Wide")
        journey.stages = [JourneyStage(key="visit", name="Visit", position=0)]
        journey.questions = [
            RatingQuestion(key="wide-score", stage="visit", text="Score?", scale_min=1, scale_max=40, position=0)
        ]
        session.add(journey)
        session.flush()
        day = today - timedelta(days=1)
        session.add_all(
            JourneyCount(
                journey_id=journey.id,
                stage="visit",
                metric=metric,
                persona="",
                day=day,
                kind=kind,
                value=v,
                customers=n,
            )
            for metric, kind, v, n in (
                ("", "converted", 0, 90),
                ("wide-score", "rating", 40, 30),
                ("wide-score", "rating", 3, 10),
                ("wide-score", "rating", 41, 5),
            )
        )
    response = admin_api.get("/api/v1/journeys/wide/map")
    assert response.status_code == 200
    stage = response.get_json()["groups"][0]["stages"][0]
    histogram = stage["questions"][0]["histogram"]
    assert stage["reached"] == 90 and len(histogram) == 40
    assert (histogram[2], histogram[39], sum(histogram)) == (10, 30, 40)  # 41 is off the scale
    assert stage["questions"][0]["observed_mean"] == pytest.approx((3 * 10 + 40 * 30) / 40)
    assert stage["questions"][0]["top_box_min"] == 39


# -- the experiments testing each stage --------------------------------------------------------


def add_experiment(session, journey_id: int, key: str, status: str, target: str, **fields):
    from expplatform.models import Experiment, Variant

    now = utcnow()
    experiment = Experiment(
        key=key,
        name=key.title(),
        journey_id=journey_id,
        stages=[k for k, *_ in STAGES],
        target_stage=target,
        salt=key,
        status=status,
        started_at=None if status == "draft" else now - timedelta(days=30),
        **fields,
    )
    experiment.variants = [
        Variant(key="control", weight=1, position=0, is_control=True),
        Variant(key="treatment", weight=1, position=1),
    ]
    session.add(experiment)
    session.flush()
    return experiment


def seed_experiments(db, journey_id: int, iterations: int = 4) -> None:
    """At 'buy': a running, a paused and a draft experiment, and a clone chain of
    ``iterations`` stopped iterations then a draft one; at 'discover' one stopped."""
    now = utcnow()
    with db.write() as session:
        add_experiment(session, journey_id, "buy-banner", "running", "buy")
        add_experiment(session, journey_id, "buy-wallet", "paused", "buy")
        add_experiment(session, journey_id, "buy-idea", "draft", "buy")
        previous = None
        for n in range(1, iterations + 1):
            add_experiment(
                session,
                journey_id,
                f"buy-v{n}",
                "stopped",
                "buy",
                cloned_from=previous,
                stopped_at=now - timedelta(days=iterations + 1 - n),
                created_at=now - timedelta(days=40 - n),
            )
            previous = f"buy-v{n}"
        add_experiment(session, journey_id, f"buy-v{iterations + 1}", "draft", "buy", cloned_from=previous)
        add_experiment(session, journey_id, "discover-ad", "stopped", "discover", stopped_at=now)


def fake_measure(calls: list[str]):
    from analysis.types import Estimate
    from expplatform.journey_map import Measured, TreatmentLift

    def measure(experiment):
        calls.append(experiment.key)
        if experiment.key == "discover-ad":
            return None  # could not be analysed
        n = int(experiment.key.rsplit("v", 1)[1])
        lift = Estimate(n / 100, n / 100 - 0.01, n / 100 + 0.01)
        return Measured(
            "ship" if n % 2 else "keep_control", f"summary {n}", (TreatmentLift("treatment", lift, 0.9, None),)
        )

    return measure


def test_each_stage_lists_active_and_latest_stopped_experiments_and_iterations(app, db, today):
    from expplatform.journey_map import stage_tests
    from expplatform.journeys import get_journey

    seed_experiments(db, seed(db, today))
    calls: list[str] = []
    with app.app_context(), db.sessionmaker() as session:
        tests = stage_tests(session, get_journey(session, "shop"), fake_measure(calls))
    buy = tests["buy"]
    assert [(e.key, e.status) for e in buy.active] == [("buy-banner", "running"), ("buy-wallet", "paused")]
    assert [e.key for e in buy.stopped] == ["buy-v4", "buy-v3", "buy-v2"] and buy.stopped_total == 4
    assert buy.stopped[0].measured.treatments[0].lift.mean == pytest.approx(0.04)
    assert buy.stopped[0].measured.action == "keep_control" and buy.stopped[1].measured.action == "ship"
    # The clone chain, oldest first, with the draft that is its next iteration.
    (chain,) = buy.iterations
    assert [e.key for e in chain] == ["buy-v1", "buy-v2", "buy-v3", "buy-v4", "buy-v5"] and buy.earlier == (0,)
    assert chain[0].measured.treatments[0].lift.mean == pytest.approx(0.01) and chain[-1].measured is None
    # Each stopped experiment shown is analysed once; drafts and running ones never.
    assert sorted(calls) == ["buy-v1", "buy-v2", "buy-v3", "buy-v4", "discover-ad"]
    discover = tests["discover"]
    assert discover.stopped[0].measured is None and "could not be analysed" in discover.stopped[0].note
    assert tests["compare"].active == tests["compare"].stopped == () and tests["compare"].iterations == ()


def test_a_long_chain_shows_its_latest_iterations(app, db, today):
    from expplatform.journey_map import SHOWN_ITERATIONS, stage_tests
    from expplatform.journeys import get_journey

    seed_experiments(db, seed(db, today), iterations=8)
    with app.app_context(), db.sessionmaker() as session:
        buy = stage_tests(session, get_journey(session, "shop"), fake_measure([]))["buy"]
    (chain,) = buy.iterations
    assert len(chain) == SHOWN_ITERATIONS == 6 and buy.earlier == (3,)
    assert [e.key for e in chain] == [f"buy-v{n}" for n in range(4, 10)]


def test_the_api_shows_the_experiments_with_their_report_links(shop, db, admin_api, monkeypatch):
    import expplatform.journey_map as journey_map

    calls: list[str] = []
    monkeypatch.setattr(journey_map, "_measure", lambda _session, experiment: fake_measure(calls)(experiment))
    with db.sessionmaker() as session:
        journey_id = session.scalar(select(Journey.id).where(Journey.key == "shop"))
    seed_experiments(db, journey_id)
    body = get_map(admin_api)
    buy = next(s for s in body["stages"] if s["key"] == "buy")["experiments"]
    assert [e["key"] for e in buy["active"]] == ["buy-banner", "buy-wallet"]
    assert buy["active"][0]["report_url"] == "/experiments/buy-banner/report" and buy["active"][0]["measured"] is None
    latest = buy["stopped"][0]
    assert latest["key"] == "buy-v4" and latest["measured"]["action"] == "keep_control"
    assert latest["measured"]["treatments"] == [
        {
            "variant": "treatment",
            "relative_lift": {"mean": 0.04, "low": 0.03, "high": 0.05},
            "p_better": 0.9,
            "decision": None,
        }
    ]
    assert [[e["key"] for e in chain["experiments"]] for chain in buy["iterations"]] == [
        ["buy-v1", "buy-v2", "buy-v3", "buy-v4", "buy-v5"]
    ]
    # Measured once per worker: a second request analyses nothing again.
    before = len(calls)
    get_map(admin_api)
    assert len(calls) == before


def test_events_sent_through_ingest_show_on_the_map(db, admin_api, client_api, today):
    """End to end with the real ingest: customers assigned with a persona (one whose
    value is not the journey's, one never assigned), events sent to the API, a rating
    replaced days later; the map counts each customer once, where ingest put them."""
    from expplatform.versioning import bump_version

    seed(db, today, cells=[])
    with db.write() as session:
        bump_version(session)  # the journeys' catalog is cached per definitions version
    created = admin_api.post(
        "/api/v1/experiments",
        json={
            "key": "buy-button",
            "name": "Buy button",
            "journey": "shop",
            "target_stage": "buy",
            "variants": [{"key": "control", "weight": 0.5}, {"key": "big", "weight": 0.5}],
        },
    )
    assert created.status_code == 201, created.get_json()
    assert admin_api.post("/api/v1/experiments/buy-button/start").status_code == 200
    for customer, persona in (("c1", "new"), ("c2", "returning"), ("c3", "vip")):
        response = client_api.post("/api/v1/assign", json={"customer_id": customer, "attributes": {"persona": persona}})
        assert response.status_code == 200, response.get_json()
    three_days_ago = (utcnow() - timedelta(days=3)).isoformat().replace("+00:00", "Z")

    def conversion(n, customer, stage, **extra):
        return {"event_id": f"e{n}", "customer_id": customer, "stage": stage, "type": "conversion", **extra}

    def rating(n, customer, value, **extra):
        return {
            "event_id": f"e{n}",
            "customer_id": customer,
            "stage": "discover",
            "type": "satisfaction",
            "metric": "discover-csat",
            "value": value,
            **extra,
        }

    events = [
        conversion(1, "c1", "discover"),
        conversion(2, "c1", "compare"),
        rating(3, "c1", 4),
        conversion(4, "c1", "discover"),  # again: still one customer
        conversion(5, "c2", "discover"),
        rating(6, "c2", 2),
        conversion(7, "c3", "discover"),
        conversion(8, "c4", "discover", timestamp=three_days_ago),
        rating(9, "c4", 1, timestamp=three_days_ago),
        rating(10, "c4", 5),  # replaces the 1, today
    ]
    response = client_api.post("/api/v1/events", json={"events": events})
    assert response.status_code == 200 and not response.get_json()["rejected"], response.get_json()

    body = get_map(admin_api)
    assert stage_of(body, "discover")["reached"] == 4 and stage_of(body, "compare")["reached"] == 1
    assert question_of(body, "discover", "discover-csat")["histogram"] == [0, 1, 0, 1, 1]
    body = get_map(admin_api, "?days=1")  # today: c4's conversion was three days ago, its rating moved here
    assert stage_of(body, "discover")["reached"] == 3
    assert question_of(body, "discover", "discover-csat")["histogram"] == [0, 1, 0, 1, 1]
    day = (today - timedelta(days=3)).isoformat()
    body = get_map(admin_api, f"?from={day}&to={day}")
    assert stage_of(body, "discover")["reached"] == 1
    assert question_of(body, "discover", "discover-csat")["rated"] == 0
    body = get_map(admin_api, "?persona=new")
    assert (stage_of(body, "discover")["reached"], stage_of(body, "compare")["reached"]) == (1, 1)
    assert question_of(body, "discover", "discover-csat")["histogram"] == [0, 0, 0, 1, 0]
    body = get_map(admin_api, "?persona=unknown")  # c3 (persona 'vip', not the journey's) and c4 (never assigned)
    assert stage_of(body, "discover")["reached"] == 2
    assert question_of(body, "discover", "discover-csat")["histogram"] == [0, 0, 0, 0, 1]


def test_a_stopped_experiment_shows_the_lift_and_decision_of_its_report(app, db, admin_api, today):
    """Exposures and outcome counters written as ingest keeps them, the experiment
    stopped: the map's lift, P(better), decision and action at its stage are exactly
    its report's (GET /experiments/<key>/report)."""
    from expplatform.models import OutcomeCount

    from .events_support import expose, make_experiment

    converted = {"control": 90, "treatment": 150}
    with db.write() as session:
        experiment = make_experiment(
            session,
            "cart-cta",
            stages=("browse", "cart", "purchase"),
            target_stage="cart",
            status="stopped",
            started_at=utcnow() - timedelta(days=5),
            stopped_at=utcnow() - timedelta(days=1),
        )
        for variant in experiment.variants:
            for i in range(600):
                expose(session, experiment, f"{variant.key}-{i}", variant.key, exposed_at=utcnow() - timedelta(days=4))
            session.add(
                OutcomeCount(
                    experiment_id=experiment.id,
                    stage="cart",
                    variant_id=variant.id,
                    day=today - timedelta(days=3),
                    kind="converted",
                    value=0,
                    customers=converted[variant.key],
                )
            )
        journey_key = experiment.journey.key
    report = admin_api.get("/api/v1/experiments/cart-cta/report").get_json()
    cart = next(s for s in report["result"]["stages"] if s["stage"] == "cart")
    comparison = next(m for m in cart["metrics"] if m["metric"] == "conversion")["comparisons"][0]
    body = get_map_of(admin_api, journey_key)
    (shown,) = next(s for s in body["stages"] if s["key"] == "cart")["experiments"]["stopped"]
    assert shown["key"] == "cart-cta" and shown["report_url"] == "/experiments/cart-cta/report"
    measured = shown["measured"]
    assert measured["action"] == report["result"]["recommendation"]["action"]
    (treatment,) = measured["treatments"]
    assert treatment["variant"] == "treatment" and treatment["relative_lift"] == comparison["relative_lift"]
    assert treatment["relative_lift"]["mean"] == pytest.approx(150 / 90 - 1, rel=0.05)
    assert treatment["p_better"] == comparison["p_better"] and treatment["decision"] == comparison["decision"]


def get_map_of(admin_api, key: str) -> dict:
    response = admin_api.get(f"/api/v1/journeys/{key}/map")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert_matches_openapi(response)
    return response.get_json()
