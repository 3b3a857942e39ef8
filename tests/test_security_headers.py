"""Security headers on every page (issue 11): a Content-Security-Policy that
allows no script and no framing, nosniff, a Referrer-Policy; and templates that a
strict policy does not break (no inline script, no inline <style> elements, no event
handler attributes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from expplatform.security import CONTENT_SECURITY_POLICY

TEMPLATES = Path(__file__).resolve().parent.parent / "expplatform" / "web" / "templates"
DEFINITION = {
    "key": "checkout-button",
    "name": "Green checkout button",
    "target_stage": "purchase",
    "variants": [{"key": "control"}, {"key": "green"}],
}


def _directives(policy: str) -> dict[str, list[str]]:
    return {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}


def _assert_hardened(response) -> None:
    headers = response.headers
    policy = _directives(headers["Content-Security-Policy"])
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["default-src"] == ["'none'"]
    assert "script-src" not in policy  # falls back to default-src 'none': no script at all
    assert policy["style-src"] == ["'self'"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert "Strict-Transport-Security" not in headers  # plain http: no HSTS


def test_pages_for_logged_out_visitors_have_the_headers(client):
    for path in ("/login", "/", "/experiments", "/no-such-page", "/static/app.css"):
        with client.get(path) as response:
            _assert_hardened(response)


def test_every_page_of_a_logged_in_editor_has_the_headers(client, login, admin_api):
    assert admin_api.post("/api/v1/experiments", json=DEFINITION).status_code == 201
    login("editor")
    for path in (
        "/experiments",
        "/experiments/new",
        "/experiments/checkout-button",
        "/experiments/checkout-button/edit",
        "/experiments/checkout-button/start",  # the confirmation form that must not be framed
        "/experiments/checkout-button/report",
        "/account/password",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        _assert_hardened(response)
        html = response.text
        assert "<script" not in html and not re.search(r"<style[\s>]", html), path
        assert not re.search(r"\son[a-z]+\s*=", html), path  # no event-handler attributes


def test_api_json_is_left_alone(client):
    """JSON for programs gets no page headers: the assignment fast path in front of
    Flask must answer byte for byte as the Flask view does."""
    assert "Content-Security-Policy" not in client.get("/api/v1/health").headers


@pytest.mark.parametrize("kwargs", [{"headers": {"X-Forwarded-Proto": "https"}}, {"base_url": "https://localhost"}])
def test_hsts_over_tls(client, kwargs):
    assert client.get("/login", **kwargs).headers["Strict-Transport-Security"].startswith("max-age=")


def test_templates_need_no_inline_script_or_style_elements():
    """Only ``style`` attributes are inline (CSS custom properties on the report), and
    the policy allows exactly those through ``style-src-attr``."""
    offenders = []
    for template in TEMPLATES.rglob("*.html"):
        if template.name == "standalone.html":  # a file written by the CLI, never served
            continue
        text = template.read_text(encoding="utf-8")
        if "<script" in text or re.search(r"<style[\s>]", text) or re.search(r"\son[a-z]+\s*=", text):
            offenders.append(template.name)
        if "javascript:" in text:
            offenders.append(template.name)
    assert offenders == []
    assert _directives(CONTENT_SECURITY_POLICY)["style-src-attr"] == ["'unsafe-inline'"]
