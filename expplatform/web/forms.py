"""WTForms forms (Flask-WTF adds CSRF tokens to every one)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, Length, Regexp

from ..auth import ROLES


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired()])


class ConfirmForm(FlaskForm):
    """An empty form: just the CSRF token behind a confirmation button."""


class NewUserForm(FlaskForm):
    email = EmailField(
        "Email",
        validators=[
            DataRequired(),
            Length(max=254),
            Regexp(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", message="Enter an email address."),
        ],
    )
    password = PasswordField("Initial password", validators=[DataRequired(), Length(min=8, max=200)])
    role = SelectField("Role", choices=[SelectChoice(role, role) for role in ROLES], default="viewer")


class NewKeyForm(FlaskForm):
    name = StringField("What uses it", validators=[DataRequired(), Length(max=100)])
    scope = SelectField(
        "Scope",
        choices=[
            SelectChoice("client", "client: assignment and events (ships inside apps)"),
            SelectChoice("admin", "admin: manage experiments, read reports"),
        ],
        default="client",
    )


class PasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired()])
    new = PasswordField("New password", validators=[DataRequired(), Length(min=8, max=1024)])
    confirm = PasswordField("New password again", validators=[DataRequired(), EqualTo("new", "Passwords differ.")])
