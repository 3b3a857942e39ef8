"""Guided paths (issue 14, section 3): a report without data says what is missing and
what to do next; the Integrate pages fill the calls in and show exposures arriving;
the experiment list and page show exposures, the latest call and the latest event;
every page with simulated data says so."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

from sqlalchemy import select

from expplatform.activity import SPARK_DAYS, TimedMemo, activity
from expplatform.ingest import record_events
from expplatform.models import ApiKey, Experiment, utcnow
from expplatform.web.guided import ago, sparkline

from .events_support import expose, make_experiment, make_journey
from .reports_support import seed_journey

DASH = "\N{EN DASH}"  # between a scale's ends, as the pages write it


def page(client, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status, (path, response.status_code)
    return response.get_data(as_text=True)


def guide_state(body: str) -> str | None:
    found = re.search(r'id="guide" data-state="(\w+)"', body)
    return found.group(1) if found else None


def shop_journey(session):
    return make_journey(
        session,
        "shop",
        ("browse", "cart", "purchase"),
        [("cart-csat", "cart", 1, 5), ("purchase-nps", "purchase", 0, 10)],
        personas=("returning", "first-timer"),
        persona_attribute="persona",
    )


def shop_experiment(session, key="one-page", **fields):
    journey = shop_journey(session)
    return make_experiment(
        session,
        key,
        stages=("browse", "cart", "purchase"),
        target_stage="cart",
        variants=("control", "one-page"),
        journey=journey,
        metrics={"cart": "cart-csat", "purchase": "purchase-nps"},
        **fields,
    )


def converted(app, db, key: str, customers: list[str], stage: str = "cart") -> None:
    events = [{"event_id": f"{c}-{stage}", "customer_id": c, "stage": stage, "type": "conversion"} for c in customers]
    assert not record_events(db, events, app.extensions["settings"]).rejected


# -- the report's guided states -----------------------------------------------------------------


def test_a_drafts_report_says_start_it_and_shows_no_numbers_or_plots(client, login, db):
    with db.write() as session:
        make_experiment(session, "draft-one", status="draft", started_at=None)
    login("editor")
    body = page(client, "/experiments/draft-one/report")
    assert guide_state(body) == "draft"
    assert "this experiment is a draft" in body
    assert 'href="/experiments/draft-one/start"' in body  # the start button, through its confirmation
    assert 'href="/experiments/draft-one/integrate"' in body
    # No call before 100 customers in each of the two variants.
    assert "at least 200 customers" in body and 'href="/experiments/draft-one#duration"' in body
    assert "lm-stage" not in body and "<svg" not in body and "0.500" not in body
    assert "Run full model" not in body and "Not offered: No variant has any outcome data" in body


def test_a_viewer_is_told_an_editor_starts_it(client, login, db):
    with db.write() as session:
        make_experiment(session, "draft-two", status="draft", started_at=None)
    login("viewer")
    body = page(client, "/experiments/draft-two/report")
    assert guide_state(body) == "draft" and "An editor starts it." in body
    assert "/experiments/draft-two/start" not in body


def test_a_running_experiment_without_exposures_says_send_traffic(client, login, db):
    with db.write() as session:
        make_experiment(session, "quiet")
    login("viewer")
    body = page(client, "/experiments/quiet/report")
    assert guide_state(body) == "no_exposures"
    assert "Send traffic" in body and 'href="/experiments/quiet/integrate"' in body
    assert "lm-stage" not in body and "<svg" not in body


def test_a_paused_or_stopped_experiment_without_data_says_resume_or_clone(client, login, db):
    with db.write() as session:
        make_experiment(session, "held", status="paused")
        make_experiment(session, "ended", status="stopped", stopped_at=utcnow())
    login("editor")
    held = page(client, "/experiments/held/report")
    assert guide_state(held) == "no_exposures" and 'href="/experiments/held/resume">Resume it</a>' in held
    ended = page(client, "/experiments/ended/report")
    assert guide_state(ended) == "no_exposures" and "clone it as its next iteration" in ended
    with db.write() as session:
        quiet_end = make_experiment(session, "quiet-end", status="stopped", stopped_at=utcnow())
        for i in range(8):
            expose(session, quiet_end, f"q{i}", ("control", "treatment")[i % 2])
    body = page(client, "/experiments/quiet-end/report")
    assert guide_state(body) == "no_outcomes" and "nothing to compare" in body and "Send events" not in body


def test_exposures_without_outcomes_ask_for_events_and_refuse_the_full_model(app, client, login, db, admin_key):
    with db.write() as session:
        experiment = make_experiment(session, "no-events")
        for i in range(30):
            expose(session, experiment, f"c{i}", ("control", "treatment")[i % 2])
    login("editor")
    body = page(client, "/experiments/no-events/report")
    assert guide_state(body) == "no_outcomes"
    assert "Send events" in body and "control 15, treatment 15" in body
    assert 'href="/experiments/no-events/integrate#events"' in body
    assert "Run full model" not in body
    # Asked anyway: the web button's handler and the API refuse it.
    response = client.post("/experiments/no-events/report/full-model")
    assert response.status_code == 302
    assert "The full model was not started" in page(client, "/experiments/no-events/report")
    refused = client.post(
        "/api/v1/experiments/no-events/full-model", json={}, headers={"Authorization": f"Bearer {admin_key}"}
    )
    assert refused.status_code == 409 and refused.get_json()["error"] == "no_data"


def test_too_few_customers_says_how_many_more_and_how_long(app, client, login, db):
    now = utcnow()
    with db.write() as session:
        experiment = make_experiment(session, "early", started_at=now - timedelta(days=2))
        for i in range(60):  # 30 per variant over two days: 15 a day per variant
            expose(session, experiment, f"e{i}", ("control", "treatment")[i % 2], exposed_at=now - timedelta(hours=i))
    converted(app, db, "early", [f"e{i}" for i in range(0, 60, 3)], stage="consideration")
    login("viewer")
    body = page(client, "/experiments/early/report")
    assert guide_state(body) == "too_few"
    assert "the smallest has 30 (70 more needed)" in body
    assert "15 customers a day per variant" in body and "about <strong>5 more days</strong>" in body
    assert body.index("<h1>") < body.index('id="guide"') < body.index("lm-stage")  # below the title, above the numbers


def test_a_report_with_enough_data_has_no_guide(app, client, login, db):
    seed_journey(app, db, customers=600)
    login("viewer")
    body = page(client, "/experiments/checkout/report")
    assert guide_state(body) is None and "lm-stage" in body


# -- the Integrate pages ------------------------------------------------------------------------


def test_the_experiment_integrate_page_fills_in_the_calls(client, login, db, make_key):
    with db.write() as session:
        shop_experiment(session)
    secret = make_key("client", "web shop")
    make_key("admin", "automation")
    login("viewer")
    response = client.get("/experiments/one-page/integrate")
    assert response.status_code == 200
    assert "frame-src 'self'" in response.headers["Content-Security-Policy"]
    body = response.get_data(as_text=True)
    curl = re.search(r'data-snippet="curl"><code>(.*?)</code>', body, re.S).group(1)
    python = re.search(r'data-snippet="python"><code>(.*?)</code>', body, re.S).group(1)
    javascript = re.search(r'data-snippet="javascript"><code>(.*?)</code>', body, re.S).group(1)
    assert "curl -s -X POST http://localhost/api/v1/assign" in curl and "http://localhost/api/v1/events" in curl
    assert "&#34;experiments&#34;: [&#34;one-page&#34;]" in curl
    assert "&#34;persona&#34;: &#34;returning&#34;" in curl  # the journey's persona attribute, first persona
    for snippet in (curl, python, javascript):
        assert "one-page" in snippet and "cart-csat" in snippet and "purchase-nps" in snippet
    assert "Client(&#39;http://localhost&#39;, os.environ[&#34;EXPPLATFORM_KEY&#34;]" in python
    assert "exp.track(&#39;customer-123&#39;, &#39;cart&#39;, &#39;conversion&#39;)" in python
    assert "exp.rate(&#39;customer-123&#39;, &#39;purchase-nps&#39;, 10)" in python
    assert "const EXPPLATFORM = &#34;http://localhost/api/v1&#34;;" in javascript
    assert "event_id: crypto.randomUUID()" in javascript
    # Its variants, and its journey's stages with their questions.
    assert "<code>control</code> (control), <code>one-page</code>" in body
    assert 'data-stage="cart"' in body and f"<code>cart-csat</code> 1{DASH}5" in body
    # The client keys by name and prefix; never a secret, nor an admin key.
    assert "web shop" in body and f"<code>{secret[:12]}…</code>" in body
    assert secret not in body and "automation" not in body
    assert 'src="/experiments/one-page/integrate/status"' in body
    assert "Create a client key" not in body  # a viewer


def test_an_editor_makes_a_client_key_and_sees_its_secret_once(app, client, login, db):
    with db.write() as session:
        shop_experiment(session)
    login("editor")
    assert "Create a client key" in page(client, "/experiments/one-page/integrate")
    response = client.post("/integrate/keys", data={"name": "checkout app", "experiment": "one-page", "scope": "admin"})
    assert response.status_code == 201
    body = response.get_data(as_text=True)
    secret = re.search(r"<pre><code>(xp_[\w-]+)</code></pre>", body).group(1)
    assert f"EXPPLATFORM_KEY=&#39;{secret}&#39;" in body and f"Bearer {secret}" in body  # filled into the snippets
    assert f'<tr data-prefix="{secret[:12]}"><td>checkout app</td>' in body  # and listed
    with db.sessionmaker() as session:
        made = session.scalars(select(ApiKey).where(ApiKey.name == "checkout app")).one()
    assert made.scope == "client" and made.prefix == secret[:12]  # a client key, whatever the form said
    again = page(client, "/experiments/one-page/integrate")
    assert secret not in again and f"{secret[:12]}…" in again
    assert client.post("/integrate/keys", data={"name": "", "experiment": ""}).status_code == 422


def test_a_viewer_cannot_make_a_key(client, login):
    login("viewer")
    assert client.post("/integrate/keys", data={"name": "sneaky"}).status_code == 403


def test_the_live_status_goes_from_waiting_to_the_first_exposure(app, client, login, db, client_key):
    with db.write() as session:
        make_experiment(session, "live")
    login("viewer")
    response = client.get("/experiments/live/integrate/status")
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in policy and "script" not in policy
    body = response.get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="3">' in body
    assert 'data-state="waiting"' in body and "Waiting for the first exposure" in body
    assigned = client.post(
        "/api/v1/assign",
        json={"customer_id": "first", "experiments": ["live"]},
        headers={"Authorization": f"Bearer {client_key}"},
    )
    assert assigned.status_code == 200 and assigned.get_json()["assignments"][0]["enrolled"]
    app.extensions["live_status_memo"] = TimedMemo(0, cost_factor=0)  # no memo here: a fresh look
    body = page(client, "/experiments/live/integrate/status")
    assert 'data-state="live"' in body
    assert re.search(r'class="last-exposure">\d s ago<', body) and '<strong class="exposed-today">1</strong>' in body


def test_the_service_integrate_page_lists_every_experiment_and_journey(client, login, db):
    with db.write() as session:
        shop_experiment(session)
        make_experiment(session, "other", status="draft", started_at=None)
    login("viewer")
    body = page(client, "/experiments")
    assert 'href="/integrate"' in body  # the top bar's link
    body = page(client, "/integrate")
    assert 'href="/experiments/one-page/integrate"' in body and 'href="/experiments/other/integrate"' in body
    assert "&#34;experiments&#34;" not in body  # assign for every running experiment
    assert "Shop" in body and f"<code>purchase-nps</code> 0{DASH}10" in body
    assert 'src="/integrate/status"' in body
    assert "Waiting for the first exposure" in page(client, "/integrate/status")


# -- the list and the experiment page -----------------------------------------------------------


def test_activity_counts_exposures_by_day_and_finds_the_latest(app, db):
    now = utcnow()
    with db.write() as session:
        experiment = make_experiment(session, "busy", started_at=now - timedelta(days=40))
        for i, days_ago in enumerate([0, 0, 0, 1, 27, 28, 35]):
            expose(session, experiment, f"b{i}", exposed_at=now - timedelta(days=days_ago, seconds=5))
        expose(session, experiment, "qa", forced=True, exposed_at=now)  # QA: never counted
        draft = make_experiment(session, "idle", status="draft", started_at=None)
        ids = (experiment.id, draft.id)
    converted(app, db, "busy", ["b0"], stage="consideration")
    with db.sessionmaker() as session:
        found = activity(session, ids, now)
    busy, idle = found[ids[0]], found[ids[1]]
    assert busy.total == 7 and len(busy.daily) == SPARK_DAYS
    assert busy.today == 3 and busy.daily[-2] == 1 and busy.daily[0] == 1 and sum(busy.daily) == 5
    assert now - timedelta(seconds=6) < busy.last_exposure_at < now
    assert busy.last_outcome_at is not None and busy.last_outcome_at > now - timedelta(minutes=1)
    assert idle.total == 0 and idle.last_exposure_at is None and idle.last_outcome_at is None


def test_the_list_shows_exposures_a_sparkline_the_latest_call_and_the_last_event(app, client, login, db):
    seed_journey(app, db, customers=600)
    now = utcnow()
    with db.write() as session:
        recent = make_experiment(session, "recent", started_at=now - timedelta(days=3))
        for i in range(6):
            expose(session, recent, f"r{i}", exposed_at=now - timedelta(days=i % 3))
        make_experiment(session, "not-yet", status="draft", started_at=None)
    login("viewer")
    body = page(client, "/experiments")
    rows = {key: row for key, row in re.findall(r'<tr data-experiment="([\w-]+)">(.*?)</tr>', body, re.S)}
    assert '<span class="exposed-total">600</span>' in rows["checkout"]
    assert "open the report" in rows["checkout"]  # no report looked at yet: no analysis from the list
    assert '<span class="exposed-total">6</span>' in rows["recent"]
    assert len(re.findall(r"<rect ", rows["recent"])) == 3  # three days with exposures
    assert "last event never" in rows["recent"]
    assert "not started" in rows["not-yet"] and "<svg" not in rows["not-yet"]
    assert 'Exposures <span class="muted">(28 days)</span>' in body

    page(client, "/experiments/checkout/report")  # a report leaves its call for the list
    app.extensions.pop("activity_memo")
    checkout = re.search(r'<tr data-experiment="checkout">(.*?)</tr>', page(client, "/experiments"), re.S).group(1)
    assert re.search(r'<span class="call call-(ship|keep_running|keep_control|investigate)" title="[^"]+">', checkout)
    assert "last event" in checkout and "last event never" not in checkout


def test_the_experiment_page_shows_traffic_and_the_call_now(app, client, login, db):
    seed_journey(app, db, customers=600)
    with db.write() as session:
        make_experiment(session, "draft-three", status="draft", started_at=None)
        exposed_only = make_experiment(session, "exposed-only")
        for i in range(300):
            expose(session, exposed_only, f"x{i}", ("control", "treatment")[i % 2])
    login("editor")
    body = page(client, "/experiments/checkout")
    traffic = re.search(r'<section class="card traffic".*?</section>', body, re.S).group(0)
    assert '<strong class="exposed-total">600</strong>' in traffic and '<svg class="spark"' in traffic
    assert re.search(r'<a class="call call-\w+" href="/experiments/checkout/report"', traffic)
    assert 'href="/experiments/checkout/integrate"' in body
    # Enough customers for the rule, but no outcome: no call rests on exposures alone.
    assert '<a class="call call-no_outcomes"' in page(client, "/experiments/exposed-only")
    draft = page(client, "/experiments/draft-three")
    assert "A draft enrols nobody." in draft and 'href="/experiments/draft-three/start">Start it</a>' in draft


def test_a_sparkline_scales_its_bars_to_the_busiest_day():
    svg = str(sparkline([0, 5, 10, 0]))
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg)]
    assert heights == [12.0, 24.0] and 'viewBox="0 0 16 24"' in svg
    assert "15 in all, at most 10 a day" in svg
    assert "<rect" not in str(sparkline([0] * 28))


def test_the_memo_keeps_a_slow_answer_ten_times_as_long_as_it_took(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("expplatform.activity.time.monotonic", lambda: clock[0])
    memo: TimedMemo[str, int] = TimedMemo(2.0)
    asked: list[list[str]] = []

    def compute(keys, seconds=0.0):
        asked.append(keys)
        clock[0] += seconds  # the query's own time
        return {k: len(asked) for k in keys}

    assert memo.get_many(["a", "b"], compute) == {"a": 1, "b": 1}
    clock[0] += 1.9
    assert memo.get_many(["a", "c"], compute) == {"a": 1, "c": 2} and asked[-1] == ["c"]
    clock[0] += 0.2  # "a" is 2.1 s old: asked again, and this time the query takes 3 s
    assert memo.get_many(["a"], lambda keys: compute(keys, 3.0)) == {"a": 3}
    clock[0] += 29.0
    assert memo.get_many(["a"], compute) == {"a": 3}  # kept for 30 s after it came
    clock[0] += 1.1
    assert memo.get_many(["a"], compute) == {"a": 4}


def test_ago_says_how_long_ago_in_words():
    now = utcnow()
    assert ago(None) == "never"
    assert ago(now - timedelta(seconds=3), now) == "3 s ago"
    assert ago(now - timedelta(minutes=5, seconds=2), now) == "5 min ago"
    assert ago(now - timedelta(hours=2), now) == "2 h ago"
    assert ago(now - timedelta(days=1, hours=1), now) == "1 day ago"


# -- simulated data -----------------------------------------------------------------------------


def test_every_page_with_simulated_data_says_so(app, client, login, db, admin_key):
    with db.write() as session:
        experiment = shop_experiment(session, "demo")
        experiment.simulated = True
        expose(session, experiment, "s1", "control", exposed_at=utcnow())
        make_experiment(session, "real")
    login("viewer")
    badge = '<span class="simulated-badge" title="Synthetic customers: `expplatform simulate` wrote'
    for path in (
        "/experiments/demo",
        "/experiments/demo/report",
        "/experiments/demo/integrate",
        "/experiments/demo/integrate/status",
        "/journeys/shop",
    ):
        assert badge in page(client, path), path
    listing = page(client, "/experiments")
    rows = {key: row for key, row in re.findall(r'<tr data-experiment="([\w-]+)">(.*?)</tr>', listing, re.S)}
    assert badge in rows["demo"] and badge not in rows["real"]
    assert badge not in page(client, "/experiments/real/report")
    headers = {"Authorization": f"Bearer {admin_key}"}
    assert client.get("/api/v1/experiments/demo", headers=headers).get_json()["simulated"] is True
    assert client.get("/api/v1/experiments/real", headers=headers).get_json()["simulated"] is False
    with db.sessionmaker() as session:
        assert session.scalars(select(Experiment.simulated).where(Experiment.key == "real")).one() is False


def snippet(body: str, name: str) -> str:
    return html.unescape(re.search(rf'data-snippet="{name}"><code>(.*?)</code>', body, re.S).group(1))


def test_the_curl_snippets_bodies_are_accepted_as_they_are(client, login, db, client_key):
    with db.write() as session:
        shop_experiment(session)
    login("viewer")
    curl = snippet(page(client, "/experiments/one-page/integrate"), "curl")
    assign_body, events_body = (json.loads(body) for body in re.findall(r"-d '(.*?)'", curl, re.S))
    headers = {"Authorization": f"Bearer {client_key}"}
    assigned = client.post("/api/v1/assign", json=assign_body, headers=headers)
    assert assigned.status_code == 200 and assigned.get_json()["assignments"][0]["enrolled"]
    sent = client.post("/api/v1/events", json=events_body, headers=headers)
    assert sent.status_code == 200, sent.get_data(as_text=True)
    assert sent.get_json()["accepted"] == 3 and not sent.get_json()["rejected"]  # a conversion, two ratings


def test_the_python_snippet_runs_as_it_is(app, live_server, client, login, db, client_key, monkeypatch):
    with db.write() as session:
        shop_experiment(session)
    login("viewer")
    code = snippet(page(client, "/experiments/one-page/integrate"), "python")
    code = code.replace("http://localhost", live_server)  # the test client's host; the server's port
    monkeypatch.setenv("EXPPLATFORM_KEY", client_key)
    namespace: dict = {}
    exec(compile(code, "snippet", "exec"), namespace)  # our own page's snippet
    assert namespace["variant"] in ("control", "one-page")
    with db.sessionmaker() as session:
        experiment = session.scalars(select(Experiment).where(Experiment.key == "one-page")).one()
        found = activity(session, [experiment.id], utcnow())[experiment.id]
    assert found.total == 1 and found.last_outcome_at is not None  # the events arrived and counted
