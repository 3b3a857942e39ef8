"""The web pages' errors use the site's layout and say what to do; the API's stay JSON."""

from __future__ import annotations


def test_a_missing_page_is_the_sites_own_page_with_navigation(client, login):
    login("viewer")
    page = client.get("/experiments/no-such-experiment")
    assert page.status_code == 404
    assert page.mimetype == "text/html"
    assert 'class="topbar"' in page.text and "Log out" in page.text
    assert "Error 404" in page.text and "renamed" in page.text
    assert 'href="/experiments"' in page.text


def test_a_forbidden_page_says_which_role_is_missing_inside_the_layout(client, login):
    login("viewer")
    page = client.get("/admin/users")
    assert page.status_code == 403
    assert 'class="topbar"' in page.text and "role does not allow" in page.text


def test_logged_out_the_error_page_offers_the_login(client):
    page = client.get("/no/such/page")
    assert page.status_code == 404
    assert 'href="/login"' in page.text and "Log out" not in page.text


def test_a_wrong_method_keeps_its_allow_header_on_the_page(client, login):
    login("viewer")
    page = client.delete("/experiments")
    assert page.status_code == 405
    assert "GET" in page.headers["Allow"]
    assert "Error 405" in page.text


def test_the_api_still_answers_json(client):
    missing = client.get("/api/v1/no-such-thing")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
