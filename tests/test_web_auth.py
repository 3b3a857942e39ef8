"""Web login, logout, CSRF and the rule that every route declares its guard."""

from __future__ import annotations

import re

import pytest

from .conftest import PASSWORD, make_test_app, sign_in


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html
    )
    assert match, "no CSRF token on the page"
    return match.group(1)


@pytest.fixture
def csrf_client(database_url, tmp_path):
    """A client of an app with CSRF protection on, as in production."""
    app = make_test_app(database_url, tmp_path, wtf_csrf_enabled=True)
    yield app.test_client(), app
    app.extensions["db"].engine.dispose()


def _make_user(app, email="ana@example.com", role="viewer"):
    from expplatform.auth import create_user

    with app.extensions["db"].write() as session:
        create_user(session, email, PASSWORD, role)


def test_login_with_csrf_token_then_logout(csrf_client):
    client, app = csrf_client
    _make_user(app)
    page = client.get("/login")
    assert page.status_code == 200
    response = client.post(
        "/login", data={"email": "Ana@Example.com ", "password": PASSWORD, "csrf_token": _csrf(page.text)}
    )
    assert response.status_code == 302
    home = client.get("/", follow_redirects=True)
    assert "ana@example.com" in home.text and "viewer" in home.text
    logout = client.post("/logout", data={"csrf_token": _csrf(home.text)})
    assert logout.status_code == 302 and logout.location.endswith("/login")
    assert client.get("/").location.endswith("/login")


def test_login_without_csrf_token_is_rejected(csrf_client):
    client, app = csrf_client
    _make_user(app)
    response = client.post("/login", data={"email": "ana@example.com", "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/experiments").status_code == 302  # still logged out


def test_logout_without_csrf_token_does_not_log_out(csrf_client):
    client, app = csrf_client
    _make_user(app)
    page = client.get("/login")
    client.post("/login", data={"email": "ana@example.com", "password": PASSWORD, "csrf_token": _csrf(page.text)})
    assert client.post("/logout").status_code == 400
    assert client.get("/experiments").status_code == 200


def test_wrong_password_keeps_the_email_and_says_why(client, make_user):
    make_user("viewer", "ana@example.com")
    response = client.post("/login", data={"email": "ana@example.com", "password": "nope-nope"})
    assert response.status_code == 400
    assert "Email or password is wrong." in response.text
    assert 'value="ana@example.com"' in response.text


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "javascript:alert(1)"])
def test_login_never_redirects_off_site(client, make_user, target):
    make_user("viewer", "ana@example.com")
    response = client.post("/login", data={"email": "ana@example.com", "password": PASSWORD, "next": target})
    assert response.status_code == 302
    assert response.location == "/"


def test_login_returns_to_the_page_asked_for(client, make_user):
    make_user("viewer", "ana@example.com")
    response = client.post("/login", data={"email": "ana@example.com", "password": PASSWORD, "next": "/?tab=x"})
    assert response.location == "/?tab=x"


def test_deactivated_user_cannot_log_in(client, make_user, db):
    from expplatform.models import User

    user = make_user("editor", "gone@example.com")
    with db.write() as session:
        session.get(User, user.id).active = False
    response = client.post("/login", data={"email": "gone@example.com", "password": PASSWORD})
    assert response.status_code == 403 and "This account is deactivated" in response.text
    assert client.get("/experiments").status_code == 302  # not logged in


def test_every_route_declares_its_guard(app):
    """A route without an explicit guard would be open by accident."""
    unguarded = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        if not (hasattr(view, "required_access") or hasattr(view, "required_role")):
            unguarded.append(f"{rule.rule} -> {rule.endpoint}")
    assert unguarded == []


def test_api_errors_are_json_for_unknown_routes_and_methods(client):
    missing = client.get("/api/v1/no-such-thing")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    wrong_method = client.delete("/api/v1/health")
    assert wrong_method.status_code == 405 and wrong_method.json["error"] == "method_not_allowed"


@pytest.fixture
def probe(app):
    """A client-scoped endpoint and an admin-or-editor endpoint, to exercise the guards."""
    from expplatform.auth import api_access

    app.add_url_rule("/api/v1/_probe/client", "probe_client", api_access(scope="client")(lambda: {"ok": True}))
    app.add_url_rule(
        "/api/v1/_probe/admin", "probe_admin", api_access(scope="admin", session_role="editor")(lambda: {"ok": True})
    )
    return app.test_client()


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("Basic abc", "invalid_authorization"),
        ("Bearer ", "invalid_authorization"),
        ("Bearer xp_unknown", "invalid_api_key"),
    ],
)
def test_bad_credentials_are_401_json(probe, header, code):
    response = probe.get("/api/v1/_probe/client", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json["error"] == code
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_guards_tell_401_from_403(probe, make_key):
    client_key, admin_key = make_key("client"), make_key("admin")
    assert probe.get("/api/v1/_probe/client").json["error"] == "authentication_required"
    assert probe.get("/api/v1/_probe/client", headers={"Authorization": f"Bearer {client_key}"}).status_code == 200
    wrong = probe.get("/api/v1/_probe/client", headers={"Authorization": f"Bearer {admin_key}"})
    assert wrong.status_code == 403 and wrong.json["error"] == "forbidden"
    assert probe.get("/api/v1/_probe/admin", headers={"Authorization": f"Bearer {client_key}"}).status_code == 403
    assert probe.get("/api/v1/_probe/admin", headers={"Authorization": f"Bearer {admin_key}"}).status_code == 200


@pytest.mark.parametrize(("role", "status"), [("viewer", 403), ("editor", 200), ("admin", 200)])
def test_session_users_need_the_role(app, probe, make_user, role, status):
    user = make_user(role, f"{role}@example.com")
    sign_in(probe, app, user)
    assert probe.get("/api/v1/_probe/admin").status_code == status
    # A session never satisfies a key-only endpoint.
    assert probe.get("/api/v1/_probe/client").status_code == 403


def test_revoked_key_is_refused_at_once(probe, db, make_key):
    from expplatform.auth import revoke_api_key

    key = make_key("client")
    headers = {"Authorization": f"Bearer {key}"}
    assert probe.get("/api/v1/_probe/client", headers=headers).status_code == 200
    with db.write() as session:
        revoke_api_key(session, key[:12])
    refused = probe.get("/api/v1/_probe/client", headers=headers)
    assert refused.status_code == 401 and refused.json["error"] == "invalid_api_key"


def test_key_created_in_another_worker_is_accepted(database_url, tmp_path, make_key):
    """Worker A has cached the active keys; a key made through worker B works on A."""
    from expplatform.auth import api_access

    worker_a = make_test_app(database_url, tmp_path, definitions_refresh_seconds=3600)
    worker_a.add_url_rule("/api/v1/_probe", "probe", api_access(scope="client")(lambda: {"ok": True}))
    client_a = worker_a.test_client()
    first = make_key("client")
    assert client_a.get("/api/v1/_probe", headers={"Authorization": f"Bearer {first}"}).status_code == 200
    second = make_key("client")
    assert client_a.get("/api/v1/_probe", headers={"Authorization": f"Bearer {second}"}).status_code == 200
    worker_a.extensions["db"].engine.dispose()


# -- the users command --------------------------------------------------------------


def test_users_create_with_a_taken_email_prints_one_line_and_exits_1(runner, make_user):
    from expplatform.cli import main

    make_user("viewer", "ana@example.com")
    result = runner.invoke(
        main, ["users", "create", "--email", "Ana@Example.com", "--role", "editor", "--password", "new-secret-pass"]
    )
    assert result.exit_code == 1
    assert result.output.strip() == "error: an account with the email ana@example.com exists already"
    assert "Traceback" not in result.output and "scrypt" not in result.output and "pbkdf2" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_users_create_refuses_unstorable_emails_without_a_traceback(runner):
    from expplatform.cli import main

    result = runner.invoke(main, ["users", "create", "--email", "a\x00@b.c", "--role", "viewer", "--password", "x" * 9])
    assert result.exit_code == 2 and "email must be" in result.output


def test_users_create_still_creates(runner):
    from expplatform.cli import main

    result = runner.invoke(
        main, ["users", "create", "--email", "new@example.com", "--role", "viewer", "--password", "x" * 9]
    )
    assert result.exit_code == 0 and result.output.strip() == "created viewer new@example.com"
