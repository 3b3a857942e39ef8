"""Who is calling: web users (session login, roles) and API keys (bearer, scopes).

Roles are ordered: viewer < editor < admin. Scopes are separate capabilities: a
``client`` key may only assign and send events (it ships inside client apps), an
``admin`` key manages experiments and reads reports; neither implies the other.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, Literal

from flask import Flask, abort, current_app, g, redirect, request, session, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from .db import get_db, get_session
from .errors import AuthenticationRequired, Forbidden
from .models import ApiKey, User, utcnow
from .versioning import VersionedCache, bump_version

Role = Literal["viewer", "editor", "admin"]
Scope = Literal["client", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "editor", "admin")
SCOPES: tuple[Scope, ...] = ("client", "admin")
_ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
KEY_PREFIX = "xp_"
# (key, principal or None) of the key a request's Authorization header named, once
# looked up (see key_principal): the assignment fast path's look-up travels to Flask.
KEY_LOOKUP_ENVIRON = "expplatform.key_lookup"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller, as recorded in the audit log."""

    kind: Literal["user", "key"]
    id: int
    label: str
    role: Role | None = None
    scope: Scope | None = None

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.label}"


# -- passwords and users ----------------------------------------------------------


def hash_password(password: str) -> str:
    return generate_password_hash(password)


def create_user(db: Session, email: str, password: str, role: Role) -> User:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise ValueError("password must be at least 8 characters")
    user = User(email=email.strip().lower(), password_hash=hash_password(password), role=role)
    db.add(user)
    db.flush()
    return user


def authenticate_user(db: Session, email: str, password: str) -> User | None:
    user = db.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None or not user.active or not check_password_hash(user.password_hash, password):
        return None
    return user


def role_at_least(role: str | None, needed: Role) -> bool:
    return role in _ROLE_RANK and _ROLE_RANK[role] >= _ROLE_RANK[needed]


# -- API keys ------------------------------------------------------------------------


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(db: Session, scope: Scope, name: str, created_by: str) -> tuple[ApiKey, str]:
    """Return the stored key and its plaintext, which is never stored or shown again."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(name=name, prefix=plaintext[:12], key_hash=_digest(plaintext), scope=scope, created_by=created_by)
    db.add(record)
    db.flush()
    return record, plaintext


def revoke_api_key(db: Session, prefix: str) -> ApiKey | None:
    record = db.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if record is None:
        return None
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        bump_version(db)  # every worker drops its cached keys
    return record


def _load_active_keys(db: Session) -> dict[str, Principal]:
    rows = db.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None)))
    return {
        row.key_hash: Principal(kind="key", id=row.id, label=row.prefix, scope=row.scope)  # type: ignore[arg-type]
        for row in rows
    }


def principal_for_key(key: str, app: Flask | None = None) -> Principal | None:
    """The active key's principal, from the worker's cache (``app`` when called
    outside a request context, as the assignment fast path does)."""
    app = app or current_app
    cache: VersionedCache[dict[str, Principal]] = app.extensions["api_key_cache"]
    database = get_db(app)
    digest = _digest(key)
    found = cache.get(database.sessionmaker).get(digest)
    if found is None:
        # A key created a moment ago in another worker: one direct look-up before saying no.
        with database.sessionmaker() as db:
            record = db.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
            if record is not None and record.revoked_at is None:
                cache.invalidate()
                return Principal(kind="key", id=record.id, label=record.prefix, scope=record.scope)  # type: ignore[arg-type]
    return found


# -- request authentication ----------------------------------------------------------


def current_user() -> User | None:
    if "user" not in g:
        user_id = session.get("user_id")
        user = get_session().get(User, user_id) if user_id is not None else None
        g.user = user if user is not None and user.active else None
    return g.user


def current_principal() -> Principal | None:
    """The caller of this request: a bearer key if one was sent, else the session user."""
    if "principal" in g:
        return g.principal
    principal: Principal | None = None
    header = request.headers.get("Authorization", "")
    if header:
        principal = key_principal(header, request.environ)
    else:
        user = current_user()
        if user is not None:
            principal = Principal(kind="user", id=user.id, label=user.email, role=user.role)  # type: ignore[arg-type]
    g.principal = principal
    return principal


def key_principal(authorization: str, environ: dict[str, Any], app: Flask | None = None) -> Principal:
    """The principal of the key in an ``Authorization: Bearer <key>`` header.

    Shared by every guard (through ``current_principal``) and the assignment fast
    path, which calls it before Flask does: the look-up is kept in ``environ``, so a
    call the fast path hands to Flask is not looked up twice.
    """
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationRequired(
            code="invalid_authorization", message="Send the key as 'Authorization: Bearer <key>'."
        )
    key = token.strip()
    looked_up = environ.get(KEY_LOOKUP_ENVIRON)
    if looked_up is not None and looked_up[0] == key:
        principal = looked_up[1]
    else:
        principal = principal_for_key(key, app)
        environ[KEY_LOOKUP_ENVIRON] = (key, principal)
    if principal is None:
        raise AuthenticationRequired(code="invalid_api_key", message="The API key is unknown or revoked.")
    return principal


def check_access(principal: Principal | None, scope: Scope, session_role: Role | None = None) -> Principal:
    """The one rule of the API guards (``api_access``) and of the assignment fast
    path: a key with ``scope``, or (when ``session_role`` is given) a logged-in user
    with at least that role. AuthenticationRequired without credentials, Forbidden
    with the wrong ones."""
    if principal is None:
        raise AuthenticationRequired(
            code="authentication_required", message="Send an API key as 'Authorization: Bearer <key>'."
        )
    if principal.kind == "key":
        if principal.scope != scope:
            raise Forbidden(f"This endpoint needs a key with the '{scope}' scope.")
    elif session_role is None or not role_at_least(principal.role, session_role):
        raise Forbidden("Your account may not use this endpoint.")
    return principal


def public(view: Callable) -> Callable:
    """Mark a route as deliberately open to anyone (health, docs, login page), so
    that the access-matrix test can insist every other route declares its guard."""
    view.required_access = "public"  # type: ignore[attr-defined]
    return view


def api_access(*, scope: Scope, session_role: Role | None = None) -> Callable:
    """Guard an API route: a key with ``scope``, or (when ``session_role`` is given) a
    logged-in user with at least that role. 401 without credentials, 403 with the
    wrong ones; always JSON."""

    def decorator(view: Callable) -> Callable:
        view.required_access = {"scope": scope, "session_role": session_role}  # type: ignore[attr-defined]

        @wraps(view)
        def wrapped(*args, **kwargs):
            check_access(current_principal(), scope, session_role)
            return view(*args, **kwargs)

        return wrapped

    return decorator


def login_required(role: Role = "viewer") -> Callable:
    """Guard a web page: redirect to the login page when logged out, 403 when the
    user's role is too low."""

    def decorator(view: Callable) -> Callable:
        view.required_role = role  # type: ignore[attr-defined]

        @wraps(view)
        def wrapped(*args, **kwargs):
            user = current_user()
            if user is None:
                return redirect(url_for("web.login", next=request.full_path.rstrip("?")))
            if not role_at_least(user.role, role):
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorator


def init_app(app: Flask) -> None:
    settings = app.extensions["settings"]
    app.extensions["api_key_cache"] = VersionedCache(_load_active_keys, settings.definitions_refresh_seconds)
