"""Logprobs through the official SDK against a real server with the shipped model, checked against
a direct forward pass of the same weights in this process: chat ``logprobs``/``top_logprobs``
(plain, streamed, sampled, schema-constrained) and ``/v1/completions`` ``logprobs`` with ``echo``
(scoring given text, as evaluation harnesses do).

The model is registered in float32 for the comparison: in bfloat16 (the default where the CPU has
it natively) a token decoded step by step with the KV cache and the same token in one full pass
round differently, by up to 0.2 nats on this model; in float32 they agree to about 2e-5."""

from __future__ import annotations

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from espalier.plugins.common.gguf import gguf_cache_folder
from espalier.plugins.common.model_sources import resolve_source
from espalier.plugins.transformers_models.provider import DEFAULT_MODEL

MODEL = "smollm2-f32"
QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]
TOLERANCE = 1e-4
BYTE_CHARS = bytes_to_unicode()


@pytest.fixture(scope="module", autouse=True)
def float32_model(server):
    response = httpx.post(
        server.base + "/api/models",
        headers=server.headers(),
        json={"name": MODEL, "provider": "transformers", "source": DEFAULT_MODEL.source, "dtype": "float32"},
    )
    assert response.status_code in (200, 201, 409), response.text


@pytest.fixture(scope="module")
def reference(model_cache_dir, client):
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1)  # the server converted the weights
    folder = gguf_cache_folder(resolve_source(DEFAULT_MODEL.source), model_cache_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def token_id(tokenizer, data: list[int]) -> int:
    """The vocabulary id of a token given by its bytes (a byte-level BPE vocabulary)."""
    return tokenizer.convert_tokens_to_ids("".join(BYTE_CHARS[b] for b in data))


def forward_logprobs(reference, prompt_ids: list[int], ids: list[int]) -> torch.Tensor:
    """log-softmax of the next-token distribution before each of ``ids`` (len(ids), vocab)."""
    model, _ = reference
    full = torch.tensor([prompt_ids + ids])
    with torch.inference_mode():
        logits = model(input_ids=full).logits[0].float()
    return logits[len(prompt_ids) - 1 : -1].log_softmax(dim=-1)


def chat_prompt_ids(reference, messages) -> list[int]:
    _, tokenizer = reference
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_chat_entries(reference, messages, content, entries, top: int) -> None:
    _, tokenizer = reference
    assert entries, "logprobs were asked for"
    assert b"".join(bytes(e.bytes) for e in entries).decode("utf-8") == content
    ids = [token_id(tokenizer, e.bytes) for e in entries]
    expected = forward_logprobs(reference, chat_prompt_ids(reference, messages), ids)
    for position, entry in enumerate(entries):
        assert abs(entry.logprob - expected[position, ids[position]].item()) < TOLERANCE, position
        assert len(entry.top_logprobs) == top
        values, best = expected[position].topk(top)
        for alternative, value, best_id in zip(entry.top_logprobs, values.tolist(), best.tolist(), strict=True):
            assert abs(alternative.logprob - value) < TOLERANCE
            assert token_id(tokenizer, alternative.bytes) == best_id


def test_chat_logprobs_equal_a_direct_forward_pass(client, reference):
    response = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=16, logprobs=True, top_logprobs=5
    )
    choice = response.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == response.usage.completion_tokens - (choice.finish_reason == "stop")  # no end token
    check_chat_entries(reference, QUESTION, choice.message.content, entries, 5)
    assert all(e.logprob == e.top_logprobs[0].logprob for e in entries)  # greedy: the likeliest token each time


def test_sampled_streamed_and_constrained_logprobs_are_the_models_own(client, reference):
    # Sampled at a temperature: the values are still the model's own distribution, not the tempered one.
    sampled = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=1.3, seed=5, max_tokens=12, logprobs=True, top_logprobs=2
    )
    check_chat_entries(reference, QUESTION, sampled.choices[0].message.content, sampled.choices[0].logprobs.content, 2)

    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=12, logprobs=True, top_logprobs=1, stream=True
    )
    content, entries = "", []
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            if choice.logprobs is not None:
                entries.extend(choice.logprobs.content or [])
    check_chat_entries(reference, QUESTION, content, entries, 1)

    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}}, "required": ["colour"]}
    constrained = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=20,
        logprobs=True,
        top_logprobs=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    # The decoder's mask chose among what the schema allows; the values are what the model thought.
    shown = [{"role": "system", "content": _instructions(schema)}, *QUESTION]
    check_chat_entries(
        reference, shown, constrained.choices[0].message.content, constrained.choices[0].logprobs.content, 0
    )


def _instructions(schema) -> str:
    from espalier.core.infrastructure.contracts import ChatMessage
    from espalier.core.tools.structured import parse_response_format, with_instructions

    fmt = parse_response_format({"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    return with_instructions([ChatMessage("user", "x")], fmt)[0].content


def test_echo_scores_given_text_as_evaluation_harnesses_ask(server, user_key, reference):
    _, tokenizer = reference
    text = "The capital of France is Paris."
    response = httpx.post(
        server.base + "/v1/completions",
        headers=server.headers(user_key),
        json={"model": MODEL, "prompt": [text, "Two plus two is four."], "max_tokens": 0, "echo": True, "logprobs": 3},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    assert choice["text"] == text and body["usage"]["completion_tokens"] == 0 and len(body["choices"]) == 2
    logprobs = choice["logprobs"]
    ids = tokenizer(text)["input_ids"]
    assert "".join(logprobs["tokens"]) == text and len(logprobs["tokens"]) == len(ids)
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    expected = forward_logprobs(reference, ids[:1], ids[1:])
    for position, token in enumerate(ids[1:], start=1):
        assert abs(logprobs["token_logprobs"][position] - expected[position - 1, token].item()) < TOLERANCE
        assert len(logprobs["top_logprobs"][position]) == 3
    assert logprobs["text_offset"][:3] == [
        0,
        len(logprobs["tokens"][0]),
        len(logprobs["tokens"][0] + logprobs["tokens"][1]),
    ]

    # echo with a completion: the prompt's tokens, then the generated ones, scored alike.
    both = httpx.post(
        server.base + "/v1/completions",
        headers=server.headers(user_key),
        json={"model": MODEL, "prompt": text, "max_tokens": 4, "temperature": 0, "echo": True, "logprobs": 0},
        timeout=120,
    ).json()["choices"][0]
    assert both["text"].startswith(text) and len(both["logprobs"]["tokens"]) >= len(ids) + 1
    assert "".join(both["logprobs"]["tokens"]) == both["text"]


def test_completion_logprobs_cover_the_generated_tokens(client):
    response = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2
    )
    logprobs = response.choices[0].logprobs
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert len(logprobs.token_logprobs) == response.usage.completion_tokens
    assert all(len(top) == 2 for top in logprobs.top_logprobs)


@pytest.mark.parametrize(
    "path, body, fragment",
    [
        ("/v1/chat/completions", {"messages": QUESTION, "top_logprobs": 3}, "needs logprobs"),
        ("/v1/chat/completions", {"messages": QUESTION, "logprobs": True, "top_logprobs": 21}, "0-20"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "0 is for scoring"),
        ("/v1/completions", {"prompt": "x", "echo": True, "stream": True}, "not with stream"),
        ("/v1/completions", {"prompt": "x", "logprobs": 21}, "0-20"),
    ],
)
def test_bad_logprob_requests_are_refused(server, user_key, path, body, fragment):
    response = httpx.post(server.base + path, headers=server.headers(user_key), json={"model": MODEL, **body})
    assert response.status_code == 400 and fragment in response.json()["error"]["message"], response.text
