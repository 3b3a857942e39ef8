"""Input anyone with a client or admin key can send, that once gave a 500 or was
accepted although wrong: each is refused with a clear 4xx JSON answer."""

from __future__ import annotations

import io

import pytest

# Deeper than any recursion limit (PyMC raises Python's to 10,000 where it is imported).
DEEP = "[" * 100_000 + "]" * 100_000


def _post(client, path: str, key: str, body: str):
    return client.post(path, data=body, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


@pytest.mark.parametrize("path", ["/api/v1/assign", "/api/v1/events", "/api/v1/experiments"])
def test_json_nested_too_deep_is_a_clear_400_and_no_traceback(client, client_key, admin_key, path, caplog):
    key = admin_key if path.endswith("experiments") else client_key
    response = _post(client, path, key, DEEP)
    assert response.status_code == 400 and response.get_json()["error"] == "json_too_deep"
    assert not [r for r in caplog.records if r.exc_info]  # no traceback logged (a log flood)


@pytest.mark.parametrize(
    "body, field",
    [
        ('{"customer_id": "\\ud800"}', "customer_id"),
        ('{"customer_id": "c\\u0000"}', "customer_id"),
        ('{"customer_id": "c", "attributes": {"persona": "\\udfff"}}', "attributes.persona"),
        ('{"customer_id": "c", "attributes": {"nul": "a\\u0000b"}}', "attributes.nul"),
    ],
)
def test_an_assignment_with_unstorable_text_is_a_400(client, client_key, body, field):
    response = _post(client, "/api/v1/assign", client_key, body)
    assert response.status_code == 400 and field in response.get_json()["fields"]


@pytest.mark.parametrize(
    "query",
    ["page=9223372036854775807", "page=0", "page=%C2%B2", "per_page=99999999999999999999999", "stage=purchase%0A"],
)
def test_list_parameters_out_of_range_are_a_400(client, admin_key, query):
    response = client.get(f"/api/v1/experiments?{query}", headers={"Authorization": f"Bearer {admin_key}"})
    assert response.status_code == 400 and response.get_json()["error"] == "validation_failed"


def test_a_job_id_past_any_database_integer_is_a_404(client, admin_key):
    response = client.get(
        "/api/v1/experiments/any/full-model/99999999999999999999", headers={"Authorization": f"Bearer {admin_key}"}
    )
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"


def test_a_405_says_which_methods_are_allowed(client, client_key):
    response = client.put("/api/v1/assign", headers={"Authorization": f"Bearer {client_key}"})
    assert response.status_code == 405 and response.get_json()["error"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


def _chunked(client, key: str, body: bytes):
    """As gunicorn hands over a chunked request: no Content-Length, the stream ended by the server."""
    return client.post(
        "/api/v1/events",
        input_stream=io.BytesIO(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def _events(count: int) -> bytes:
    event = '{"event_id": "e%d", "customer_id": "c", "stage": "purchase", "type": "conversion"}'
    return ('{"events": [' + ",".join(event % i for i in range(count)) + "]}").encode()


def test_a_chunked_body_over_the_limit_is_a_413_not_truncated_json(app, client, client_key):
    body = _events(40_000)
    assert len(body) > app.config["MAX_CONTENT_LENGTH"]
    response = _chunked(client, client_key, body)
    assert response.status_code == 413 and response.get_json()["error"] == "payload_too_large"


def test_a_chunked_body_within_the_limit_is_read_whole(client, client_key):
    response = _chunked(client, client_key, _events(3))
    assert response.status_code == 200, response.get_json()  # the three events parsed (none attributed)
