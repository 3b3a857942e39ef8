"""Accounts and API keys, for admins: the web twin of ``expplatform users`` and
``expplatform keys``. A new key, and a password an admin resets, are shown once, on
the page that makes them. Deactivating an account and revoking a key ask first, as
stopping an experiment does; every action lands back on its row (``#user-<id>``,
``#key-<prefix>``) and is logged with the admin who did it."""

from __future__ import annotations

import logging

from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from .. import auth
from ..auth import ROLES, current_principal, login_required
from ..db import get_db, get_session
from ..errors import DomainError
from ..models import ApiKey, User
from . import bp
from .forms import ConfirmForm, NewKeyForm, NewUserForm

log = logging.getLogger(__name__)


def _admin() -> str:
    principal = current_principal()
    assert principal is not None  # login_required ran first
    return principal.label


def _user_or_404(user_id: int) -> User:
    user = get_session().get(User, user_id)
    if user is None:
        abort(404)
    return user


def _back_to(user_id: int):
    return redirect(url_for("web.users") + f"#user-{user_id}")


def _users_page(form: NewUserForm, status: int = 200, *, new_password: tuple[User, str] | None = None):
    session = get_session()
    session.rollback()  # end the read snapshot (SQLite WAL keeps it): show what was just written
    users = session.scalars(select(User).order_by(User.email)).all()
    page = render_template(
        "admin/users.html",
        users=users,
        form=form,
        confirm=ConfirmForm(),
        roles=ROLES,
        new_password=new_password,
    )
    return page, status


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
        user = auth.create_user(session, email, form.password.data or "", form.role.data)
        user_id = user.id
    log.info("admin %s created the %s account %s", _admin(), form.role.data, email)
    flash(f"Created {form.role.data} {email}.", "info")
    return _back_to(user_id)


@bp.post("/admin/users/<int:user_id>/role")
@login_required("admin")
def change_role(user_id: int):
    role = request.form.get("role", "")
    if role not in ROLES:
        flash(f"Choose one of the roles: {', '.join(ROLES)}.", "error")
        return _back_to(user_id)
    if user_id == _user_id_of_admin():
        flash("You cannot change your own role; another admin can.", "error")
        return _back_to(user_id)
    try:
        with get_db().write() as session:
            user = session.get(User, user_id)
            if user is None:
                abort(404)
            changed = auth.set_role(session, user, role)
            email = user.email
    except DomainError as exc:
        flash(exc.message[:1].upper() + exc.message[1:] + ".", "error")
        return _back_to(user_id)
    if changed:
        log.info("admin %s made %s a %s", _admin(), email, role)
        flash(f"{email} is now {auth.a_role(role)}.", "info")
    return _back_to(user_id)


def _user_id_of_admin() -> int | None:
    principal = current_principal()
    return principal.id if principal is not None and principal.kind == "user" else None


@bp.get("/admin/users/<int:user_id>/deactivate")
@login_required("admin")
def confirm_deactivate(user_id: int):
    user = _user_or_404(user_id)
    if not user.active:
        return _back_to(user_id)
    return render_template(
        "admin/confirm.html",
        title=f"Deactivate {user.email}?",
        help="They are logged out at once and can no longer log in; what they did stays on record. "
        "You can reactivate the account later.",
        action=url_for("web.deactivate_user", user_id=user_id),
        button="Yes, deactivate it",
        cancel=url_for("web.users") + f"#user-{user_id}",
        form=ConfirmForm(),
    )


@bp.post("/admin/users/<int:user_id>/deactivate")
@login_required("admin")
def deactivate_user(user_id: int):
    return _set_active(user_id, False)


@bp.post("/admin/users/<int:user_id>/reactivate")
@login_required("admin")
def reactivate_user(user_id: int):
    return _set_active(user_id, True)


def _set_active(user_id: int, active: bool):
    if user_id == _user_id_of_admin():
        flash("You cannot deactivate your own account.", "error")
        return _back_to(user_id)
    try:
        with get_db().write() as session:
            user = session.get(User, user_id)
            if user is None:
                abort(404)
            changed = auth.set_active(session, user, active)
            email = user.email
    except DomainError as exc:
        flash(exc.message[:1].upper() + exc.message[1:] + ".", "error")
        return _back_to(user_id)
    if changed:
        log.info("admin %s %s %s", _admin(), "reactivated" if active else "deactivated", email)
    flash(f"{email} is {'active' if active else 'deactivated'}.", "info")
    return _back_to(user_id)


@bp.get("/admin/users/<int:user_id>/reset-password")
@login_required("admin")
def confirm_reset_password(user_id: int):
    user = _user_or_404(user_id)
    return render_template(
        "admin/confirm.html",
        title=f"Reset the password of {user.email}?",
        help="A new password is made and shown to you once, to hand over; their old password stops working "
        "and every session they have is logged out. They can change it afterwards under their e-mail address.",
        action=url_for("web.reset_password", user_id=user_id),
        button="Yes, reset it",
        cancel=url_for("web.users") + f"#user-{user_id}",
        form=ConfirmForm(),
    )


@bp.post("/admin/users/<int:user_id>/reset-password")
@login_required("admin")
def reset_password(user_id: int):
    with get_db().write() as session:
        user = session.get(User, user_id)
        if user is None:
            abort(404)
        password = auth.reset_password(session, user)
        email = user.email
    log.info("admin %s reset the password of %s", _admin(), email)
    reset = get_session().get(User, user_id)
    assert reset is not None
    # Rendered, not redirected: the password exists only in this response.
    return _users_page(NewUserForm(formdata=None), new_password=(reset, password))


def _keys_page(form: NewKeyForm, *, new_key: str | None = None, status: int = 200):
    session = get_session()
    session.rollback()  # end the read snapshot (SQLite WAL keeps it): list the key just made
    keys = session.scalars(select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())).all()
    new_prefix = new_key[:12] if new_key else None
    page = render_template(
        "admin/keys.html", keys=keys, form=form, new_key=new_key, new_prefix=new_prefix, confirm=ConfirmForm()
    )
    return page, status


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
        record, plaintext = auth.create_api_key(
            session,
            form.scope.data,
            (form.name.data or "").strip(),
            created_by=principal.actor if principal else "web",
        )
        prefix = record.prefix
    log.info("admin %s created the %s key %s", _admin(), form.scope.data, prefix)
    # Rendered, not redirected: the key exists only in this response.
    return _keys_page(NewKeyForm(formdata=None), new_key=plaintext, status=201)


def _key_or_404(prefix: str) -> ApiKey:
    record = get_session().scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if record is None:
        abort(404)
    return record


@bp.get("/admin/keys/<prefix>/revoke")
@login_required("admin")
def confirm_revoke_key(prefix: str):
    record = _key_or_404(prefix)
    if record.revoked_at is not None:
        return redirect(url_for("web.keys") + f"#key-{prefix}")
    return render_template(
        "admin/confirm.html",
        title=f"Revoke the key “{record.name}” ({prefix}…)?",
        help=f"Every request made with it is refused from now on (a {record.scope} key"
        + (": the client apps that ship it stop getting variants" if record.scope == "client" else "")
        + "). A revoked key cannot be restored; create a new one instead.",
        action=url_for("web.revoke_key", prefix=prefix),
        button="Yes, revoke it",
        cancel=url_for("web.keys") + f"#key-{prefix}",
        form=ConfirmForm(),
    )


@bp.post("/admin/keys/<prefix>/revoke")
@login_required("admin")
def revoke_key(prefix: str):
    with get_db().write() as session:
        record = auth.revoke_api_key(session, prefix)
    if record is None:
        abort(404)
    log.info("admin %s revoked the key %s", _admin(), prefix)
    flash(f"Revoked {prefix}….", "info")
    return redirect(url_for("web.keys") + f"#key-{prefix}")
