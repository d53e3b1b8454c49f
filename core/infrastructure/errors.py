"""Domain errors. ``api/errors.py`` maps each to one HTTP status; the CLI prints the message.

Messages are for the person who can fix the problem: say what was wrong and what to do.
"""

from __future__ import annotations

from typing import Any


class EspalierError(Exception):
    """Base of every error Espalier raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details or {}
        self.retry_after = retry_after  # seconds; the API sends it as Retry-After (429, 503)


class InvalidInput(EspalierError):
    status = 400
    code = "invalid_input"


class Unauthenticated(EspalierError):
    status = 401
    code = "unauthenticated"


class Forbidden(EspalierError):
    status = 403
    code = "forbidden"


class NotFound(EspalierError):
    status = 404
    code = "not_found"


class Conflict(EspalierError):
    status = 409
    code = "conflict"


class PayloadTooLarge(EspalierError):
    status = 413
    code = "payload_too_large"


class Unavailable(EspalierError):
    status = 503
    code = "unavailable"


class RateLimited(EspalierError):
    """429: the key (or address) spent its requests for this window; ``retry_after`` says when."""

    status = 429
    code = "rate_limited"


class PluginError(EspalierError):
    """A plugin is broken or two plugins disagree; raised at start-up."""

    code = "plugin_error"
