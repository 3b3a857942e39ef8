"""`expplatform report KEY`: the same report as the API, in a terminal table, JSON,
CSV or one standalone HTML file; `--full-model` fits first, with a progress bar."""

from __future__ import annotations

import json
import re

from expplatform.cli import main
from expplatform.jobs import get_runner

from .reports_support import STAGES, fake_fit


def run(runner, *args):
    result = runner.invoke(main, ["report", "checkout", *args], catch_exceptions=False)
    return result


def test_the_table_reads_in_a_terminal(runner, admin_api, seeded):
    result = run(runner)
    assert result.exit_code == 0, result.output
    api = admin_api.get("/api/v1/experiments/checkout/report").get_json()
    lines = result.output.splitlines()
    assert lines[0] == "Checkout (checkout, running) - testing cart; 900 customers exposed"
    assert f"Recommendation: {api['decision']['headline']}" in lines
    assert [
        line for line in lines if line.split("  ")[0] in STAGES or line.startswith(("cart  <-", "purchase  ("))
    ] == [
        "browse  (before the tested step: a balance check)",
        "cart  <- under test",
        "purchase  (guardrail)",
    ]
    assert max(len(line) for line in lines) <= 140
    bold_cart = next(line for line in lines[lines.index("cart  <- under test") :] if line.strip().startswith("bold"))
    cart = next(m for m in api["result"]["stages"][1]["metrics"] if m["metric"] == "conversion")
    comparison = cart["comparisons"][0]
    assert (
        f"{comparison['relative_lift']['mean'] * 100:+.1f}%" in bold_cart
        and f"{comparison['p_better']:.3f}" in bold_cart
    )


def test_json_and_csv_are_the_apis(runner, admin_api, seeded):
    from_cli = json.loads(run(runner, "--format", "json", "--segment", "platform").output)
    from_api = admin_api.get("/api/v1/experiments/checkout/report?segment=platform").get_json()
    for body in (from_cli, from_api):
        body.pop("generated_at")
        body.pop("forecast")  # measured up to the moment of each request
    assert from_cli == from_api
    csv_cli = run(runner, "--format", "csv", "--credible-level", "0.9").output
    assert csv_cli == admin_api.get("/api/v1/experiments/checkout/report.csv?credible_level=0.9").get_data(as_text=True)


def test_html_is_one_standalone_file(runner, seeded, tmp_path):
    target = tmp_path / "report.html"
    result = run(runner, "--format", "html", "--output", str(target))
    assert result.exit_code == 0 and f"wrote {target}" in result.output
    page = target.read_text()
    assert page.startswith("<!doctype html>") and "<style>" in page and ".liftmap" in page
    assert page.count('<svg class="plot') == 4
    assert 'rel="stylesheet"' not in page and "<script" not in page and "Run full model" not in page
    # Rendered without a request, its links are still the page's (root-relative).
    assert '<a href="/experiments/checkout"><code>checkout</code></a>' in page
    assert (
        'href="/api/v1/experiments/checkout/report.csv"' in page
        and 'action="/experiments/checkout/report#segments"' in page
    )


def test_the_segment_breakdown_in_the_table(runner, seeded):
    output = run(runner, "--segment", "platform").output
    assert re.findall(r"^  (\w+): 300 exposed; cart conversion", output, re.M) == ["android", "ios", "web"]


def test_errors_are_messages_not_tracebacks(runner, seeded):
    result = runner.invoke(main, ["report", "nope"])
    assert result.exit_code == 1 and "No experiment with key 'nope'." in result.output
    result = runner.invoke(main, ["report", "checkout", "--segment", "not valid"])
    assert result.exit_code == 1 and "segment: must be an attribute name" in result.output


def test_full_model_fits_with_a_progress_bar_and_stores_the_fit(app, runner, seeded):
    def fit(stats, params, *, prior, rule, progress):
        total = 4
        for done in range(1, total + 1):
            progress(done, total)
        return fake_fit(stats, params, prior=prior, rule=rule, progress=None)

    get_runner(app).fit = fit
    result = run(runner, "--full-model", "--format", "json")
    assert result.exit_code == 0, result.output
    # The bar and the notice go to stderr, so stdout is the report alone.
    assert "fitting the full model" in result.stderr and "full model: fit #1 finished" in result.stderr
    body = json.loads(result.stdout)
    job = body["full_model"]
    assert job["status"] == "finished" and job["requested_by"] == "cli" and job["result"]["method"] == "hierarchical"
    assert job["snapshot"]["exposed"] == {"control": 300, "bold": 300, "plain": 300}
    # A fit already active elsewhere is not started twice.
    from sqlalchemy import update

    from expplatform.models import AnalysisJob

    with app.extensions["db"].write() as session:
        session.execute(update(AnalysisJob).values(status="running"))
    again = runner.invoke(main, ["report", "checkout", "--full-model"])
    assert again.exit_code == 1 and "already running" in again.output


def test_full_model_is_refused_without_any_outcome_data(app, db, runner):
    from .events_support import make_experiment

    with db.write() as session:
        make_experiment(session, "empty", stages=STAGES, target_stage="cart", variants=("control", "bold"))
    calls = []
    get_runner(app).fit = lambda *args, **kwargs: calls.append(args)
    result = runner.invoke(main, ["report", "empty", "--full-model"])
    assert result.exit_code == 1 and not calls
    assert "No variant has any outcome data yet" in result.output


def test_a_control_with_its_own_name_keeps_the_columns_aligned(runner, app, db):
    from .reports_support import seed_counts

    counts = {
        "current": (200, {"browse": 150, "cart": 40, "purchase": 20}),
        "one-page": (200, {"browse": 150, "cart": 60, "purchase": 30}),
    }
    seed_counts(app, db, "aligned", counts, target="cart")
    output = runner.invoke(main, ["report", "aligned"], catch_exceptions=False).output
    lines = output.splitlines()
    start = lines.index("cart  <- under test")
    header = next(line for line in lines[start:] if line.strip().startswith("variant"))
    rows = [line for line in lines[start:] if line.strip().startswith(("current (control)", "one-page"))][:2]
    assert len(rows) == 2, output
    exposed_end = header.index("exposed") + len("exposed")
    for row in rows:
        assert row[:exposed_end].rstrip().endswith("200") and row[exposed_end] == " ", (header, row)
