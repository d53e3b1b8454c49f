"""OpenAI request bodies to Espalier's chat requests, and results back to OpenAI's shapes."""

from __future__ import annotations

import time
from typing import Any

from espalier.api.openai.schemas import ChatCompletionRequest, CompletionRequest, Message
from espalier.core.infrastructure.contracts import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    GenerationParams,
    TokenDelta,
    TokenLogprob,
)
from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.tools import structured, tool_calls


def unsupported(field: str, why: str) -> InvalidInput:
    return InvalidInput(f"'{field}' is not supported: {why}", code="unsupported_parameter", details={"param": field})


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _common_checks(body: ChatCompletionRequest | CompletionRequest) -> None:
    if body.presence_penalty not in (None, 0, 0.0):
        raise unsupported("presence_penalty", "Espalier's samplers have no penalties; leave it at 0")
    if body.frequency_penalty not in (None, 0, 0.0):
        raise unsupported("frequency_penalty", "Espalier's samplers have no penalties; leave it at 0")
    if body.logit_bias:
        raise unsupported("logit_bias", "not implemented")


def _params(
    body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None, default_max: int
) -> GenerationParams:
    return GenerationParams(
        max_tokens=max_tokens if max_tokens is not None else default_max,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        n=1 if body.n is None else body.n,
        stop=_stops(body.stop),
        seed=body.seed,
    )


def message_text(message: Message, number: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise InvalidInput(
                f"messages[{number}]: only text content parts are supported, not '{part.type}'",
                details={"param": f"messages[{number}].content"},
            )
        texts.append(part.text)
    return "".join(texts)


MAX_TOP_LOGPROBS = 20


def _chat_logprobs(body: ChatCompletionRequest) -> int | None:
    """``GenerationParams.logprobs`` from ``logprobs`` and ``top_logprobs`` (0-20, needs logprobs)."""
    if body.top_logprobs is not None:
        if not body.logprobs:
            raise InvalidInput("top_logprobs needs logprobs: true", details={"param": "top_logprobs"})
        if body.top_logprobs > MAX_TOP_LOGPROBS:
            raise InvalidInput(
                f"top_logprobs must be 0-{MAX_TOP_LOGPROBS} (got {body.top_logprobs})",
                details={"param": "top_logprobs"},
            )
    return (body.top_logprobs or 0) if body.logprobs else None


def chat_request(body: ChatCompletionRequest) -> ChatRequest:
    _common_checks(body)
    logprobs = _chat_logprobs(body)
    tools = tool_calls.parse_tools(body.tools or [])
    choice = tool_calls.parse_tool_choice(body.tool_choice, tools)
    response_format = structured.parse_response_format(body.response_format)
    roles = {"system", "developer", "user", "assistant", "tool", "function"}
    messages = []
    for number, message in enumerate(body.messages):
        if message.role not in roles:
            raise InvalidInput(
                f"messages[{number}].role '{message.role}' is not one of {', '.join(sorted(roles))}",
                details={"param": f"messages[{number}].role"},
            )
        role = {"developer": "system", "function": "tool"}.get(message.role, message.role)
        if message.tool_calls is not None and role != "assistant":
            raise InvalidInput(
                f"messages[{number}]: only assistant messages carry tool_calls",
                details={"param": f"messages[{number}].tool_calls"},
            )
        if message.tool_call_id is not None and role != "tool":
            raise InvalidInput(
                f"messages[{number}]: only tool messages carry tool_call_id",
                details={"param": f"messages[{number}].tool_call_id"},
            )
        calls = tool_calls.parse_assistant_calls(message.tool_calls, number) if message.tool_calls is not None else None
        messages.append(ChatMessage(role, message_text(message, number), calls, message.tool_call_id))  # type: ignore[arg-type]
    if not messages:
        raise InvalidInput(
            "messages must contain at least one message", code="empty_messages", details={"param": "messages"}
        )
    tool_calls.check_conversation(messages, frozenset(i for i, m in enumerate(body.messages) if m.role == "function"))
    options = body.espalier
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = _params(body, max_tokens, 0)  # 0: fit the context
    params.logprobs = logprobs
    return ChatRequest(
        model=body.model,
        messages=messages,
        params=params,
        kind="chat",
        conversation_id=options.conversation_id if options else None,
        template=options.template if options else None,
        variables=options.variables if options else None,
        version=options.version if options else None,
        collections=options.collections if options else None,
        tools=tool_calls.ToolSetup(tools, choice) if tools else None,
        retriever=options.retriever if options else None,
        response_format=response_format,
    )


def completion_requests(body: CompletionRequest) -> list[ChatRequest]:
    """One request per prompt. ``max_tokens`` 0 is for scoring a prompt (``echo`` with ``logprobs``)."""
    _common_checks(body)
    if body.best_of not in (None, 1):
        raise unsupported("best_of", "use n and rank the candidates, or a best-of-n model alias")
    if body.suffix:
        raise unsupported("suffix", "not implemented")
    if body.logprobs is not None and body.logprobs > MAX_TOP_LOGPROBS:
        raise InvalidInput(
            f"logprobs must be 0-{MAX_TOP_LOGPROBS} (got {body.logprobs})", details={"param": "logprobs"}
        )
    if body.echo and body.stream:
        raise unsupported("echo", "not with stream: ask without streaming")
    if body.max_tokens == 0 and not (body.echo and body.logprobs is not None):
        raise InvalidInput(
            "max_tokens must be at least 1 (0 is for scoring the prompt: echo with logprobs)",
            code="invalid_max_tokens",
            details={"param": "max_tokens"},
        )
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts or len(prompts) > 16:
        raise InvalidInput("prompt must be a string or a list of 1-16 strings", details={"param": "prompt"})
    options = body.espalier
    if options and options.collections is not None:
        raise unsupported("espalier.collections", "grounded answers are for /v1/chat/completions")
    if options and options.retriever is not None:
        raise unsupported("espalier.retriever", "grounded answers are for /v1/chat/completions")
    requests = [
        ChatRequest(
            model=body.model,
            prompt=prompt,
            params=_params(body, body.max_tokens, 16),  # 16 is OpenAI's default for completions
            kind="completion",
            conversation_id=options.conversation_id if options else None,
            version=options.version if options else None,
        )
        for prompt in prompts
    ]
    for request in requests:
        request.params.logprobs = body.logprobs
    return requests


def _finish(reason: str | None) -> str | None:
    return None if reason is None else ("stop" if reason == "cancelled" else reason)


def _message(generation: Any) -> dict[str, Any]:
    if generation.tool_calls:
        return {
            "role": "assistant",
            "content": generation.text or None,
            "refusal": None,
            "tool_calls": generation.tool_calls,
        }
    return {"role": "assistant", "content": generation.text, "refusal": None}


def espalier_extension(result: ChatResult) -> dict[str, Any]:
    return {
        "conversation_id": result.conversation_id,
        "model_version": result.model_version,
        "completion_ids": result.completion_ids,
        "template": result.template,
        **({"sources": result.sources} if result.sources is not None else {}),
    }


def _entry(scored: TokenLogprob) -> dict[str, Any]:
    return {"token": scored.token, "logprob": scored.logprob, "bytes": list(scored.bytes)}


def chat_logprobs(logprobs: list[TokenLogprob] | None, finish_reason: str | None = None) -> dict[str, Any] | None:
    """OpenAI's chat ``logprobs``: each token with its bytes and its ``top_logprobs``. A reply a
    guardrail replaced has none (the tokens scored are not the text sent)."""
    if logprobs is None or finish_reason == "content_filter":
        return None
    return {
        "content": [{**_entry(scored), "top_logprobs": [_entry(other) for other in scored.top]} for scored in logprobs],
        "refusal": None,
    }


def completion_logprobs(scored: list[TokenLogprob]) -> dict[str, Any]:
    """The legacy ``/v1/completions`` shape: parallel lists of tokens, their log-probabilities
    (None for a prompt's first token, which nothing precedes), the alternatives as token -> logprob
    maps, and each token's character offset in the returned text."""
    offsets, offset = [], 0
    for item in scored:
        offsets.append(offset)
        offset += len(item.token)
    return {
        "tokens": [item.token for item in scored],
        "token_logprobs": [item.logprob for item in scored],
        "top_logprobs": [
            {other.token: other.logprob for other in item.top} if item.logprob is not None else None for item in scored
        ],
        "text_offset": offsets,
    }


def chat_response(result: ChatResult) -> dict[str, Any]:
    return {
        "id": result.request_id,
        "object": "chat.completion",
        "created": result.created,
        "model": result.model,
        "system_fingerprint": f"espalier-{result.model_version}",
        "choices": [
            {
                "index": index,
                "message": _message(generation),
                "finish_reason": _finish(generation.finish_reason),
                "logprobs": chat_logprobs(generation.logprobs, generation.finish_reason),
            }
            for index, generation in enumerate(result.generations)
        ],
        "usage": result.usage,
        "espalier": espalier_extension(result),
    }


def completion_response(
    results: list[ChatResult], echoed: list[tuple[str, list[TokenLogprob] | None]] | None = None
) -> dict[str, Any]:
    """``echoed`` (with ``echo``): each result's prompt and, with ``logprobs``, its tokens scored."""
    first = results[0]
    choices = []
    for number, result in enumerate(results):
        prompt, prompt_scores = echoed[number] if echoed else ("", None)
        for generation in result.generations:
            logprobs = None
            if generation.logprobs is not None and generation.finish_reason != "content_filter":
                logprobs = completion_logprobs(list(prompt_scores or []) + list(generation.logprobs))
            choices.append(
                {
                    "index": len(choices),
                    "text": prompt + generation.text,
                    "logprobs": logprobs,
                    "finish_reason": _finish(generation.finish_reason),
                }
            )
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(r.completion_tokens for r in results)
    return {
        "id": first.request_id,
        "object": "text_completion",
        "created": first.created,
        "model": first.model,
        "system_fingerprint": f"espalier-{first.model_version}",
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "espalier": {
            "conversation_id": first.conversation_id,
            "model_version": first.model_version,
            "completion_ids": [cid for r in results for cid in r.completion_ids],
        },
    }


def scored_response(
    requests: list[ChatRequest], scored: list[tuple[Any, list[TokenLogprob]]], request_id: str, model: str
) -> dict[str, Any]:
    """``/v1/completions`` with ``max_tokens`` 0, ``echo`` and ``logprobs``: each prompt back with its
    tokens scored, nothing generated."""
    choices = [
        {
            "index": index,
            "text": request.prompt,
            "logprobs": completion_logprobs(tokens),
            "finish_reason": "length",
        }
        for index, (request, (_, tokens)) in enumerate(zip(requests, scored, strict=True))
    ]
    prompt_tokens = sum(len(tokens) for _, tokens in scored)
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": f"espalier-{scored[0][0].label}",
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens},
        "espalier": {"model_version": scored[0][0].label},
    }


def chat_chunk(base: dict[str, Any], delta: TokenDelta) -> dict[str, Any]:
    body: dict[str, Any] = {"content": delta.text} if delta.text else {}
    if delta.tool_calls:
        # OpenAI's stream shape: each call by its index; the SDK joins the pieces
        body["tool_calls"] = [{"index": number, **call} for number, call in enumerate(delta.tool_calls)]
    return {
        **base,
        "choices": [
            {
                "index": delta.index,
                "delta": body,
                "finish_reason": _finish(delta.finish_reason),
                "logprobs": chat_logprobs(delta.logprobs, delta.finish_reason),
            }
        ],
    }


def completion_chunk(base: dict[str, Any], delta: TokenDelta) -> dict[str, Any]:
    return {
        **base,
        "choices": [
            {
                "index": delta.index,
                "text": delta.text,
                "logprobs": completion_logprobs(delta.logprobs) if delta.logprobs is not None else None,
                "finish_reason": _finish(delta.finish_reason),
            }
        ],
    }
