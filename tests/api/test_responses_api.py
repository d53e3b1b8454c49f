"""The Responses API through the official ``openai`` SDK against a real server with the shipped
model: create (text and items), instructions, previous_response_id with ownership, streaming's
typed events, function tools round trip, structured output with responses.parse, file_search over
a collection with citations, and refusals."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


class Capital(BaseModel):
    country: str = Field(max_length=24)
    capital: str = Field(max_length=24)


def test_create_get_and_continue_a_response(client, server, user_key):
    first = client.responses.create(
        model=MODEL, input="What is the capital of France?", temperature=0, max_output_tokens=16
    )
    assert first.id.startswith("resp_") and first.object == "response"
    assert first.status in ("completed", "incomplete") and "Paris" in first.output_text
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    fetched = client.responses.retrieve(first.id)
    assert fetched.output_text == first.output_text

    second = client.responses.create(
        model=MODEL, input="And of Italy?", previous_response_id=first.id, temperature=0, max_output_tokens=16
    )
    assert second.previous_response_id == first.id and second.output_text
    # The model saw the earlier turn: it is in the conversation Espalier stored for the second.
    stored = httpx.get(server.base + f"/v1/responses/{second.id}", headers=server.headers(user_key)).json()
    assert stored["id"] == second.id

    other = openai.OpenAI(
        base_url=server.base + "/v1", api_key=server.create_key("user", "responses-other"), max_retries=0
    )
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model=MODEL, input="hi", previous_response_id=first.id, max_output_tokens=4)


def test_items_as_input(client):
    briefed = client.responses.create(model=MODEL, input="Hi", instructions="Be brief.", max_output_tokens=4)
    assert briefed.instructions == "Be brief."
    response = client.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "You answer in one word."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Capital of Spain?"}]},
        ],
        temperature=0,
        max_output_tokens=8,
    )
    assert response.output[0].type == "message" and response.output[0].content[0].type == "output_text"


def test_streaming_sends_the_typed_events_in_order(client):
    stream = client.responses.create(
        model=MODEL, input="What is the capital of France?", temperature=0, max_output_tokens=12, stream=True
    )
    kinds, text, numbers, final = [], "", [], None
    for event in stream:
        kinds.append(event.type)
        numbers.append(event.sequence_number)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds.count("response.output_text.delta") >= 3
    assert numbers == list(range(len(numbers)))
    assert final is not None and final.output_text == text and "Paris" in text
    assert client.responses.retrieve(final.id).output_text == text


def test_function_tool_round_trip(client):
    first = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_output_tokens=60,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and "city" in json.loads(calls[0].arguments)
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"}],
        tools=[WEATHER],
        temperature=0,
        max_output_tokens=30,
    )
    assert second.output and second.status in ("completed", "incomplete")


def test_parse_gives_a_valid_object(client):
    parsed = client.responses.parse(
        model=MODEL, input="Name a country and its capital.", text_format=Capital, temperature=0, max_output_tokens=60
    )
    assert isinstance(parsed.output_parsed, Capital)


def test_file_search_grounds_the_answer_in_a_collection(client, server):
    operator = server.create_key("operator", "responses-operator")
    headers = server.headers(operator)
    assert httpx.post(server.base + "/api/collections", headers=headers, json={"name": "orchard"}).status_code in (
        200,
        201,
        409,
    )
    text = "The orchard's oldest tree is a pear planted in 1911 against the south wall."
    added = httpx.post(
        server.base + "/api/collections/orchard/documents",
        headers=headers,
        json={"filename": "orchard.txt", "text": text, "source": "orchard.txt"},
        timeout=300,
    )
    assert added.status_code in (200, 201), added.text
    own = openai.OpenAI(base_url=server.base + "/v1", api_key=operator, max_retries=0, timeout=600)
    response = own.responses.create(
        model=MODEL,
        input="When was the oldest tree planted?",
        tools=[{"type": "file_search", "vector_store_ids": ["orchard"]}],
        tool_choice="auto",  # moot with no function tools, and accepted
        temperature=0,
        max_output_tokens=24,
    )
    search = next(item for item in response.output if item.type == "file_search_call")
    assert search.results and "1911" in search.results[0].text and search.results[0].filename == "orchard.txt"
    message = next(item for item in response.output if item.type == "message")
    assert message.content[0].annotations[0].type == "file_citation"
    # A collection the key may not read is refused as chat completions refuse it.
    with pytest.raises((openai.NotFoundError, openai.PermissionDeniedError)):
        client.responses.create(
            model=MODEL,
            input="x",
            tools=[{"type": "file_search", "vector_store_ids": ["orchard"]}],
            max_output_tokens=4,
        )


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "pal agent"),
        ({"tools": [{"type": "web_search"}]}, "web_search"),
        (
            {"input": [{"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "text parts",
        ),
        ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}, "call_x"),
        ({"previous_response_id": "resp_000"}, "resp_000"),
        ({"text": {"format": "json_object"}}, "text.format must be"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(client, kwargs, fragment):
    kwargs.setdefault("input", "hi")
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as error:
        client.responses.create(model=MODEL, max_output_tokens=4, **kwargs)
    assert fragment in str(error.value.body), error.value.body
