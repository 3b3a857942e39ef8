"""Login throttling (issue 11): failures are counted per account and per client
address in a table every worker shares; past the limit a login is refused with a 429
and Retry-After before any password is checked, and unknown e-mails cost the same
password check as known ones."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from expplatform import auth
from expplatform.auth import LOGIN_WINDOW, MAX_FAILURES_PER_ACCOUNT, MAX_FAILURES_PER_ADDRESS
from expplatform.errors import TooManyAttempts
from expplatform.models import LoginAttempt, User, utcnow

from .conftest import PASSWORD, make_test_app


def _post(client, email: str, password: str, address: str = "127.0.0.1"):
    return client.post("/login", data={"email": email, "password": password}, environ_base={"REMOTE_ADDR": address})


def _seed(db, count: int, *, email: str = "ana@example.com", address: str = "10.0.0.9", age=timedelta(0)):
    with db.write() as session:
        session.add_all(
            LoginAttempt(email=email, address=address, at=utcnow() - age - timedelta(seconds=i)) for i in range(count)
        )


def _attempts(db, **where) -> int:
    with db.sessionmaker() as session:
        query = select(func.count()).select_from(LoginAttempt)
        for name, value in where.items():
            query = query.where(getattr(LoginAttempt, name) == value)
        return session.scalar(query)


def test_ten_wrong_passwords_lock_the_account_with_429_and_retry_after(client, make_user, db):
    make_user("viewer", "ana@example.com")
    for _ in range(MAX_FAILURES_PER_ACCOUNT):
        assert _post(client, "ana@example.com", "wrong-password").status_code == 400
    locked = _post(client, "ana@example.com", PASSWORD)  # even the right password now
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["Retry-After"]) <= LOGIN_WINDOW.total_seconds()
    assert "Too many failed attempts. Try again in 15 minutes." in locked.text
    assert 'value="ana@example.com"' in locked.text  # the page is the login page, still usable
    assert client.get("/experiments").status_code == 302  # not logged in
    # Refused attempts are not counted (the lockout does not grow while hammered).
    assert _attempts(db, email="ana@example.com") == MAX_FAILURES_PER_ACCOUNT


def test_the_lock_is_per_account(client, make_user, db):
    make_user("viewer", "ana@example.com")
    make_user("viewer", "bo@example.com")
    _seed(db, MAX_FAILURES_PER_ACCOUNT, email="ana@example.com")
    assert _post(client, "ana@example.com", PASSWORD).status_code == 429
    assert _post(client, "bo@example.com", PASSWORD).status_code == 302


def test_fifty_failures_from_one_address_lock_that_address(client, make_user, db):
    make_user("viewer", "ana@example.com")
    with db.write() as session:
        session.add_all(
            LoginAttempt(email=f"guess-{i}@example.com", address="10.0.0.7", at=utcnow())
            for i in range(MAX_FAILURES_PER_ADDRESS)
        )
    refused = _post(client, "ana@example.com", PASSWORD, address="10.0.0.7")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert _post(client, "ana@example.com", PASSWORD, address="10.0.0.8").status_code == 302


def test_a_success_resets_the_account_counter(client, make_user, db):
    make_user("viewer", "ana@example.com")
    _seed(db, MAX_FAILURES_PER_ACCOUNT - 1)
    assert _post(client, "ana@example.com", PASSWORD).status_code == 302
    assert _attempts(db, email="ana@example.com") == 0
    assert _post(client, "ana@example.com", "wrong-password").status_code == 400  # counting from zero again
    assert _attempts(db, email="ana@example.com") == 1


def test_attempts_older_than_the_window_do_not_count_and_are_pruned(client, make_user, db):
    make_user("viewer", "ana@example.com")
    _seed(db, 40, age=LOGIN_WINDOW + timedelta(minutes=1))
    assert _post(client, "ana@example.com", PASSWORD).status_code == 302
    assert _attempts(db) == 0


def test_every_worker_sees_the_same_counts(database_url, tmp_path, make_user, db):
    """Two apps over one database (two gunicorn workers, or two machines)."""
    make_user("viewer", "ana@example.com")
    worker_a = make_test_app(database_url, tmp_path / "a")
    worker_b = make_test_app(database_url, tmp_path / "b")
    try:
        _seed(db, MAX_FAILURES_PER_ACCOUNT - 1)
        assert _post(worker_a.test_client(), "ana@example.com", "wrong-password").status_code == 400
        assert _post(worker_b.test_client(), "ana@example.com", PASSWORD).status_code == 429
    finally:
        worker_a.extensions["db"].engine.dispose()
        worker_b.extensions["db"].engine.dispose()


def test_retry_after_is_when_enough_failures_have_left_the_window(db, make_user):
    make_user("viewer", "ana@example.com")
    now = utcnow()
    with db.write() as session:  # failures 1, 2, ..., 10 minutes ago
        session.add_all(
            LoginAttempt(email="ana@example.com", address="10.0.0.9", at=now - timedelta(minutes=m))
            for m in range(1, MAX_FAILURES_PER_ACCOUNT + 1)
        )
    with pytest.raises(TooManyAttempts) as info:
        auth.log_in(db, "ana@example.com", PASSWORD, "10.0.0.9", now=now)
    # The oldest failure (10 minutes ago) leaves the window in 5 minutes.
    assert info.value.retry_after == 5 * 60
    assert auth.log_in(db, "ana@example.com", PASSWORD, "10.0.0.9", now=now + timedelta(minutes=5, seconds=1))


def test_unknown_emails_cost_a_password_check_too(app, db, make_user, monkeypatch):
    """The response time must not tell which e-mails have accounts: an unknown one
    is checked against a dummy hash, as a known one against its own."""
    make_user("viewer", "ana@example.com")
    checked: list[str] = []
    real = auth.check_password_hash
    monkeypatch.setattr(auth, "check_password_hash", lambda hashed, pw: checked.append(hashed) or real(hashed, pw))
    assert auth.log_in(db, "nobody@example.com", "wrong-password", "10.0.0.1") is None
    assert auth.log_in(db, "ana@example.com", "wrong-password", "10.0.0.1") is None
    assert len(checked) == 2
    unknown_hash, known_hash = checked
    assert unknown_hash.split("$")[0] == known_hash.split("$")[0]  # the same method and cost
    assert unknown_hash != known_hash


def test_a_deactivated_user_is_told_so_only_after_the_right_password(client, make_user, db):
    """Issue 15: the right password earns the reason; a wrong one learns nothing."""
    user = make_user("editor", "gone@example.com")
    with db.write() as session:
        session.get(User, user.id).active = False
    response = _post(client, "gone@example.com", PASSWORD)
    assert response.status_code == 403 and "This account is deactivated." in response.text
    response = _post(client, "gone@example.com", "a wrong password")
    assert response.status_code == 400 and "Email or password is wrong." in response.text
    assert "deactivated" not in response.text


@pytest.mark.parametrize("email", ["ana\x00@example.com", "\x00"])
def test_hostile_emails_are_a_wrong_login_not_an_error(client, make_user, email):
    make_user("viewer", "ana@example.com")
    response = _post(client, email, PASSWORD)
    assert response.status_code == 400 and "Email or password is wrong." in response.text


def test_unstorable_characters_in_an_email_are_a_wrong_login(db, make_user):
    make_user("viewer", "ana@example.com")
    for email in ("ana@example.com\ud800", "ana@example.com\x00"):
        assert auth.log_in(db, email, PASSWORD, "10.0.0.1") is None
    assert _attempts(db, email="ana@example.com?") == 2  # recorded, with the character replaced


def test_an_api_caller_gets_json_429_with_retry_after(app):
    from expplatform.auth import public

    def limited():
        raise TooManyAttempts(30)

    app.add_url_rule("/api/v1/_probe/limited", "probe_limited", public(limited))
    response = app.test_client().get("/api/v1/_probe/limited")
    assert response.status_code == 429 and response.headers["Retry-After"] == "30"
    assert response.json["error"] == "too_many_attempts" and response.json["message"].startswith("Too many")
