"""Logging in and out, and changing one's password.

A login opens a server-side session (``auth.start_session``): the signed cookie only
carries its token, so logging out or changing the password ends it for every copy
of the cookie. Logins are throttled per account and per client address
(``auth.log_in``): past the limit the page says when to try again, with a 429 and
``Retry-After``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import flash, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from .. import auth
from ..auth import current_user, login_required, public
from ..db import get_db
from ..errors import TooManyAttempts
from ..models import User
from . import bp
from .forms import ConfirmForm, LoginForm, PasswordForm

DEACTIVATED = "This account is deactivated. Ask an admin of this service to reactivate it."


def _safe_next(target: str | None) -> str:
    """Only same-site paths: never redirect a fresh login to another host."""
    parts = urlsplit(target or "")
    if not target or parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("web.index")
    return target


def _open_session(user: User) -> None:
    """Start a server-side session for ``user`` in a fresh cookie session."""
    with get_db().write() as db:
        token = auth.start_session(db, user, auth.session_lifetime())
    session.clear()
    session[auth.SESSION_TOKEN] = token
    session.permanent = True


@bp.get("/")
@public
def index():
    if current_user() is None:
        return redirect(url_for("web.login"))
    return redirect(url_for("web.experiments"))


@bp.get("/login")
@public
def login():
    return render_template("login.html", form=LoginForm(), next=request.args.get("next", ""))


@bp.post("/login")
@public
def login_post():
    form = LoginForm()
    next_url = request.form.get("next", "")
    if not form.validate_on_submit():
        return render_template("login.html", form=form, next=next_url), 400
    try:
        user = auth.log_in(get_db(), form.email.data or "", form.password.data or "", request.remote_addr or "")
    except TooManyAttempts as exc:
        form.password.errors.append(exc.message)
        page = render_template("login.html", form=form, next=next_url)
        return Response(page, 429, {"Retry-After": str(exc.retry_after)}, content_type="text/html; charset=utf-8")
    except auth.AccountDeactivated:  # the password was right: telling them so leaks nothing
        form.password.errors.append(DEACTIVATED)
        return render_template("login.html", form=form, next=next_url), 403
    if user is None:
        form.password.errors.append("Email or password is wrong.")
        return render_template("login.html", form=form, next=next_url), 400
    _open_session(user)
    return redirect(_safe_next(next_url))


@bp.post("/logout")
@public
def logout():
    form = ConfirmForm()
    if form.validate_on_submit():
        token = session.get(auth.SESSION_TOKEN)
        if isinstance(token, str):
            with get_db().write() as db:
                auth.end_session(db, token)
        session.clear()
        flash("You are logged out.", "info")
    return redirect(url_for("web.login"))


@bp.get("/account/password")
@login_required("viewer")
def password():
    return render_template("password.html", form=PasswordForm())


@bp.post("/account/password")
@login_required("viewer")
def password_post():
    form = PasswordForm()
    user = current_user()
    assert user is not None
    if not form.validate_on_submit():
        return render_template("password.html", form=form), 422
    try:  # throttled like a login: a borrowed session must not become a password oracle
        checked = auth.log_in(get_db(), user.email, form.current.data or "", request.remote_addr or "")
    except TooManyAttempts as exc:
        form.current.errors.append(exc.message)
        page = render_template("password.html", form=form)
        return Response(page, 429, {"Retry-After": str(exc.retry_after)}, content_type="text/html; charset=utf-8")
    if checked is None:
        form.current.errors.append("This is not your current password.")
        return render_template("password.html", form=form), 422
    with get_db().write() as db:
        changed = db.get(User, user.id)
        assert changed is not None
        auth.change_password(db, changed, form.new.data or "")  # ends every session, this one too
    _open_session(user)  # ... and this browser stays logged in with a new one
    flash("Your password is changed; every other session is logged out.", "info")
    return redirect(url_for("web.index"))
