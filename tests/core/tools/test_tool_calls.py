"""OpenAI-style function calling in /v1/chat/completions (``tools``, ``tool_choice``, ``tool_calls``),
through the official ``openai`` SDK against a real server with the real default model, plus the
reading of replies into calls (core/tools/tool_calls.py), which never yields a malformed call."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from espalier.core.infrastructure.contracts import FunctionTool, ToolChoice, ToolSetup
from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.tools.tool_calls import parse_tool_choice, parse_tools, read_tool_calls

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CONVERT = {
    "type": "function",
    "function": {
        "name": "convert_currency",
        "description": "Convert an amount of money.",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number", "minimum": 0},
                "to": {"type": "string", "pattern": "^[A-Z]{3}$"},
            },
            "required": ["amount", "to"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris today, in celsius?"}]


# Reading replies (no model) ---------------------------------------------------------------------
def setup(mode="auto", name=None):
    return ToolSetup(parse_tools([WEATHER, CONVERT]), ToolChoice(mode, name))


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>',
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
        '```json\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}"}\n```',
    ],
)
def test_valid_replies_become_calls(text):
    content, calls = read_tool_calls(text, setup())
    assert content is None and len(calls) == 1
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}


def test_text_around_calls_is_content_and_several_calls_are_kept():
    text = (
        "Let me check.\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}</tool_call>\n'
        '<tool_call>{"name": "convert_currency", "arguments": {"amount": 3, "to": "EUR"}}</tool_call>'
    )
    content, calls = read_tool_calls(text, setup())
    assert content == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "convert_currency"]
    assert len({c["id"] for c in calls}) == 2


@pytest.mark.parametrize(
    "text",
    [
        "It is sunny in Paris.",
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',  # missing unit
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}}</tool_call>',  # enum
        '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>',  # unknown function
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Par',  # cut short
        '{"name": "convert_currency", "arguments": {"amount": -5, "to": "EUR"}}',  # minimum
        # one bad: none
        '<tool_call>{"name": "get_weather", "arguments": {"city": "A", "unit": "celsius"}}</tool_call>'
        '<tool_call>{"name": "convert_currency", "arguments": {"amount": 1, "to": "euro"}}</tool_call>',
    ],
)
def test_invalid_replies_stay_plain_content(text):
    content, calls = read_tool_calls(text, setup())
    assert calls == [] and content == text


def test_a_named_choice_accepts_only_that_function():
    text = '{"name": "convert_currency", "arguments": {"amount": 1, "to": "EUR"}}'
    assert read_tool_calls(text, setup("named", "get_weather"))[1] == []
    assert read_tool_calls(text, setup("named", "convert_currency"))[1]
    assert read_tool_calls(text, setup("none"))[1] == []


def test_request_checks():
    with pytest.raises(InvalidInput, match="not a valid JSON Schema"):
        parse_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}])
    with pytest.raises(InvalidInput, match="must describe an object"):
        parse_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}])
    with pytest.raises(InvalidInput, match="defined twice"):
        parse_tools([WEATHER, WEATHER])
    with pytest.raises(InvalidInput, match="1-64 letters"):
        parse_tools([{"type": "function", "function": {"name": "no spaces"}}])
    tools = [FunctionTool("f", "", {"type": "object"})]
    with pytest.raises(InvalidInput, match="not among the tools"):
        parse_tool_choice({"type": "function", "function": {"name": "g"}}, tools)
    with pytest.raises(InvalidInput, match="only allowed when tools"):
        parse_tool_choice("required", [])
    assert parse_tool_choice(None, tools).mode == "auto" and parse_tool_choice(None, []).mode == "none"


# The real server, the official SDK, the real default model --------------------------------------
def check_weather_call(call):
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    return arguments


NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def weather_reply(client):
    """One named-choice reply, shared by the tests below (the CPU is slow and the reply greedy)."""
    return client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, CONVERT], temperature=0, max_tokens=60, tool_choice=NAMED
    )


@pytest.mark.slow
def test_named_tool_choice_yields_a_valid_call(weather_reply):
    choice = weather_reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    [call] = choice.message.tool_calls
    arguments = check_weather_call(call)
    assert arguments["unit"] in ("celsius", "fahrenheit") and arguments["city"]


@pytest.mark.slow
def test_required_tool_choice_picks_a_defined_function(client):
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Convert 20 dollars to euros (EUR)."}],
        tools=[WEATHER, CONVERT],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
    )
    [call] = response.choices[0].message.tool_calls
    definition = {WEATHER["function"]["name"]: WEATHER, CONVERT["function"]["name"]: CONVERT}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), definition["function"]["parameters"])


@pytest.mark.slow
def test_streamed_tool_call_matches_the_whole_one(client, weather_reply):
    kwargs = dict(model=MODEL, messages=ASK, tools=[WEATHER, CONVERT], temperature=0, max_tokens=60, tool_choice=NAMED)
    whole = weather_reply.choices[0].message.tool_calls[0]
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = piece.id or call["id"]
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == json.loads(whole.function.arguments)


@pytest.mark.slow
def test_round_trip_tool_result_then_answer(client, server, user_key, weather_reply):
    first = weather_reply
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),  # the assistant turn, as the SDK gives it back
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "sunny"})},
    ]
    second = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=40
    )
    choice = second.choices[0]
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    assert choice.message.content.strip()
    assert "18" in choice.message.content or "sunny" in choice.message.content.lower()
    # the exchange is stored as it was shown, tool call and result included
    conversation = second.model_extra["espalier"]["conversation_id"]
    stored = httpx.get(f"{server.base}/api/conversations/{conversation}", headers=server.headers(user_key)).json()
    shown = " ".join(m["content"] for m in stored["requests"][0]["messages"])
    assert call.id in shown and '| {"temperature_c": 18' in shown


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, param, fragment",
    [
        (
            {"tool_choice": {"type": "function", "function": {"name": "launch_rockets"}}},
            "tool_choice",
            "not among the tools",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": 7}}}},
                    }
                ]
            },
            "tools[0].function.parameters",
            "not a valid JSON Schema",
        ),
        (
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_nope", "content": "18 degrees"}]},
            "messages[1].tool_call_id",
            "does not answer a tool call",
        ),
        (
            {"messages": [*ASK, {"role": "tool", "content": "18 degrees"}]},
            "messages[1].tool_call_id",
            "needs tool_call_id",
        ),
        ({"tools": None, "tool_choice": "required"}, "tool_choice", "only allowed when tools"),
        ({"tool_choice": "sometimes"}, "tool_choice", "must be one of"),
    ],
)
def test_bad_tool_input_gives_openai_shaped_400s(client, change, param, fragment):
    kwargs = {"model": MODEL, "messages": ASK, "tools": [WEATHER], "max_tokens": 4, **change}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(**kwargs)
    body = error.value.body
    assert body["type"] == "invalid_request_error" and body["param"] == param and fragment in body["message"]


def test_tool_messages_must_answer_an_earlier_call():
    from espalier.core.infrastructure.contracts import ChatMessage
    from espalier.core.tools.tool_calls import check_conversation

    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    asked = [ChatMessage("user", "hi"), ChatMessage("assistant", "", (call,))]
    check_conversation([*asked, ChatMessage("tool", "18", tool_call_id="call_1")])
    with pytest.raises(InvalidInput, match="does not answer"):  # answered twice
        check_conversation(
            [*asked, ChatMessage("tool", "18", tool_call_id="call_1"), ChatMessage("tool", "19", tool_call_id="call_1")]
        )
    with pytest.raises(InvalidInput, match="does not answer"):  # before the call was made
        check_conversation([ChatMessage("tool", "18", tool_call_id="call_1"), *asked])
    with pytest.raises(InvalidInput, match="used twice"):
        check_conversation([*asked, ChatMessage("assistant", "", (call,))])
    check_conversation([ChatMessage("user", "hi"), ChatMessage("tool", "legacy function result")], frozenset({1}))
