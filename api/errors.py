"""One mapping from errors to JSON problem responses (RFC 9457). Nothing internal leaks: an
unexpected error answers 500 with the request id, and the traceback goes to the log only."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException

from espalier.core.infrastructure.errors import EspalierError

log = logging.getLogger("espalier.api")

PROBLEM = "application/problem+json"

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable entity",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem(status: int, detail: str, *, code: str, request: Request | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request is not None:
        body["request_id"] = request.scope.get("request_id")
    body.update({key: value for key, value in extra.items() if value is not None})
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(body, status_code=status, media_type=PROBLEM, headers=headers)


def espalier_error_handler(request: Request, exc: EspalierError) -> Response:
    response = problem(exc.status, exc.message, code=exc.code, request=request, details=exc.details or None)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(exc.retry_after)))
    return response


def validation_error_handler(request: Request, exc: ValidationException) -> Response:
    errors = exc.extra if isinstance(exc.extra, list) else None
    detail = exc.detail
    if errors:
        parts = [f"{e.get('key') or 'body'}: {e.get('message')}" for e in errors if isinstance(e, dict)]
        if parts:
            detail = "invalid request: " + "; ".join(parts)
    return problem(400, detail, code="invalid_request", request=request, errors=errors)


def http_error_handler(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    code = {
        400: "invalid_request",
        401: "unauthenticated",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
        429: "rate_limited",
    }.get(status, "http_error")
    detail = exc.detail
    if status == 400 and _caused_by_bad_json(exc):
        detail = f"malformed JSON body: {detail}"
    if status == 413:
        detail = "request body too large: " + (detail or "")
    response = problem(status, detail, code=code, request=request)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def _caused_by_bad_json(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, (msgspec.DecodeError, SerializationException)) and not isinstance(
            seen, msgspec.ValidationError
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def body_too_deep(exc: BaseException) -> bool:
    """A JSON body nested past what the decoder recurses into (msgspec stops at the interpreter's
    recursion limit, about a thousand levels): the client's error, answered 400."""
    return isinstance(exc, RecursionError) and "deserializing" in str(exc)


TOO_DEEP = "malformed JSON body: nested too deeply (keep bodies under a few hundred levels of nesting)"


def internal_error_handler(request: Request, exc: Exception) -> Response:
    if body_too_deep(exc):
        return problem(400, TOO_DEEP, code="json_too_deep", request=request)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(
        500,
        "internal error; the server log has the details under this request id",
        code="internal_error",
        request=request,
    )


EXCEPTION_HANDLERS = {
    EspalierError: espalier_error_handler,
    ValidationException: validation_error_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}

__all__ = ["EXCEPTION_HANDLERS", "MediaType", "problem"]
