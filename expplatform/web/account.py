"""Logging in and out."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import flash, redirect, render_template, request, session, url_for

from ..auth import authenticate_user, current_user, public
from ..db import get_session
from . import bp
from .forms import ConfirmForm, LoginForm


def _safe_next(target: str | None) -> str:
    """Only same-site paths: never redirect a fresh login to another host."""
    parts = urlsplit(target or "")
    if not target or parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("web.index")
    return target


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
    if form.validate_on_submit():
        user = authenticate_user(get_session(), form.email.data or "", form.password.data or "")
        if user is not None:
            session.clear()
            session["user_id"] = user.id
            session.permanent = True
            return redirect(_safe_next(next_url))
        form.password.errors.append("Email or password is wrong.")
    return render_template("login.html", form=form, next=next_url), 400


@bp.post("/logout")
@public
def logout():
    form = ConfirmForm()
    if form.validate_on_submit():
        session.clear()
        flash("You are logged out.", "info")
    return redirect(url_for("web.login"))
