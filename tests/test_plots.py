"""Server-side SVG plots: deterministic, safe to inline several in one page, labelled,
one colour per variant everywhere, robust to gaps and a single day."""

from __future__ import annotations

import re
import threading
import xml.etree.ElementTree as ET
from datetime import date, timedelta

import pytest

from expplatform import plots

SVG = "{http://www.w3.org/2000/svg}"
VARIANTS = ("control", "bold", "plain")
COLORS = plots.variant_colors(VARIANTS, "control")
STAGES = ("browse", "cart", "purchase")


def forest() -> str:
    rows = [
        plots.LiftRow(stage, metric, variant, 0.04, -0.02, 0.10)
        for stage in STAGES
        for metric in ("conversion", "satisfaction")
        for variant in ("bold", "plain")
    ]
    return plots.forest(rows, COLORS, level=0.9)


def densities() -> str:
    curves = [plots.BetaCurve("control", 41, 961), plots.BetaCurve("bold", 61, 941), plots.BetaCurve("plain", 45, 957)]
    return plots.densities(curves, COLORS, stage="purchase")


def funnel() -> str:
    shares = {"control": [0.6, 0.3, 0.04], "bold": [0.62, 0.33, 0.06], "plain": [0.6, 0.31, 0.045]}
    return plots.funnel(STAGES, shares, COLORS)


def over_time(days: int = 10) -> str:
    points = []
    for k in range(days):
        day = date(2024, 5, 1) + timedelta(days=k)
        for variant in ("bold", "plain"):
            empty = k == 0 and variant == "plain"  # no data yet: a gap, not a crash
            points.append(
                plots.DayPoint(day, variant, *(None,) * 4)
                if empty
                else plots.DayPoint(day, variant, 0.1 - 0.005 * k, -0.2, 0.3, 0.5 + 0.04 * k)
            )
    return plots.over_time(points, COLORS, stage="purchase", level=0.95, ship_probability=0.95, harm_probability=0.05)


ALL = {"forest": forest, "densities": densities, "funnel": funnel, "over-time": over_time}


def texts(svg: str) -> list[str]:
    return ["".join(node.itertext()) for node in ET.fromstring(svg).iter(f"{SVG}text")]


@pytest.mark.parametrize("name", ALL)
def test_each_plot_is_one_clean_inline_svg_element(name):
    svg = ALL[name]()
    assert svg.startswith(f'<svg class="plot plot-{name}" role="img" aria-label="') and svg.rstrip().endswith("</svg>")
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG}svg" and "viewBox" in root.attrib and "width" not in root.attrib
    # Nothing that would leak into or clash with the page around it.
    for unwanted in ("<?xml", "<!DOCTYPE", "<metadata", "<style", "<script", "Matplotlib", "dc:date"):
        assert unwanted not in svg
    assert all(re.fullmatch(r"[mp][0-9a-f]{10}", node.get("id")) for node in root.iter() if node.get("id"))


@pytest.mark.parametrize("name", ALL)
def test_the_same_input_gives_byte_identical_output(name):
    assert ALL[name]() == ALL[name]()


def test_plots_in_one_page_never_share_an_id():
    seen: dict[str, str] = {}
    for name, make in ALL.items():
        for found in set(re.findall(r'id="([^"]+)"', make())):
            assert found not in seen, f"{found} in both {seen.get(found)} and {name}"
            seen[found] = name


def test_axes_are_labelled_and_names_are_text():
    assert "Relative lift against control (mean and 90% credible interval)" in texts(forest())
    assert {"browse · conversion · bold", "purchase · satisfaction · plain"} <= set(texts(forest()))
    assert {"Conversion rate at purchase (posterior)", "Density", "control", "bold", "plain"} <= set(texts(densities()))
    assert {"Share of exposed customers", "Journey stage", *STAGES} <= set(texts(funnel()))
    assert {"Lift (95% interval)", "P(better)", "Day (UTC)", "May 01", "May 10"} <= set(texts(over_time()))


def test_each_variant_has_one_colour_in_every_plot():
    assert {"control": plots.CONTROL_COLOR, "bold": plots.PALETTE[0], "plain": plots.PALETTE[1]} == COLORS
    assert plots.variant_colors(("a", "ctl", "b"), "ctl") == {
        "a": plots.PALETTE[0],
        "b": plots.PALETTE[1],
        "ctl": plots.CONTROL_COLOR,
    }
    for name, make in ALL.items():
        svg = make()
        expected = {COLORS["bold"], COLORS["plain"]} | (
            {COLORS["control"]} if name in {"densities", "funnel"} else set()
        )
        used = {color for color in COLORS.values() if color in svg}
        assert used == expected, name


def test_names_are_escaped_and_dollars_are_not_mathtext():
    svg = plots.funnel(["<b>&co</b>", "$x$"], {"control": [0.5, 0.1]}, {"control": plots.CONTROL_COLOR})
    root = ET.fromstring(svg)  # still well-formed: the markup is text
    assert not [node for node in root.iter() if node.tag.endswith("}b")]
    assert {"<b>&co</b>", "$x$"} <= set(texts(svg))
    labelled = plots.densities([], {}, stage='"><script>alert(1)</script>')
    assert (
        "<script>" not in labelled
        and 'aria-label="Posterior densities of the conversion rate at &quot;&gt;&lt;script&gt;' in labelled
    )


def test_a_single_day_renders_without_warnings():
    assert "May 01" in texts(over_time(days=1))


def test_rendering_from_several_threads_gives_the_serial_result():
    expected = {name: make() for name, make in ALL.items()}
    barrier = threading.Barrier(4)
    results: dict[str, str] = {}

    def render(name):
        barrier.wait()
        results[name] = ALL[name]()

    threads = [threading.Thread(target=render, args=(name,)) for name in ALL]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


def test_warm_up_loads_the_plotting_stack_that_pages_use():
    import subprocess
    import sys

    code = (
        "import sys; from expplatform import plots; "
        "assert 'matplotlib' not in sys.modules; plots.warm_up(); "
        "assert 'matplotlib.backends.backend_svg' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_funnel_draws_no_bar_where_nothing_was_recorded():
    """A 0% bar would say "nobody converted"; a stage without any outcome says "no data"."""
    colors = {"control": plots.CONTROL_COLOR, "bold": "#2952cc"}
    with_data = plots.funnel(["browse", "cart"], {"control": [0.5, 0.2], "bold": [0.5, 0.3]}, colors)
    without = plots.funnel(["browse", "cart"], {"control": [0.5, None], "bold": [0.5, None]}, colors)
    assert "no data" not in texts(with_data) and "no data" in texts(without)

    def bars(svg: str) -> int:  # drawn rectangles of the treatment's colour (its legend key included)
        return sum("L" in d for d in re.findall(r'<path d="([^"]*)"[^>]*fill: #2952cc', svg))

    assert (bars(with_data), bars(without)) == (3, 2)
