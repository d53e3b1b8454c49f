"""``POST /v1/moderations``: OpenAI's moderation API, served by Espalier's guardrail scorers.

``model`` picks a scorer (``profanity``, ``detoxify``, ``injection``...); OpenAI's own model names
(or none) mean "the scorers the input policies use". A category is flagged at the threshold an
input policy gives it (0.5 otherwise). Checking text here is not a policy decision: nothing is
stored and nothing is blocked.
"""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import msgspec
from litestar import Request, post
from litestar.params import JSONBody

from espalier.api.guards import access
from espalier.core.infrastructure.errors import InvalidInput

MAX_INPUTS = 256
MAX_CHARS = 100_000
OPENAI_MODELS = {"omni-moderation-latest", "text-moderation-latest", "text-moderation-stable"}


class ModerationRequest(msgspec.Struct, forbid_unknown_fields=True):
    input: str | list[Any]  # strings; OpenAI's image parts are refused with a message
    model: str | None = None


@post(
    "/moderations",
    opt=access("user"),
    summary="Moderation (OpenAI-compatible) by the configured scorers",
    status_code=200,
)
async def moderations(request: Request, data: JSONBody[ModerationRequest]) -> dict[str, Any]:
    service = request.app.state.platform.guardrail_service
    texts = [data.input] if isinstance(data.input, str) else data.input
    if not texts:
        raise InvalidInput("input must be a non-empty string or list of strings", details={"param": "input"})
    if not all(isinstance(text, str) for text in texts):
        raise InvalidInput("only text input is supported (a string or a list of strings)", details={"param": "input"})
    if len(texts) > MAX_INPUTS:
        raise InvalidInput(f"at most {MAX_INPUTS} inputs per request", details={"param": "input"})
    if any(len(text) > MAX_CHARS for text in texts):
        raise InvalidInput(f"each input may have at most {MAX_CHARS} characters", details={"param": "input"})
    names = (
        None if data.model in (None, "", *OPENAI_MODELS) else [n.strip() for n in data.model.split(",") if n.strip()]
    )
    results = await anyio.to_thread.run_sync(lambda: service.moderate(texts, names))
    return {
        "id": f"modr-{secrets.token_hex(12)}",
        "model": data.model or ",".join(sorted({n for r in results for n in r["scorers"]})),
        "results": [
            {
                "flagged": r["flagged"],
                "categories": r["categories"],
                "category_scores": r["category_scores"],
                "espalier": {"scorers": r["scorers"]},
            }
            for r in results
        ],
    }
