"""The OpenAI-compatible API on a real server with the real shipped models, through the
official `openai` SDK and LangChain's ChatOpenAI."""

import json
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from espalier.plugins.transformers_models.loader import cpu_has_fast_bfloat16

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_list_names_the_shipped_models(client):
    models = {model.id: model for model in client.models.list().data}
    assert MODEL in models and "minilm" in models
    assert models[MODEL].owned_by == "transformers_models"
    assert models[MODEL].model_extra["espalier"]["serving_version"] == "base"


def test_chat_completion(client):
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=12)
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens > 0 and response.usage.prompt_tokens > 5
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert response.id.startswith("chatcmpl-") and response.model == MODEL
    extension = response.model_extra["espalier"]
    assert extension["model_version"] == "base" and len(extension["completion_ids"]) == 1


def test_streaming_chat_arrives_incrementally_and_matches(client):
    greedy = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    stamps, pieces, finish = [], [], None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
                stamps.append(time.perf_counter())
            finish = choice.finish_reason or finish
    assert "".join(pieces) == greedy.choices[0].message.content
    assert len(pieces) >= 5
    assert stamps[-1] - stamps[0] > 0.05, "chunks must arrive as tokens are generated, not all at once"
    assert finish in ("stop", "length")
    assert usage.completion_tokens == greedy.usage.completion_tokens


def test_n_candidates(client):
    response = client.chat.completions.create(
        model=MODEL, messages=QUESTION, n=3, temperature=0.9, seed=7, max_tokens=10
    )
    assert [choice.index for choice in response.choices] == [0, 1, 2]
    assert all(choice.message.content for choice in response.choices)
    assert len(response.model_extra["espalier"]["completion_ids"]) == 3


def test_seed_makes_sampling_reproducible(client):
    kwargs = dict(model=MODEL, messages=QUESTION, temperature=1.0, seed=1234, max_tokens=12)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first == second


def test_stop_sequence(client):
    response = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=24, stop=["Paris"]
    )
    assert "Paris" not in response.choices[0].message.content
    assert response.choices[0].finish_reason == "stop"


def test_plain_completion(client):
    response = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert response.choices[0].text and response.object == "text_completion"
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
        )
        if chunk.choices
    )
    assert streamed == response.choices[0].text


def test_embeddings_float_and_base64(client, server, user_key):
    texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Quarterly revenue grew by 4%."]
    response = client.embeddings.create(model="minilm", input=texts)  # the SDK asks for base64 and decodes it
    vectors = np.array([item.embedding for item in response.data])
    assert vectors.shape == (3, 384)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    plain = httpx.post(
        server.base + "/v1/embeddings",
        headers=server.headers(user_key),
        json={"model": "minilm", "input": texts[0], "encoding_format": "float"},
    ).json()
    assert np.allclose(plain["data"][0]["embedding"], vectors[0], atol=1e-5)


def test_langchain_chat_openai(server, user_key):
    import langchain_openai

    chat = langchain_openai.ChatOpenAI(
        base_url=server.base + "/v1", api_key=user_key, model=MODEL, temperature=0, max_tokens=12, max_retries=0
    )
    assert "Paris" in chat.invoke("What is the capital of France?").content
    streamed = "".join(chunk.content for chunk in chat.stream("What is the capital of France?"))
    assert "Paris" in streamed


# Bad input ---------------------------------------------------------------------------------------
def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-17", messages=QUESTION)
    assert error.value.body["code"] == "model_not_found"


def test_context_overflow_says_the_limit(client):
    long = "tree " * 9000
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long}], max_tokens=10)
    assert error.value.body["code"] == "context_length_exceeded"
    assert "8192" in error.value.body["message"]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n must be"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_invalid_parameters(client, kwargs, fragment):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=kwargs.pop("max_tokens", 4), **kwargs)
    assert fragment in error.value.body["message"]


def test_empty_messages_and_bad_bodies(server, user_key):
    post = lambda body: httpx.post(server.base + "/v1/chat/completions", headers=server.headers(user_key), json=body)  # noqa: E731
    response = post({"model": MODEL, "messages": []})
    assert response.status_code == 400 and response.json()["error"]["code"] == "empty_messages"
    response = post({"model": MODEL, "messages": QUESTION, "temprature": 0})
    assert response.status_code == 400 and "temprature" in response.json()["error"]["message"]
    response = post({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]})
    assert response.status_code == 400 and "wizard" in response.json()["error"]["message"]
    response = httpx.post(
        server.base + "/v1/chat/completions",
        headers={**server.headers(user_key), "Content-Type": "application/json"},
        content=b'{"model": ',
    )
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    response = httpx.post(server.base + "/v1/chat/completions", json={"model": MODEL, "messages": QUESTION})
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"


def test_client_disconnect_mid_stream_stops_generation(server, user_key):
    conversation = f"disconnect-{time.time_ns()}"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story about a tree."}],
        "stream": True,
        "max_tokens": 400,
        "temperature": 0,
        "espalier": {"conversation_id": conversation},
    }
    with httpx.stream(
        "POST", server.base + "/v1/chat/completions", json=body, headers=server.headers(user_key), timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received = []
        for line in response.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                content = json.loads(line[5:])["choices"][0]["delta"].get("content")
                if content:
                    received.append(content)
            if len(received) >= 4:
                break
    deadline = time.monotonic() + 30
    stored = None
    while time.monotonic() < deadline:
        reply = httpx.get(f"{server.base}/api/conversations/{conversation}", headers=server.headers(user_key))
        if reply.status_code == 200 and reply.json()["requests"]:
            stored = reply.json()["requests"][0]
            break
        time.sleep(0.2)
    assert stored is not None, "the interrupted request was not stored"
    assert stored["status"] == "cancelled"
    assert 4 <= stored["completion_tokens"] < 100, "generation must stop soon after the client leaves"
    assert stored["completions"][0]["finish_reason"] == "cancelled"
    assert stored["completions"][0]["text"].startswith("".join(received))
    assert httpx.get(server.base + "/healthz").status_code == 200


def test_health_answers_while_generating(server, user_key, client):
    done = threading.Event()
    story = [{"role": "user", "content": "Write a long story about an old apple tree and the gardener who trained it."}]

    def generate():
        try:
            client.chat.completions.create(model=MODEL, messages=story, max_tokens=150, temperature=0)
        finally:
            done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    time.sleep(0.3)
    latencies = []
    while not done.is_set() and len(latencies) < 10:
        started = time.perf_counter()
        assert httpx.get(server.base + "/healthz", timeout=5).status_code == 200
        latencies.append(time.perf_counter() - started)
        time.sleep(0.1)
    worker.join()
    assert len(latencies) >= 3, "the generation ended before /healthz could be checked during it"
    assert max(latencies) < 0.5


def test_conversations_are_stored_and_private(server, client, user_key):
    conversation = f"mine-{time.time_ns()}"
    client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=4,
        temperature=0,
        extra_body={"espalier": {"conversation_id": conversation}},
    )
    mine = httpx.get(f"{server.base}/api/conversations/{conversation}", headers=server.headers(user_key)).json()
    [request] = mine["requests"]
    assert request["messages"] == QUESTION and request["params"]["max_tokens"] == 4
    assert request["model"] == MODEL and request["completions"][0]["text"]
    other = server.create_key("user", "someone-else")
    assert (
        httpx.get(f"{server.base}/api/conversations/{conversation}", headers=server.headers(other)).status_code == 404
    )
    assert conversation not in json.dumps(
        httpx.get(f"{server.base}/api/conversations", headers=server.headers(other)).json()
    )
    other_client = openai.OpenAI(base_url=server.base + "/v1", api_key=other, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other_client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=2, extra_body={"espalier": {"conversation_id": conversation}}
        )
    with pytest.raises(openai.NotFoundError):  # streamed: the claim comes after generation started, still a 404
        other_client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=2,
            stream=True,
            extra_body={"espalier": {"conversation_id": conversation}},
        )
    assert conversation not in json.dumps(
        httpx.get(f"{server.base}/api/conversations", headers=server.headers(other)).json()
    )


def test_chain_of_thought_template(server, client, user_key):
    saved = httpx.post(
        server.base + "/api/templates",
        headers=server.headers(),
        json={
            "name": "arith-cot",
            "system": "Solve step by step.",
            "user": "Question: {{ input }}",
            "examples": [{"question": "Question: 2 apples plus 3 apples?", "reasoning": "2 + 3 = 5.", "answer": "5"}],
        },
    )
    assert saved.status_code == 201, saved.text
    assert saved.json()["reference"] == "arith-cot@1"
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "4 pears plus 1 pear?"}],
        max_tokens=8,
        temperature=0,
        extra_body={"espalier": {"template": "arith-cot"}},
    )
    assert response.model_extra["espalier"]["template"] == "arith-cot"
    conversation = response.model_extra["espalier"]["conversation_id"]
    stored = httpx.get(f"{server.base}/api/conversations/{conversation}", headers=server.headers(user_key)).json()
    assert stored["requests"][0]["messages"] == [
        {"role": "system", "content": "Solve step by step."},
        {"role": "user", "content": "Question: 2 apples plus 3 apples?"},
        {"role": "assistant", "content": "2 + 3 = 5.\nThe answer is 5."},
        {"role": "user", "content": "Question: 4 pears plus 1 pear?"},
    ]
    listed = {
        t["reference"] for t in httpx.get(server.base + "/api/templates", headers=server.headers()).json()["templates"]
    }
    assert "arith-cot@1" in listed
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=2, extra_body={"espalier": {"template": "no-such-template"}}
        )


def test_later_turns_reuse_the_prompt_so_far_and_say_so(server, client, user_key):
    system = {"role": "system", "content": "You are a gardener who answers in one short sentence. " * 6}
    first = [system, {"role": "user", "content": "When should I plant tulips?"}]
    reply = client.chat.completions.create(model=MODEL, messages=first, max_tokens=12, temperature=0)
    # a conversation the server opened: stored with the answer, its owner's alone
    conversation = reply.model_extra["espalier"]["conversation_id"]
    mine = httpx.get(f"{server.base}/api/conversations/{conversation}", headers=server.headers(user_key))
    assert mine.status_code == 200 and len(mine.json()["requests"]) == 1
    other = server.create_key("user", "not-the-gardener")
    assert (
        httpx.get(f"{server.base}/api/conversations/{conversation}", headers=server.headers(other)).status_code == 404
    )

    operator = server.create_key("operator", "serving-stats")

    def reuse() -> dict:
        info = httpx.get(f"{server.base}/api/models/{MODEL}", headers=server.headers(operator)).json()
        serving = next(v for v in info["versions"] if v["serving"])
        assert serving["loaded"]
        if cpu_has_fast_bfloat16():  # served in bfloat16: prompt passes on packed weights
            assert serving["serving_stats"]["packed_prefill_layers"] > 0
        return serving["serving_stats"]["prefix_cache"]

    before = reuse()
    second = [
        *first,
        {"role": "assistant", "content": reply.choices[0].message.content},
        {"role": "user", "content": "And how deep?"},
    ]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=second,
        max_tokens=8,
        temperature=0,
        extra_body={"espalier": {"conversation_id": conversation}},
    )
    assert answer.choices[0].message.content
    after = reuse()
    assert after["prompts"] == before["prompts"] + 1 and after["hits"] == before["hits"] + 1
    assert after["reused_tokens"] - before["reused_tokens"] >= 64  # the system prompt and the first turn
    assert (
        len(
            httpx.get(f"{server.base}/api/conversations/{conversation}", headers=server.headers(user_key)).json()[
                "requests"
            ]
        )
        == 2
    )
