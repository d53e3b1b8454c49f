"""Structured outputs: OpenAI's ``response_format`` on chat completions.

1. :func:`parse_response_format`: ``{"type": "text"}`` (nothing to do), ``{"type": "json_object"}``
   (any JSON object) or ``{"type": "json_schema", "json_schema": {"name", "schema", "strict",
   "description"}}``, checked against the JSON Schema meta-schema and a size limit.
2. :func:`reply_schema`: the schema the decoder keeps the reply to (``GenerationParams.json_schema``);
   with tools the model may call (``tool_choice`` ``auto``), the reply is either one of the calls or
   the structured answer (``anyOf``); with a call required, the call's schema alone, since the
   structured answer comes after the tool results (as OpenAI does).
3. :func:`with_instructions`: a system message telling the model the schema, so that what the
   decoder allows is also what the model means to say (the constraint alone keeps the syntax, not
   the sense). OpenAI does the same server-side.

Whether the decoder can enforce a schema is the model's to say: the transformers models compile it
with llguidance, which refuses keywords it cannot enforce (``not``, ``if``/``then``, look-around
in ``pattern``, unknown ``format`` values) with a message naming them. A model that cannot keep its
decoding to a schema (``constrained_decoding`` false) refuses ``response_format`` rather than
answering free text the client would fail to parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import jsonschema

from espalier.core.infrastructure.contracts import ChatMessage, ResponseFormat, ToolSetup
from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.tools.tool_calls import call_options, hoist_defs

MAX_SCHEMA_CHARS = 32_000
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
JSON_OBJECT: Mapping[str, Any] = {"type": "object"}


def _bad(message: str, param: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_response_format", details={"param": param})


def parse_response_format(raw: Any) -> ResponseFormat | None:
    """The request's ``response_format``: None for plain text, else what the reply must be."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise _bad("response_format must be an object with a 'type'", "response_format")
    kind = raw.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        extra = set(raw) - {"type"}
        if extra:
            raise _bad(f"response_format json_object takes no {', '.join(sorted(extra))}", "response_format")
        return ResponseFormat("json_object", JSON_OBJECT, name="json_object", strict=False)
    if kind != "json_schema":
        raise _bad(
            f"response_format type must be text, json_object or json_schema (got {kind!r})", "response_format.type"
        )
    spec = raw.get("json_schema")
    if not isinstance(spec, Mapping):
        raise _bad("response_format json_schema needs a 'json_schema' object", "response_format.json_schema")
    unknown = set(spec) - {"name", "schema", "strict", "description"}
    if unknown:
        raise _bad(
            f"response_format.json_schema has unknown fields: {', '.join(sorted(unknown))}",
            "response_format.json_schema",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _bad(
            "response_format.json_schema.name must be 1-64 letters, digits, '_' or '-'",
            "response_format.json_schema.name",
        )
    strict = spec.get("strict", False)
    if not isinstance(strict, bool) and strict is not None:
        raise _bad("response_format.json_schema.strict must be true or false", "response_format.json_schema.strict")
    schema = spec.get("schema", JSON_OBJECT)
    param = "response_format.json_schema.schema"
    if not isinstance(schema, Mapping):
        raise _bad(f"{param} must be a JSON Schema object", param)
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise _bad(f"{param} is larger than {MAX_SCHEMA_CHARS} characters", param)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise _bad(f"{param} is not a valid JSON Schema: {exc.message}", param) from None
    return ResponseFormat("json_schema", dict(schema), name=name, strict=bool(strict))


def reply_schema(fmt: ResponseFormat, call: Mapping[str, Any] | None, setup: ToolSetup | None) -> Mapping[str, Any]:
    """What the decoder keeps the reply to. ``call`` is the schema of a required call (None when
    the model may choose); with tools it may call, a call of any of them or the structured answer.
    Each part's ``$defs`` move to the root under a prefix of its own, so their references hold."""
    if call is not None:
        return call
    if setup is None or not setup.active:
        return fmt.schema
    defs: dict[str, Any] = {}
    calls = call_options(setup.tools, defs)
    combined: dict[str, Any] = {"anyOf": [*calls, hoist_defs(fmt.schema, "answer_", defs)]}
    if defs:
        combined["$defs"] = defs
    return combined


def with_instructions(messages: Sequence[ChatMessage], fmt: ResponseFormat) -> list[ChatMessage]:
    """``messages`` with the format stated in the system message (added first when there is none)."""
    if fmt.kind == "json_object":
        text = "Answer with one JSON object and nothing else."
    else:
        text = (
            "Answer with one JSON object and nothing else, matching this JSON Schema "
            f"({fmt.name}):\n{json.dumps(fmt.schema, separators=(',', ':'))}"
        )
    out = list(messages)
    if out and out[0].role == "system":
        out[0] = replace(out[0], content=f"{out[0].content}\n\n{text}" if out[0].content else text)
    else:
        out.insert(0, ChatMessage("system", text))
    return out
