"""Who is calling: web users (session login, roles) and API keys (bearer, scopes).

Roles are ordered: viewer < editor < admin. Scopes are separate capabilities: a
``client`` key may only assign and send events (it ships inside client apps), an
``admin`` key manages experiments and reads reports; neither implies the other.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, wraps
from typing import Any, Literal, get_args

from flask import Flask, abort, current_app, g, has_request_context, redirect, request, session, url_for
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from .db import Database, get_db, get_session
from .errors import AuthenticationRequired, Conflict, Forbidden, NotFound, TooManyAttempts
from .key_usage import KeyUsage, key_usage
from .models import ApiKey, LoginAttempt, LoginSession, Role, Scope, User, utcnow
from .versioning import VersionedCache, bump_version

ROLES: tuple[Role, ...] = get_args(Role)
SCOPES: tuple[Scope, ...] = get_args(Scope)
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

MIN_PASSWORD, MAX_PASSWORD = 8, 1024
MAX_EMAIL = 254
# Characters no e-mail may hold: PostgreSQL refuses NUL, UTF-8 lone surrogates.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def hash_password(password: str) -> str:
    return generate_password_hash(password)


@cache
def _dummy_hash() -> str:
    """A hash of a password nobody knows, checked when the e-mail is unknown so that
    the answer takes as long as for a known one (the timing tells nothing)."""
    return hash_password(secrets.token_urlsafe(24))


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")


def create_user(db: Session, email: str, password: str, role: Role) -> User:
    """Raise ValueError for a bad role, e-mail or password, Conflict when the e-mail
    has an account already."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    email = normalise_email(email)
    if not email or len(email) > MAX_EMAIL or _UNSTORABLE.search(email) or "@" not in email:
        raise ValueError(f"email must be an address of at most {MAX_EMAIL} characters")
    _check_password(password)
    if db.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict("email_taken", f"an account with the email {email} exists already")
    user = User(email=email, password_hash=hash_password(password), role=role)
    db.add(user)
    try:
        db.flush()
    except IntegrityError:  # created a moment ago by someone else
        raise Conflict("email_taken", f"an account with the email {email} exists already") from None
    return user


class AccountDeactivated(Exception):
    """The e-mail and password are right but an admin deactivated the account: said
    only to whoever knows the password, so it tells a guesser nothing."""


def authenticate_user(db: Session, email: str, password: str) -> User | None:
    """The active user with this e-mail and password, else None; AccountDeactivated
    when both are right for a deactivated account. A password hash is checked whether
    or not the e-mail exists (or the account is active), so the time taken does not
    tell which e-mails have accounts."""
    email = normalise_email(email)
    user = None
    if len(email) <= MAX_EMAIL and not _UNSTORABLE.search(email):
        user = db.scalar(select(User).where(User.email == email))
    if len(password) > MAX_PASSWORD:
        password = ""  # checked anyway (constant time), and never right
    if user is None:
        check_password_hash(_dummy_hash(), password)
        return None
    if not check_password_hash(user.password_hash, password) or not password:
        return None
    if not user.active:
        raise AccountDeactivated(user.email)
    return user


def find_user(db: Session, email: str) -> User:
    """The account with this e-mail (any case); NotFound otherwise."""
    user = db.scalar(select(User).where(User.email == normalise_email(email)))
    if user is None:
        raise NotFound(f"no account with the email {normalise_email(email)}", code="user_not_found")
    return user


def _keep_an_admin(db: Session, user: User) -> None:
    """Refuse to take away the last active admin: nobody could manage accounts after."""
    if user.role != "admin" or not user.active:
        return
    admins = db.scalar(select(func.count()).select_from(User).where(User.role == "admin", User.active.is_(True)))
    if (admins or 0) <= 1:
        raise Conflict("last_admin", f"{user.email} is the only active admin; make another admin first")


def a_role(role: str) -> str:
    """The role with its article: "an admin", "an editor", "a viewer"."""
    return ("an " if role[:1] in "aeiou" else "a ") + role


def set_role(db: Session, user: User, role: str) -> bool:
    """Give ``user`` another role; False when it had it already. The role is read on
    every request, so it applies at once to the user's open sessions."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if user.role == role:
        return False
    if role != "admin":
        _keep_an_admin(db, user)
    user.role = role
    return True


def set_active(db: Session, user: User, active: bool) -> bool:
    """Deactivate (its sessions end: it can no longer log in) or reactivate an account;
    False when it was so already."""
    if user.active == active:
        return False
    if not active:
        _keep_an_admin(db, user)
        end_user_sessions(db, user.id)
    user.active = active
    return True


def reset_password(db: Session, user: User) -> str:
    """Give ``user`` a new random password (returned, to be shown once to the admin
    who hands it over) and end every session it has."""
    password = secrets.token_urlsafe(12)
    change_password(db, user, password)
    return password


def change_password(db: Session, user: User, password: str) -> None:
    """Set a new password and end every session of the user: a stolen cookie (or a
    forgotten login elsewhere) stops working with the old password."""
    _check_password(password)
    user.password_hash = hash_password(password)
    end_user_sessions(db, user.id)


# -- login throttling -----------------------------------------------------------------

LOGIN_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_ACCOUNT = 10
MAX_FAILURES_PER_ADDRESS = 50


def _attempts_over(
    db: Session, column: Any, value: str, limit: int, since: datetime, own_id: int, now: datetime
) -> int | None:
    """Seconds until ``value`` has fewer than ``limit`` attempts in the window, or None
    if it is not over the limit (counting this attempt)."""
    recent = select(LoginAttempt.at).where(column == value, LoginAttempt.at > since)
    count = db.scalar(select(func.count()).select_from(recent.subquery()))
    if not count or count <= limit:
        return None
    # Once the limit-th newest of the others leaves the window, one more try is allowed.
    oldest_kept = db.scalar(
        recent.where(LoginAttempt.id != own_id)
        .order_by(LoginAttempt.at.desc(), LoginAttempt.id.desc())
        .offset(limit - 1)
        .limit(1)
    )
    if oldest_kept is None:
        return 1
    return max(1, math.ceil((oldest_kept + LOGIN_WINDOW - now).total_seconds()))


def log_in(database: Database, email: str, password: str, address: str, *, now: datetime | None = None) -> User | None:
    """Check a login, throttled per account and per client address.

    The attempt is recorded first (in its own transaction, so that every worker and
    machine counts it) and counted with the others of the last ``LOGIN_WINDOW``: over
    ``MAX_FAILURES_PER_ACCOUNT`` for the e-mail or ``MAX_FAILURES_PER_ADDRESS`` for the
    address, it is taken back and TooManyAttempts raised, before any password is
    checked. A success deletes the account's attempts; a failure leaves its row.
    """
    now = now or utcnow()
    key = _UNSTORABLE.sub("?", normalise_email(email))[:MAX_EMAIL]
    address = address[:64]
    with database.write() as db:
        if db.get_bind().dialect.name == "postgresql":
            # Serialise the attempts on one account (then one address), so that
            # concurrent guesses cannot all pass the count at once.
            db.execute(text("SELECT pg_advisory_xact_lock(1, hashtext(:key))"), {"key": key})
            db.execute(text("SELECT pg_advisory_xact_lock(2, hashtext(:key))"), {"key": address})
        db.execute(delete(LoginAttempt).where(LoginAttempt.at < now - LOGIN_WINDOW))
        attempt = LoginAttempt(email=key, address=address, at=now)
        db.add(attempt)
        db.flush()
        since = now - LOGIN_WINDOW
        waits = [
            _attempts_over(db, LoginAttempt.email, key, MAX_FAILURES_PER_ACCOUNT, since, attempt.id, now),
            _attempts_over(db, LoginAttempt.address, address, MAX_FAILURES_PER_ADDRESS, since, attempt.id, now),
        ]
        retry_after = max((wait for wait in waits if wait is not None), default=None)
        if retry_after is not None:
            raise TooManyAttempts(retry_after)  # rolls back: this attempt is not counted
    with database.sessionmaker() as db:
        user = authenticate_user(db, email, password)
    if user is not None:
        with database.write() as db:
            db.execute(delete(LoginAttempt).where(LoginAttempt.email == key))
            db.execute(update(User).where(User.id == user.id).values(last_login_at=now))
    return user


# -- login sessions -------------------------------------------------------------------

# The key of the login token in Flask's signed cookie session.
SESSION_TOKEN = "login_token"


def start_session(db: Session, user: User, lifetime: timedelta, *, now: datetime | None = None) -> str:
    """Open a server-side session for ``user``; return the token for the cookie (only
    its digest is stored). Expired sessions of anyone are pruned on the way."""
    now = now or utcnow()
    db.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    db.add(LoginSession(token_hash=_digest(token), user_id=user.id, created_at=now, expires_at=now + lifetime))
    db.flush()
    return token


def end_session(db: Session, token: str) -> None:
    db.execute(delete(LoginSession).where(LoginSession.token_hash == _digest(token)))


def end_user_sessions(db: Session, user_id: int) -> None:
    db.execute(delete(LoginSession).where(LoginSession.user_id == user_id))


def session_user(database: Database, token: str, lifetime: timedelta, *, now: datetime | None = None) -> User | None:
    """The active user of a live session, renewing the session (sliding expiry).
    To spare a write per request, it is renewed only once a tenth of the lifetime (at
    most five minutes) has passed since the last renewal."""
    now = now or utcnow()
    db = get_session() if has_request_context() else database.sessionmaker()
    found = db.execute(
        select(LoginSession.id, LoginSession.expires_at, User)
        .join(User, User.id == LoginSession.user_id)
        .where(LoginSession.token_hash == _digest(token))
    ).first()
    if found is None:
        return None
    session_id, expires_at, user = found
    if expires_at <= now or not user.active:
        return None
    if now + lifetime - expires_at >= min(lifetime / 10, timedelta(minutes=5)):
        with database.write() as writer:
            writer.execute(
                update(LoginSession)
                .where(LoginSession.id == session_id, LoginSession.expires_at > now)
                .values(expires_at=now + lifetime)
            )
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
    """The user of this request's live login session (None when logged out, expired,
    ended on the server or deactivated)."""
    if "user" not in g:
        token = session.get(SESSION_TOKEN)
        user = None
        if isinstance(token, str):
            user = session_user(get_db(), token, session_lifetime())
            if user is None:
                session.pop(SESSION_TOKEN)  # a dead token: the browser forgets it too
        g.user = user
    return g.user


def session_lifetime(app: Flask | None = None) -> timedelta:
    return timedelta(seconds=(app or current_app).extensions["settings"].session_lifetime_seconds)


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
        if principal is not None:
            key_usage(app or current_app).note(principal.id)  # no write here: see key_usage
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
    app.extensions["key_usage"] = KeyUsage(app.extensions["db"], background=not settings.testing)
