"""Server-side login sessions (issue 11): the cookie carries only the token of a
session row, so logout, a password change, expiry or deactivation end it for every
copy of the cookie; the lifetime slides while the session is used; the cookie is
Secure when configured or when the request came over TLS."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from expplatform.auth import SESSION_TOKEN
from expplatform.config import load_settings
from expplatform.models import LoginSession, User, utcnow

from .conftest import PASSWORD, make_test_app


def _log_in(client, email: str = "ana@example.com", password: str = PASSWORD, **kwargs):
    response = client.post("/login", data={"email": email, "password": password}, **kwargs)
    assert response.status_code == 302, response.text
    return response


def _cookie(client) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def _copy_of(app, client):
    """Another browser holding a copy of ``client``'s session cookie."""
    thief = app.test_client()
    thief.set_cookie("session", _cookie(client))
    return thief


def _sessions(db) -> list[LoginSession]:
    with db.sessionmaker() as session:
        return list(session.scalars(select(LoginSession)))


def _logged_in(client) -> bool:
    return client.get("/experiments").status_code == 200


def test_logout_ends_the_session_for_every_copy_of_the_cookie(app, client, make_user, db):
    make_user("viewer", "ana@example.com")
    _log_in(client)
    thief = _copy_of(app, client)
    assert _logged_in(thief)
    client.post("/logout")
    assert not _logged_in(client)
    assert not _logged_in(thief)  # the copied cookie is dead too
    assert _sessions(db) == []


def test_a_password_change_ends_every_other_session(app, client, make_user, db):
    make_user("viewer", "ana@example.com")
    _log_in(client)
    elsewhere = app.test_client()
    _log_in(elsewhere)
    thief = _copy_of(app, client)
    changed = client.post(
        "/account/password", data={"current": PASSWORD, "new": "a-new-passphrase", "confirm": "a-new-passphrase"}
    )
    assert changed.status_code == 302
    assert _logged_in(client)  # the browser that changed it stays logged in, with a new session
    assert not _logged_in(elsewhere) and not _logged_in(thief)
    assert len(_sessions(db)) == 1
    client.post("/logout")
    assert client.post("/login", data={"email": "ana@example.com", "password": PASSWORD}).status_code == 400
    _log_in(client, password="a-new-passphrase")


def test_a_password_change_needs_the_current_password(client, make_user):
    make_user("viewer", "ana@example.com")
    _log_in(client)
    refused = client.post("/account/password", data={"current": "not-it-at-all", "new": "x" * 12, "confirm": "x" * 12})
    assert refused.status_code == 422 and "not your current password" in refused.text
    differ = client.post("/account/password", data={"current": PASSWORD, "new": "x" * 12, "confirm": "y" * 12})
    assert differ.status_code == 422 and "Passwords differ." in differ.text
    assert client.get("/account/password").status_code == 200


def test_guessing_the_current_password_is_throttled_like_a_login(client, make_user):
    from expplatform.auth import MAX_FAILURES_PER_ACCOUNT

    make_user("viewer", "ana@example.com")
    _log_in(client)
    form = {"new": "x" * 12, "confirm": "x" * 12}
    for _ in range(MAX_FAILURES_PER_ACCOUNT):
        assert client.post("/account/password", data={**form, "current": "guess-guess"}).status_code == 422
    locked = client.post("/account/password", data={**form, "current": PASSWORD})
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0


def test_an_expired_session_is_refused_and_forgotten(client, make_user, db):
    make_user("viewer", "ana@example.com")
    _log_in(client)
    with db.write() as session:
        session.execute(update(LoginSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    response = client.get("/experiments")
    assert response.status_code == 302 and "/login" in response.location
    # The browser is told to drop the dead token.
    with client.session_transaction() as flask_session:
        assert SESSION_TOKEN not in flask_session


def test_a_session_in_use_slides_forward(client, make_user, db, app):
    make_user("viewer", "ana@example.com")
    _log_in(client)
    lifetime = timedelta(seconds=app.extensions["settings"].session_lifetime_seconds)
    (created,) = _sessions(db)
    assert abs(created.expires_at - (utcnow() + lifetime)) < timedelta(minutes=1)
    almost = utcnow() + timedelta(minutes=2)
    with db.write() as session:
        session.execute(update(LoginSession).values(expires_at=almost))
    assert _logged_in(client)
    (renewed,) = _sessions(db)
    assert renewed.expires_at > almost + lifetime - timedelta(minutes=5)


def test_a_session_used_again_at_once_is_not_rewritten(client, make_user, db):
    make_user("viewer", "ana@example.com")
    _log_in(client)
    (first,) = _sessions(db)
    assert _logged_in(client)
    (second,) = _sessions(db)
    assert second.expires_at == first.expires_at


def test_the_lifetime_is_a_setting_defaulting_to_a_working_day(database_url, tmp_path, make_user):
    assert load_settings({"testing": True}, environ={}).session_lifetime_seconds == 8 * 3600
    assert (
        load_settings(
            {"testing": True}, environ={"EXPPLATFORM_SESSION_LIFETIME_SECONDS": "3600"}
        ).session_lifetime_seconds
        == 3600
    )
    app = make_test_app(database_url, tmp_path, session_lifetime_seconds=3600)
    try:
        make_user("viewer", "ana@example.com")
        client = app.test_client()
        response = _log_in(client)
        (row,) = _sessions(app.extensions["db"])
        assert abs(row.expires_at - (utcnow() + timedelta(hours=1))) < timedelta(minutes=1)
        assert "Expires=" in response.headers["Set-Cookie"]
    finally:
        app.extensions["db"].engine.dispose()


def test_a_cookie_naming_only_a_user_id_is_not_a_login(client, make_user):
    """The old cookie format (signed, but with no server-side session) stops working."""
    user = make_user("admin", "ana@example.com")
    with client.session_transaction() as flask_session:
        flask_session["user_id"] = user.id
    assert not _logged_in(client)


def test_a_deactivated_users_sessions_stop_working(client, make_user, db):
    user = make_user("viewer", "ana@example.com")
    _log_in(client)
    with db.write() as session:
        session.get(User, user.id).active = False
    assert not _logged_in(client)


def _session_cookie(response) -> str:
    (cookie,) = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    return cookie


def test_cookies_are_not_secure_over_plain_http_by_default(client, make_user):
    make_user("viewer", "ana@example.com")
    cookie = _session_cookie(_log_in(client))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


@pytest.mark.parametrize(
    ("overrides", "kwargs"),
    [
        ({"secure_cookies": True}, {}),
        ({}, {"headers": {"X-Forwarded-Proto": "https"}}),
        ({}, {"base_url": "https://localhost"}),
    ],
)
def test_cookies_are_secure_when_configured_or_over_tls(database_url, tmp_path, make_user, overrides, kwargs):
    app = make_test_app(database_url, tmp_path, **overrides)
    try:
        make_user("viewer", "ana@example.com")
        cookie = _session_cookie(_log_in(app.test_client(), **kwargs))
        assert re.search(r";\s*Secure", cookie)
    finally:
        app.extensions["db"].engine.dispose()


def test_secure_cookies_setting_parses_from_the_environment():
    settings = load_settings({"testing": True}, environ={"EXPPLATFORM_SECURE_COOKIES": "true"})
    assert settings.secure_cookies is True
