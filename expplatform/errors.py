"""What can go wrong in the domain, said in the domain's words.

Services raise these and know nothing of HTTP; ``api/errors.py`` is the one table that
turns each kind into a status, and the web pages and the CLI turn them into a flash or a
line of text. Every error carries a stable machine-readable ``code`` and a human
``message``; input errors also carry ``fields``, naming what was wrong with which input.
"""

from __future__ import annotations

import math
from typing import Any


class DomainError(Exception):
    """Base of every error a service raises on purpose (anything else is a bug)."""

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        fields: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.fields = fields or {}
        self.extra = extra or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        body.update(self.extra)
        return body


def _summary(fields: dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in fields.items())


class InvalidInput(DomainError):
    """A document (a definition, a setting) that breaks the rules; ``fields`` says where."""

    default_code = "validation_failed"

    def __init__(self, fields: dict[str, str], message: str | None = None) -> None:
        super().__init__(message or _summary(fields), fields=fields)


class MalformedRequest(DomainError):
    """A request whose shape or options are wrong before any rule is looked at: a body that
    is not JSON, an unknown parameter, an option out of range."""

    default_code = "validation_failed"

    def __init__(
        self, message: str | None = None, *, fields: dict[str, str] | None = None, code: str | None = None
    ) -> None:
        if message is None:
            message = _summary(fields or {})
        super().__init__(message, code=code, fields=fields)


class NotFound(DomainError):
    default_code = "not_found"

    def __init__(self, message: str, code: str = "not_found") -> None:
        super().__init__(message, code=code)


class Conflict(DomainError):
    """The request is valid but the state of things forbids it (a lifecycle move, a frozen field)."""

    default_code = "conflict"

    def __init__(self, code: str, message: str, *, fields: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, fields=fields)


class TooLarge(DomainError):
    """More input than one request may carry (a batch over the limit)."""

    default_code = "payload_too_large"


class AuthenticationRequired(DomainError):
    """No credentials, or credentials that are not (or no longer) valid."""

    default_code = "authentication_required"


class Forbidden(DomainError):
    """Valid credentials that may not do this."""

    default_code = "forbidden"


class TooManyAttempts(DomainError):
    """Too many recent attempts (e.g. failed logins); ``retry_after`` says in how many
    seconds to try again."""

    default_code = "too_many_attempts"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        minutes = max(1, math.ceil(retry_after / 60))
        super().__init__(
            message or f"Too many failed attempts. Try again in {minutes} minute{'s' if minutes > 1 else ''}.",
            extra={"retry_after": retry_after},
        )
        self.retry_after = retry_after
