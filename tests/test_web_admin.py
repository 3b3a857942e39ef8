"""Accounts and API keys pages: admins only; a key is shown once and works at once."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from expplatform.models import ApiKey, User

from .conftest import PASSWORD


@pytest.mark.parametrize("path", ["/admin/users", "/admin/keys"])
@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_only_admins_see_accounts_and_keys(client, login, path, role):
    login(role)
    assert client.get(path).status_code == 403
    assert client.post(path, data={}).status_code == 403


def test_admin_creates_and_deactivates_an_account(client, login, db):
    login("admin")
    created = client.post("/admin/users", data={"email": "Nia@Example.com", "password": PASSWORD, "role": "editor"})
    assert created.status_code == 302
    page = client.get("/admin/users")
    assert "nia@example.com" in page.text
    with db.sessionmaker() as session:
        nia = session.scalar(select(User).where(User.email == "nia@example.com"))
        assert nia.role == "editor" and nia.password_hash != PASSWORD
    duplicate = client.post("/admin/users", data={"email": "nia@example.com", "password": PASSWORD, "role": "viewer"})
    assert duplicate.status_code == 409 and "exists already" in duplicate.text
    short = client.post("/admin/users", data={"email": "x@example.com", "password": "short", "role": "viewer"})
    assert short.status_code == 422 and "between 8 and 200 characters" in short.text
    assert client.post(f"/admin/users/{nia.id}/deactivate").location == f"/admin/users#user-{nia.id}"
    with db.sessionmaker() as session:
        assert session.get(User, nia.id).active is False
    other = client.application.test_client()
    assert other.post("/login", data={"email": "nia@example.com", "password": PASSWORD}).status_code == 403


def test_admin_cannot_deactivate_themselves(client, login, db):
    me = login("admin")
    response = client.post(f"/admin/users/{me.id}/deactivate", follow_redirects=True)
    assert "cannot deactivate your own" in response.text
    with db.sessionmaker() as session:
        assert session.get(User, me.id).active is True


def test_new_key_is_shown_once_and_works_then_revoked(client, login, db):
    login("admin")
    response = client.post("/admin/keys", data={"name": "web shop", "scope": "client"})
    assert response.status_code == 201
    key = re.search(r"<pre><code>(xp_[^<]+)</code></pre>", response.text).group(1)
    assert key not in client.get("/admin/keys").text
    with db.sessionmaker() as session:
        record = session.scalar(select(ApiKey).where(ApiKey.prefix == key[:12]))
        assert record.scope == "client" and record.created_by.startswith("user:admin-") and key not in record.key_hash
    anonymous = client.application.test_client()
    probe = anonymous.get("/api/v1/experiments", headers={"Authorization": f"Bearer {key}"})
    assert probe.status_code == 403  # known key, wrong scope: authenticated, not authorised
    assert client.post(f"/admin/keys/{key[:12]}/revoke").location == f"/admin/keys#key-{key[:12]}"
    probe = anonymous.get("/api/v1/experiments", headers={"Authorization": f"Bearer {key}"})
    assert probe.status_code == 401 and probe.json["error"] == "invalid_api_key"


def test_key_needs_a_name(client, login):
    login("admin")
    response = client.post("/admin/keys", data={"name": "", "scope": "admin"})
    assert response.status_code == 422 and "required" in response.text.lower()
