"""Running a team: admins list accounts with their last login, change roles, reset
passwords (shown once), deactivate after a confirmation page and reactivate; keys are
revoked after one too, show when they were last used, and a new key is in the table
of the page that shows it. A deactivated user with the right password is told so.
The ``expplatform users`` commands do the same from a shell."""

from __future__ import annotations

import re

from sqlalchemy import select

from expplatform.cli import main
from expplatform.key_usage import KeyUsage
from expplatform.models import ApiKey, LoginSession, User, utcnow

from .conftest import PASSWORD, sign_in


def _user(db, user_id) -> User:
    with db.sessionmaker() as session:
        return session.get(User, user_id)


def _sessions_of(db, user_id) -> int:
    with db.sessionmaker() as session:
        return len(session.scalars(select(LoginSession).where(LoginSession.user_id == user_id)).all())


def test_the_accounts_page_lists_role_state_and_last_login(client, login, make_user, app):
    login("admin")
    ana = make_user("viewer", "ana@example.com")
    page = client.get("/admin/users").text
    row = re.search(rf'<tr id="user-{ana.id}".*?</tr>', page, re.S).group(0)
    assert '<option value="viewer" selected>' in row and "active" in row and "never" in row
    other = app.test_client()
    assert other.post("/login", data={"email": "ana@example.com", "password": PASSWORD}).status_code == 302
    row = re.search(rf'<tr id="user-{ana.id}".*?</tr>', client.get("/admin/users").text, re.S).group(0)
    assert "just now" in row and "never" not in row


def test_an_admin_changes_a_role_which_applies_at_once(client, login, make_user, app, db):
    login("admin")
    ed = make_user("editor", "ed@example.com")
    ed_client = app.test_client()
    sign_in(ed_client, app, ed)
    assert ed_client.get("/admin/users").status_code == 403
    response = client.post(f"/admin/users/{ed.id}/role", data={"role": "admin"})
    assert response.location == f"/admin/users#user-{ed.id}"  # back at the row acted on
    assert _user(db, ed.id).role == "admin"
    assert "ed@example.com is now an admin." in client.get("/admin/users").text
    assert ed_client.get("/admin/users").status_code == 200  # the open session has the new role
    assert client.post(f"/admin/users/{ed.id}/role", data={"role": "boss"}).status_code == 302
    assert _user(db, ed.id).role == "admin"


def test_an_admin_cannot_change_their_own_role(client, login, db):
    me = login("admin")
    client.post(f"/admin/users/{me.id}/role", data={"role": "viewer"})
    assert _user(db, me.id).role == "admin"
    assert "cannot change your own role" in client.get("/admin/users").text


def test_deactivating_asks_first_then_logs_out_and_the_user_is_told_why(client, login, make_user, app, db):
    login("admin")
    ana = make_user("editor", "ana@example.com")
    ana_client = app.test_client()
    sign_in(ana_client, app, ana)
    confirm = client.get(f"/admin/users/{ana.id}/deactivate")
    assert confirm.status_code == 200 and "Deactivate ana@example.com?" in confirm.text
    assert f'action="/admin/users/{ana.id}/deactivate"' in confirm.text and "Cancel" in confirm.text
    assert _user(db, ana.id).active is True  # looking at the question changes nothing

    assert client.post(f"/admin/users/{ana.id}/deactivate").location == f"/admin/users#user-{ana.id}"
    assert _user(db, ana.id).active is False and _sessions_of(db, ana.id) == 0
    assert ana_client.get("/experiments").status_code == 302  # logged out

    stranger = app.test_client()
    right = stranger.post("/login", data={"email": "ana@example.com", "password": PASSWORD})
    assert right.status_code == 403 and "This account is deactivated" in right.text
    wrong = stranger.post("/login", data={"email": "ana@example.com", "password": "not the password"})
    assert wrong.status_code == 400 and "Email or password is wrong." in wrong.text
    assert "deactivated" not in wrong.text  # a wrong password learns nothing about the account

    page = client.get("/admin/users").text
    assert f'action="/admin/users/{ana.id}/reactivate"' in page
    assert client.post(f"/admin/users/{ana.id}/reactivate").location == f"/admin/users#user-{ana.id}"
    assert stranger.post("/login", data={"email": "ana@example.com", "password": PASSWORD}).status_code == 302


def test_a_password_reset_asks_first_and_shows_the_new_password_once(client, login, make_user, app, db):
    login("admin")
    ana = make_user("viewer", "ana@example.com")
    ana_client = app.test_client()
    sign_in(ana_client, app, ana)
    confirm = client.get(f"/admin/users/{ana.id}/reset-password")
    assert "Reset the password of ana@example.com?" in confirm.text
    response = client.post(f"/admin/users/{ana.id}/reset-password")
    assert response.status_code == 200
    password = re.search(r"<pre><code>([^<]+)</code></pre>", response.text).group(1)
    assert "New password for ana@example.com" in response.text and len(password) >= 12
    assert password not in client.get("/admin/users").text  # shown once
    assert ana_client.get("/experiments").status_code == 302  # every session of hers ended
    stranger = app.test_client()
    assert stranger.post("/login", data={"email": "ana@example.com", "password": PASSWORD}).status_code == 400
    assert stranger.post("/login", data={"email": "ana@example.com", "password": password}).status_code == 302


def test_a_new_key_is_in_the_table_of_the_page_that_shows_it(client, login):
    login("admin")
    response = client.post("/admin/keys", data={"name": "ci-deploy", "scope": "admin"})
    key = re.search(r"<pre><code>(xp_[^<]+)</code></pre>", response.text).group(1)
    row = re.search(rf'<tr id="key-{key[:12]}" class="new-row">.*?</tr>', response.text, re.S)
    assert row is not None and "ci-deploy" in row.group(0) and "never" in row.group(0)


def test_revoking_a_key_asks_first(client, login, make_key, db):
    login("admin")
    prefix = make_key("client", "web shop")[:12]
    confirm = client.get(f"/admin/keys/{prefix}/revoke")
    assert confirm.status_code == 200 and f"Revoke the key “web shop” ({prefix}…)?" in confirm.text
    assert "client apps that ship it stop getting variants" in confirm.text
    with db.sessionmaker() as session:
        assert session.scalar(select(ApiKey.revoked_at).where(ApiKey.prefix == prefix)) is None
    assert f'href="/admin/keys/{prefix}/revoke"' in client.get("/admin/keys").text  # a link, not a button
    assert client.post(f"/admin/keys/{prefix}/revoke").location == f"/admin/keys#key-{prefix}"
    with db.sessionmaker() as session:
        assert session.scalar(select(ApiKey.revoked_at).where(ApiKey.prefix == prefix)) is not None
    assert client.get("/admin/keys/xp_nosuchkey/revoke").status_code == 404


def test_last_use_of_a_key_is_recorded_and_shown(client, login, app, db, make_key):
    key = make_key("admin", "ci-deploy")
    anonymous = app.test_client()
    assert anonymous.get("/api/v1/experiments", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with db.sessionmaker() as session:
        used = session.scalar(select(ApiKey.last_used_at).where(ApiKey.prefix == key[:12]))
    assert used is not None and (utcnow() - used).total_seconds() < 60
    login("admin")
    row = re.search(rf'<tr id="key-{key[:12]}".*?</tr>', client.get("/admin/keys").text, re.S).group(0)
    assert "just now" in row


def test_a_served_app_records_key_use_in_a_thread_so_requests_never_wait_for_it(db, make_key):
    """While another transaction holds the row (or SQLite's write lock), noting a use
    returns at once; the writer thread records it once the lock is free."""
    key = make_key("client", "app")
    with db.sessionmaker() as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.prefix == key[:12]))
    usage = KeyUsage(db, background=True)
    with db.write() as blocking:  # SQLite: BEGIN IMMEDIATE holds the write lock; PostgreSQL: the row's
        blocking.scalar(select(ApiKey.id).where(ApiKey.id == key_id).with_for_update())
        usage.note(key_id)  # a request would go on here
        assert blocking.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id)) is None
    usage.flush()  # returns after the writer thread's flush (or does it, if the thread has not begun)
    with db.sessionmaker() as session:
        assert session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id)) is not None
    assert usage._thread is not None and usage._thread.is_alive()


def test_key_use_is_queued_at_most_once_a_minute_per_key_and_written_only_when_a_minute_old(db, make_key):
    key = make_key("client", "app")
    with db.sessionmaker() as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.prefix == key[:12]))
    usage = KeyUsage(db, background=False)
    written = []
    flush = usage.flush
    usage.flush = lambda: written.append(flush()) or written[-1]  # type: ignore[method-assign]
    usage.note(key_id)
    usage.note(key_id)  # within the minute: nothing queued, nothing written
    assert written == [1]
    with db.sessionmaker() as session:
        first = session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))
    assert first is not None
    again = KeyUsage(db, background=False)  # another worker, a moment later: its write leaves the fresh time alone
    again.note(key_id)
    with db.sessionmaker() as session:
        assert session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id)) == first


# -- the users command ---------------------------------------------------------------


def test_users_list_set_role_and_reset_password(runner, make_user, db):
    make_user("admin", "boss@example.com")
    make_user("viewer", "ana@example.com")
    listed = runner.invoke(main, ["users", "list"])
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert lines[0].split() == ["EMAIL", "ROLE", "STATE", "LAST", "LOGIN"]
    assert lines[1].split() == ["ana@example.com", "viewer", "active", "never"]
    assert lines[0].index("ROLE") == lines[1].index("viewer") == lines[2].index("admin")  # aligned

    changed = runner.invoke(main, ["users", "set-role", "Ana@Example.com", "editor"])
    assert changed.exit_code == 0 and changed.output.strip() == "ana@example.com is now an editor"
    with db.sessionmaker() as session:
        assert session.scalar(select(User.role).where(User.email == "ana@example.com")) == "editor"

    reset = runner.invoke(main, ["users", "reset-password", "ana@example.com"])
    assert reset.exit_code == 0
    password = reset.output.splitlines()[-1]
    with db.sessionmaker() as session:
        from expplatform.auth import authenticate_user

        assert authenticate_user(session, "ana@example.com", password) is not None
        assert authenticate_user(session, "ana@example.com", PASSWORD) is None


def test_users_commands_fail_in_one_line(runner, make_user):
    make_user("admin", "boss@example.com")
    missing = runner.invoke(main, ["users", "set-role", "nobody@example.com", "editor"])
    assert missing.exit_code == 1 and missing.output.strip() == "error: no account with the email nobody@example.com"
    last = runner.invoke(main, ["users", "set-role", "boss@example.com", "viewer"])
    assert last.exit_code == 1
    assert last.output.strip() == "error: boss@example.com is the only active admin; make another admin first"
    gone = runner.invoke(main, ["users", "reset-password", "nobody@example.com"])
    assert gone.exit_code == 1 and "Traceback" not in gone.output
    taken = runner.invoke(
        main,
        ["users", "create", "--email", "boss@example.com", "--role", "viewer"],
        input="x" * 9 + "\n" + "x" * 9 + "\n",
    )
    assert (
        taken.exit_code == 1
        and taken.output.splitlines()[-1] == "error: an account with the email boss@example.com exists already"
    )
