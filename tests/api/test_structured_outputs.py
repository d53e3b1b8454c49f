"""Structured outputs (``response_format``), the SDK's own message shape sent back, and the tool
round trip, through clients nobody here wrote (the official ``openai`` SDK, LangChain's
``ChatOpenAI``) against a real server with the shipped model."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

MODEL = "smollm2-135m-instruct"


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)
    population_millions: int


CITY_QUESTION = [{"role": "user", "content": "Describe Paris: its name, country and population in millions."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_sdk_parse_returns_a_valid_object(client):
    completion = client.chat.completions.parse(
        model=MODEL, messages=CITY_QUESTION, response_format=City, temperature=0, max_tokens=80
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop", message.content
    assert isinstance(message.parsed, City)
    assert message.refusal is None
    City.model_validate_json(message.content)


def test_langchain_with_structured_output_default_method(server, user_key):
    import langchain_openai

    chat = langchain_openai.ChatOpenAI(
        base_url=server.base + "/v1", api_key=user_key, model=MODEL, temperature=0, max_tokens=80, max_retries=0
    )
    city = chat.with_structured_output(City).invoke("Describe Paris: its name, country and population in millions.")
    assert isinstance(city, City)


def test_json_object_streamed_and_n_candidates_all_match(client):
    schema = City.model_json_schema()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CITY_QUESTION,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
        temperature=0.9,
        seed=3,
        n=3,
        max_tokens=80,
        stream=True,
    )
    texts = ["", "", ""]
    finishes = [None, None, None]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert finishes == ["stop"] * 3, texts
    for text in texts:
        jsonschema.validate(json.loads(text), schema)

    plain = client.chat.completions.create(
        model=MODEL, messages=CITY_QUESTION, response_format={"type": "json_object"}, temperature=0, max_tokens=80
    )
    assert isinstance(json.loads(plain.choices[0].message.content), dict)


@pytest.mark.parametrize(
    "response_format, fragment",
    [
        ({"type": "xml"}, "text, json_object or json_schema"),
        ({"type": "json_schema"}, "needs a 'json_schema' object"),
        ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "name must be"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}}, "not a valid JSON Schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "extra": 1}}, "extra"),
        # Valid JSON Schema the decoder cannot enforce: refused, naming the keyword.
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object", "not": {"required": ["a"]}}},
            },
            '"not"',
        ),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"format": "hue"}}}},
            },
            "Unknown format: hue",
        ),
    ],
)
def test_bad_or_unenforceable_formats_are_refused_with_the_reason(client, response_format, fragment):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as error:
            client.chat.completions.create(
                model=MODEL, messages=CITY_QUESTION, response_format=response_format, max_tokens=8, stream=stream
            )
        assert fragment in error.value.body["message"], error.value.body


def test_completions_have_no_response_format(server, user_key):
    response = httpx.post(
        server.base + "/v1/completions",
        headers=server.headers(user_key),
        json={"model": MODEL, "prompt": "x", "max_tokens": 2, "response_format": {"type": "json_object"}},
    )
    assert response.status_code == 400 and "response_format" in response.text


def test_sdk_tool_round_trip_sends_its_own_message_back(client):
    tools = [WEATHER_TOOL]
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, tool_choice="required", temperature=0, max_tokens=60
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    # The SDK's own object goes back as it came (refusal, annotations, audio: what the SDK keeps).
    messages.append(choice.message)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"})
    final = client.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, temperature=0, max_tokens=30, parallel_tool_calls=False
    )
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, tools=tools, max_tokens=4, parallel_tool_calls=False, service_tier="auto"
    )
    assert raw.headers["x-espalier-ignored"] == "parallel_tool_calls, service_tier"
    # Every field the SDK's assistant message may carry is accepted.
    shaped = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "audio": None,
        "annotations": [],
        "function_call": None,
        "tool_calls": [call.model_dump()],
    }
    again = client.chat.completions.create(
        model=MODEL, messages=[messages[0], shaped, messages[-1]], tools=tools, max_tokens=4
    )
    assert again.choices[0].message is not None


def test_tools_and_structured_output_together(client):
    """tool_choice auto with a response format: the reply is a call or the structured answer."""
    schema = City.model_json_schema()
    response = client.chat.completions.create(
        model=MODEL,
        messages=CITY_QUESTION,
        tools=[WEATHER_TOOL],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        temperature=0,
        max_tokens=80,
    )
    choice = response.choices[0]
    if choice.finish_reason == "tool_calls":
        assert choice.message.tool_calls[0].function.name == "get_weather"
    else:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), schema)
