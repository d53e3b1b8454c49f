"""Request bodies of the OpenAI-compatible API. Unknown fields are refused (a typo must not be
silently ignored); OpenAI fields Espalier cannot honour are refused with a message saying so."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from espalier.api.schema_types import Count, Int64

Text = Annotated[str, msgspec.Meta(max_length=2_000_000)]


class ContentPart(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    text: str | None = None


class Message(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    # What the official SDK sends back when a client appends the assistant message it received
    # (``messages.append(completion.choices[0].message)``): accepted and ignored, as they do not
    # change what the model reads.
    refusal: str | None = None
    audio: dict[str, Any] | None = None
    annotations: list[Any] | None = None
    function_call: dict[str, Any] | None = None


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class EspalierOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The ``espalier`` extension object (``extra_body={"espalier": {...}}`` in the openai SDK)."""

    conversation_id: str | None = None
    template: str | None = None
    variables: dict[str, Any] | None = None
    version: str | None = None
    collections: list[str] | None = None
    retriever: str | None = None  # grounded answers: which retriever (default hybrid; e.g. "sql")


class GenerationOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # What chat completions and completions share: sampling, streaming, the caller's tag and the
    # espalier extension. Keyword-only, so a request's own required fields may follow them.
    temperature: float | None = None
    top_p: float | None = None
    n: Count | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    max_tokens: Count | None = None
    seed: Int64 | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    espalier: EspalierOptions | None = None


class ChatCompletionRequest(GenerationOptions):
    model: str
    messages: list[Message]
    max_completion_tokens: Count | None = None
    logprobs: bool | None = None
    top_logprobs: Count | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None


class CompletionRequest(GenerationOptions):
    model: str
    prompt: str | list[str]
    logprobs: Count | None = None
    echo: bool | None = None
    best_of: Count | None = None
    suffix: str | None = None


class EmbeddingRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    input: str | list[Any]  # strings; token arrays are refused with a clear message
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Count | None = None
    user: str | None = None
