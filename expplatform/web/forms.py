"""WTForms forms (Flask-WTF adds CSRF tokens to every one)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Email, Length


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired()])


class ConfirmForm(FlaskForm):
    """An empty form: just the CSRF token behind a confirmation button."""
