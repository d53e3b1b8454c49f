"""The OpenAPI document, made true to what the server answers (the schema checks of clients and of
the suite rely on it).

litestar documents every operation as bearer-authenticated with one 400 shape of its own; here,
once, when the document is first built:

* public operations (``opt=PUBLIC``) declare no security;
* every operation lists the errors it can answer, in the shape it answers them: RFC 9457 problems
  (``application/problem+json``) under ``/api`` and the console, OpenAI's ``{"error": {...}}``
  under ``/v1``: 400, and 401/403 where a key is needed, 404, 409, 413 and 415 where a body is
  read, 429 where limits apply, 503.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.openapi.spec import Components, OpenAPI, Reference, Schema
from litestar.openapi.spec import OpenAPIMediaType as MediaType
from litestar.openapi.spec import OpenAPIResponse as Response
from litestar.openapi.spec.enums import OpenAPIType

from espalier.api.errors import PROBLEM

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["type", "title", "status", "detail", "code"],
    properties={
        "type": Schema(type=OpenAPIType.STRING),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER),
        "detail": Schema(type=OpenAPIType.STRING),
        "code": Schema(type=OpenAPIType.STRING, description="stable and machine-readable"),
        "request_id": Schema(one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.NULL)]),
        "errors": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT)),
        "details": Schema(type=OpenAPIType.OBJECT),
    },
    description="An RFC 9457 problem",
)
OPENAI_ERROR_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["error"],
    properties={
        "error": Schema(
            type=OpenAPIType.OBJECT,
            required=["message", "type"],
            properties={
                "message": Schema(type=OpenAPIType.STRING),
                "type": Schema(type=OpenAPIType.STRING),
                "param": Schema(one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.NULL)]),
                "code": Schema(one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.NULL)]),
            },
        )
    },
    description="An error in OpenAI's shape",
)
DESCRIPTIONS = {
    "400": "Invalid request: the body, a parameter or a value",
    "401": "Missing, invalid or revoked API key",
    "403": "The key's role may not do this",
    "404": "Not found (or not this key's)",
    "409": "Conflicts with the current state",
    "413": "Body too large",
    "415": "Body not sent as a media type this operation reads",
    "429": "Rate limited (see Retry-After)",
    "503": "Temporarily unavailable (see Retry-After when given)",
}
BODY_METHODS = {"post", "put", "patch"}


def _error_responses(path: str, method: str, public: bool, limited: bool) -> dict[str, Response]:
    openai = path.startswith("/v1")
    name = "OpenAIError" if openai else "Problem"
    media = "application/json" if openai else PROBLEM
    codes = ["400", "404", "409", "503"]
    if not public:
        codes += ["401", "403"]
    if method in BODY_METHODS:
        codes += ["413", "415"]
    if limited:
        codes.append("429")
    return {
        code: Response(
            description=DESCRIPTIONS[code],
            content={media: MediaType(schema=Reference(ref=f"#/components/schemas/{name}"))},
        )
        for code in sorted(codes)
    }


def make_truthful(app: Litestar, document: OpenAPI, unlimited: frozenset[str], is_public: Any) -> OpenAPI:
    components = document.components if isinstance(document.components, Components) else Components()
    schemas = dict(components.schemas or {})
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas["OpenAIError"] = OPENAI_ERROR_SCHEMA
    components.schemas = schemas
    document.components = components
    for route in app.routes:
        item = (document.paths or {}).get(route.path_format)
        if item is None:
            continue
        for handler in getattr(route, "route_handlers", ()):
            public = is_public(handler, route.path)
            for method in sorted(getattr(handler, "http_methods", ())):
                operation = getattr(item, method.lower(), None)
                if operation is None:
                    continue
                if public:
                    operation.security = []
                responses = dict(operation.responses or {})
                responses.update(
                    _error_responses(route.path_format, method.lower(), public, route.path not in unlimited)
                )
                operation.responses = responses
    return document


def install(app: Litestar, unlimited: frozenset[str], is_public: Any) -> None:
    """Build the document now and correct it in place: litestar serves this same object."""
    from litestar._openapi.plugin import OpenAPIPlugin

    make_truthful(app, app.plugins.get(OpenAPIPlugin).provide_openapi(), unlimited, is_public)


__all__ = ["install", "make_truthful"]
