"""What a flow refuses, by kind; api/errors.py maps each kind to one HTTP status."""

from typing import Any


class ServiceError(Exception):
    """A refusal whose message is the `detail` a client reads; `fields` go into the answer
    beside it (for agents, what their code acts on: contract.wire.ReportRefusal)."""

    def __init__(self, message: str, *, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


class NotFound(ServiceError):
    """The id names nothing stored (404)."""


class Invalid(ServiceError):
    """The request names something that does not fit (422); the message names the field."""


class Conflict(ServiceError):
    """The request contradicts the current state (409); the message says why."""


class Forbidden(ServiceError):
    """The caller may not act on this (403)."""


class Replayed(ServiceError):
    """An agent request's nonce was already used: refused as a failed authentication (401)."""
