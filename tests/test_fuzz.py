"""Fuzzing the JSON API from its own OpenAPI document: no input, valid or not, gets a 5xx.

Schemathesis generates requests for every operation the served document describes,
both conforming ones and ones that break the schema (wrong types, missing fields,
odd strings), and sends them with a client key and with an admin key. Path keys are
drawn freely (mostly unknown experiments) and also fixed to one real experiment, so
the handlers behind the 404 are reached too. The only 5xx allowed is a deliberate
503 with its JSON body; every answer is JSON.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

EXAMPLES_PER_OPERATION = 25
BUDGET_SECONDS = 90.0  # per key scope; the case count is printed
EXPERIMENT = {
    "key": "fuzz-target",
    "name": "Fuzz target",
    "target_stage": "purchase",
    "variants": [{"key": "control"}, {"key": "treatment"}],
}
# Queuing a real full-model fit for the real experiment would run PyMC for minutes.
NOT_FOR_THE_REAL_EXPERIMENT = {("POST", "/experiments/{key}/full-model")}


@pytest.mark.slow
@pytest.mark.alone  # run after the parallel part, where its printed case counts are shown
@pytest.mark.parametrize("scope", ["client", "admin"])
def test_no_request_gets_a_server_error(app, make_key, scope, capsys):
    admin_key = make_key("admin", "setup")
    client = app.test_client()
    created = client.post("/api/v1/experiments", json=EXPERIMENT, headers={"Authorization": f"Bearer {admin_key}"})
    assert created.status_code == 201, created.get_json()
    key = admin_key if scope == "admin" else make_key("client", "fuzz")
    headers = {"Authorization": f"Bearer {key}"}

    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    deadline = time.monotonic() + BUDGET_SECONDS

    def check(case) -> None:
        response = case.call(headers=headers)
        statuses[response.status_code] += 1
        content_type = response.headers.get("content-type", [""])[0]  # lowercase keys, list values
        where = f"{case.method} {case.formatted_path} -> {response.status_code}"
        if response.status_code >= 500 and response.status_code != 503:
            failures.append(f"{where}: {response.text[:200]}")
        elif not content_type.startswith(("application/json", "text/csv")):
            failures.append(f"{where}: answered {content_type!r}")
        elif response.status_code >= 400:
            body = response.json()
            if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body.get("message")):
                failures.append(f"{where}: error body {body!r}")

    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        fixed_choices = [None]
        if any(p.name == "key" for p in operation.path_parameters) and (
            (operation.method.upper(), operation.path) not in NOT_FOR_THE_REAL_EXPERIMENT
        ):
            fixed_choices.append({"key": EXPERIMENT["key"]})
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for fixed in fixed_choices:
                if time.monotonic() > deadline:
                    break
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed)

                @settings(
                    max_examples=EXAMPLES_PER_OPERATION,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=strategy)
                def run(case) -> None:
                    check(case)

                try:
                    run()
                except Unsatisfiable:  # nothing to break in this operation (e.g. no parameters at all)
                    continue

    cases = sum(statuses.values())
    with capsys.disabled():
        summary = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
        print(f"\nfuzz ({scope} key): {cases} cases over {len(operations)} operations; {summary}")
    assert cases >= 10 * len(operations)
    assert not failures, "\n".join(failures[:20])
