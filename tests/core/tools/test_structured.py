"""Structured output's request checks, the schema the decoder keeps, and a model that cannot
constrain (a scripted one: the real model's side is tests/api/test_structured_outputs.py)."""

from __future__ import annotations

import pytest

from espalier.core.infrastructure.contracts import ChatMessage, ChatRequest, GenerationParams
from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.tools import structured, tool_calls
from tests.core.sources.labeling.echo import EchoPlugin

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_text_is_nothing_and_json_object_is_any_object():
    assert structured.parse_response_format(None) is None
    assert structured.parse_response_format({"type": "text"}) is None
    fmt = structured.parse_response_format({"type": "json_object"})
    assert fmt.kind == "json_object" and fmt.schema == {"type": "object"}


def test_a_json_schema_is_checked_against_the_meta_schema_and_its_limits():
    fmt = structured.parse_response_format(
        {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
    )
    assert (fmt.name, fmt.schema, fmt.strict) == ("thing", SCHEMA, True)
    for raw, fragment in (
        ("json", "an object"),
        ({"type": "json_object", "json_schema": {}}, "takes no json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": SCHEMA}}, "name must be"),
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}}, "JSON Schema object"),
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": {"minimum": "x"}}}, "not a valid JSON Schema"),
        ({"type": "json_schema", "json_schema": {"name": "a", "strict": "yes"}}, "strict must be"),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"enum": ["x" * 40_000]}}},
            "larger than",
        ),
    ):
        with pytest.raises(InvalidInput) as error:
            structured.parse_response_format(raw)
        assert fragment in str(error.value), raw
        assert error.value.details["param"].startswith("response_format")


def test_the_reply_is_a_call_or_the_answer_when_the_model_may_call():
    fmt = structured.parse_response_format({"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}})
    tools = tool_calls.parse_tools(
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    )
    auto = tool_calls.ToolSetup(tools, tool_calls.parse_tool_choice("auto", tools))
    combined = structured.reply_schema(fmt, None, auto)
    assert combined["anyOf"][-1] == SCHEMA and combined["anyOf"][0]["properties"]["name"] == {"const": "f"}
    required = tool_calls.ToolSetup(tools, tool_calls.parse_tool_choice("required", tools))
    call = tool_calls.call_schema(required)
    assert structured.reply_schema(fmt, call, required) == call  # the answer comes after the results
    assert structured.reply_schema(fmt, None, None) == SCHEMA


def test_the_schema_is_stated_in_the_system_message():
    fmt = structured.parse_response_format({"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}})
    added = structured.with_instructions([ChatMessage("user", "hi")], fmt)
    assert added[0].role == "system" and '"required":["a"]' in added[0].content and added[1].content == "hi"
    merged = structured.with_instructions([ChatMessage("system", "Be brief."), ChatMessage("user", "hi")], fmt)
    assert len(merged) == 2 and merged[0].content.startswith("Be brief.\n\n")


@pytest.fixture
def espalier_plugins():
    return [EchoPlugin()]


def test_a_model_that_cannot_constrain_refuses_rather_than_answer_free_text(espalier):
    fmt = structured.parse_response_format({"type": "json_object"})
    request = ChatRequest(
        model="echo", messages=[ChatMessage("user", "hi")], params=GenerationParams(max_tokens=4), response_format=fmt
    )
    with pytest.raises(InvalidInput) as error:
        espalier.platform.chat.complete(request, None)
    assert "cannot keep its decoding to a JSON Schema" in str(error.value)
    assert error.value.code == "unsupported_parameter"


def test_references_hold_when_the_answer_and_the_tools_share_one_schema():
    import jsonschema

    answer = {
        "type": "object",
        "properties": {"steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}}},
        "required": ["steps"],
        "$defs": {"Step": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}},
    }
    fmt = structured.parse_response_format({"type": "json_schema", "json_schema": {"name": "a", "schema": answer}})
    parameters = {
        "type": "object",
        "properties": {"p": {"$ref": "#/$defs/Step"}},
        "$defs": {"Step": {"type": "string"}},
    }
    tools = tool_calls.parse_tools([{"type": "function", "function": {"name": "f", "parameters": parameters}}])
    auto = tool_calls.ToolSetup(tools, tool_calls.parse_tool_choice("auto", tools))
    combined = structured.reply_schema(fmt, None, auto)
    jsonschema.Draft202012Validator.check_schema(combined)
    validator = jsonschema.Draft202012Validator(combined)
    assert validator.is_valid({"steps": [{"n": 1}]})
    assert not validator.is_valid({"steps": [{"n": "x"}]})  # the answer's Step, not the tool's
    assert validator.is_valid({"name": "f", "arguments": {"p": "text"}})
    assert not validator.is_valid({"name": "f", "arguments": {"p": 3}})  # the tool's Step is a string
    required = tool_calls.ToolSetup(tools, tool_calls.parse_tool_choice("required", tools))
    assert jsonschema.Draft202012Validator(tool_calls.call_schema(required)).is_valid(
        {"name": "f", "arguments": {"p": "x"}}
    )
