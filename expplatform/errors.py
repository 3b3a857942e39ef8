"""Errors that service code raises and the API turns into JSON.

Every API error has a stable machine-readable ``error`` code, a human ``message``
and, for validation errors, ``fields`` naming what was wrong with which input.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        fields: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.extra = extra or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        body.update(self.extra)
        return body


class ValidationError(ApiError):
    """Input that cannot be accepted; ``fields`` maps each bad field to why."""

    def __init__(self, fields: dict[str, str], message: str | None = None, *, status: int = 422) -> None:
        summary = message or "; ".join(f"{name}: {why}" for name, why in fields.items())
        super().__init__(status, "validation_failed", summary, fields=fields)


class NotFound(ApiError):
    def __init__(self, message: str, code: str = "not_found") -> None:
        super().__init__(404, code, message)


class Conflict(ApiError):
    def __init__(self, code: str, message: str, *, fields: dict[str, str] | None = None) -> None:
        super().__init__(409, code, message, fields=fields)
