"""A streamed request whose model fails: before its first token the client gets an ordinary
OpenAI-shaped HTTP error (the response has not started); after it, an error event and
``[DONE]``. Either way the request is stored. A scripted model fails on cue (error paths only:
streaming itself is tested on the real model in tests/api/test_openai_api.py)."""

from __future__ import annotations

import json

import pytest

from espalier import hookimpl
from espalier.core.infrastructure import contracts
from espalier.core.infrastructure.errors import Unavailable


class FailingModel:
    context_window = 512

    def __init__(self, tokens_before_failure: int):
        self.tokens_before_failure = tokens_before_failure

    def count_tokens(self, messages):
        return sum(len(m.content.split()) for m in messages)

    def generate(self, messages, params, cancel=None):
        raise Unavailable("the model's backend went away")

    def stream(self, messages, params, cancel=None):
        def deltas():
            for i in range(self.tokens_before_failure):
                yield contracts.TokenDelta(0, f"word{i} ")
            raise Unavailable("the model's backend went away")

        return deltas()


class FailingPlugin:
    @hookimpl
    def register_model_providers(self, register):
        class Provider:
            name = "failing"

            def load(self, spec, *, cache_dir):
                return FailingModel(int(spec.source))

        register(Provider())

    @hookimpl
    def register_models(self, register):
        register(contracts.ModelSpec(name="fails-at-once", provider="failing", source="0"))
        register(contracts.ModelSpec(name="fails-later", provider="failing", source="2"))


@pytest.fixture
def espalier_plugins():
    return [FailingPlugin()]


def stream(espalier, model):
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": True}
    return espalier.client.post("/v1/chat/completions", json=body, headers=espalier.headers("user"))


def test_a_failure_before_the_first_token_is_an_http_error(espalier):
    response = stream(espalier, "fails-at-once")
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "the model's backend went away"
    stored = espalier.client.get("/api/conversations", headers=espalier.headers("user")).json()
    assert len(stored["conversations"]) == 1  # the request was recorded, as one that produced nothing


def test_a_failure_after_tokens_is_an_error_event_then_done(espalier):
    response = stream(espalier, "fails-later")
    assert response.status_code == 200
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "word0 word1 "
    assert chunks[-1]["error"]["message"] == "the model's backend went away"
