"""Accounts and API keys, for admins: the web twin of ``expplatform users`` and
``expplatform keys``. A new key is shown once, on the page that creates it."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from sqlalchemy import select

from .. import auth
from ..auth import current_principal, login_required
from ..db import get_db, get_session
from ..models import ApiKey, User
from . import bp
from .forms import ConfirmForm, NewKeyForm, NewUserForm


def _users_page(form: NewUserForm, status: int = 200):
    users = get_session().scalars(select(User).order_by(User.email)).all()
    return render_template("admin/users.html", users=users, form=form, confirm=ConfirmForm()), status


@bp.get("/admin/users")
@login_required("admin")
def users():
    return _users_page(NewUserForm())


@bp.post("/admin/users")
@login_required("admin")
def create_user():
    form = NewUserForm()
    if not form.validate():
        return _users_page(form, 422)
    email = (form.email.data or "").strip().lower()
    if get_session().scalar(select(User.id).where(User.email == email)) is not None:
        form.email.errors.append("An account with this email exists already.")
        return _users_page(form, 409)
    with get_db().write() as session:
        auth.create_user(session, email, form.password.data or "", form.role.data)
    flash(f"Created {form.role.data} {email}.", "info")
    return redirect(url_for("web.users"))


@bp.post("/admin/users/<int:user_id>/active")
@login_required("admin")
def toggle_user(user_id: int):
    principal = current_principal()
    with get_db().write() as session:
        user = session.get(User, user_id)
        if user is None:
            flash("No such account.", "error")
        elif principal is not None and user.id == principal.id:
            flash("You cannot deactivate your own account.", "error")
        else:
            user.active = not user.active
            flash(f"{user.email} is now {'active' if user.active else 'deactivated'}.", "info")
    return redirect(url_for("web.users"))


def _keys_page(form: NewKeyForm, *, new_key: str | None = None, status: int = 200):
    keys = get_session().scalars(select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())).all()
    return render_template("admin/keys.html", keys=keys, form=form, new_key=new_key, confirm=ConfirmForm()), status


@bp.get("/admin/keys")
@login_required("admin")
def keys():
    return _keys_page(NewKeyForm())


@bp.post("/admin/keys")
@login_required("admin")
def create_key():
    form = NewKeyForm()
    if not form.validate():
        return _keys_page(form, status=422)
    principal = current_principal()
    with get_db().write() as session:
        _record, plaintext = auth.create_api_key(
            session,
            form.scope.data,
            (form.name.data or "").strip(),
            created_by=principal.actor if principal else "web",
        )
    # Rendered, not redirected: the key exists only in this response.
    return _keys_page(NewKeyForm(formdata=None), new_key=plaintext, status=201)


@bp.post("/admin/keys/<prefix>/revoke")
@login_required("admin")
def revoke_key(prefix: str):
    with get_db().write() as session:
        record = auth.revoke_api_key(session, prefix)
    flash(f"Revoked {prefix}…." if record else "No such key.", "info" if record else "error")
    return redirect(url_for("web.keys"))
