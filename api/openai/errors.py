"""Errors in OpenAI's shape under ``/v1``, so the official SDKs raise their usual exceptions."""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from espalier.api.errors import TOO_DEEP, _caused_by_bad_json, body_too_deep
from espalier.core.infrastructure.errors import EspalierError

log = logging.getLogger("espalier.api.openai")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


def openai_error(
    status: int, message: str, *, code: str | None, param: str | None = None, request: Request | None = None
) -> Response:
    body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if request is not None and request.scope.get("request_id"):
        headers["x-request-id"] = request.scope["request_id"]
    return Response(body, status_code=status, headers=headers)


def _espalier(request: Request, exc: EspalierError) -> Response:
    response = openai_error(exc.status, exc.message, code=exc.code, param=exc.details.get("param"), request=request)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(exc.retry_after)))
    return response


def _validation(request: Request, exc: ValidationException) -> Response:
    errors = [e for e in (exc.extra if isinstance(exc.extra, list) else []) if isinstance(e, dict)]
    parts = [f"{e['key']}: {e.get('message')}" if e.get("key") else f"{e.get('message')}" for e in errors]
    message = "invalid request: " + "; ".join(parts) if parts else str(exc.detail)
    param = next((str(e["key"]) for e in errors if e.get("key")), None)
    return openai_error(400, message, code="invalid_request", param=param, request=request)


def _http(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    message = exc.detail
    if status == 400 and _caused_by_bad_json(exc):
        message = f"malformed JSON body: {message}"
    code = {
        401: "invalid_api_key",
        404: "not_found",
        413: "request_too_large",
        415: "unsupported_media_type",
        429: "rate_limit_exceeded",
    }.get(status)
    response = openai_error(status, message, code=code, request=request)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def _internal(request: Request, exc: Exception) -> Response:
    if body_too_deep(exc):
        return openai_error(400, TOO_DEEP, code="json_too_deep", request=request)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return openai_error(
        500,
        "internal error; the server log has the details under this request id",
        code="internal_error",
        request=request,
    )


OPENAI_EXCEPTION_HANDLERS = {
    EspalierError: _espalier,
    ValidationException: _validation,
    HTTPException: _http,
    Exception: _internal,
}
