"""The remote provider against a real OpenAI-compatible server: a second Espalier process."""

import os

import httpx
import openai
import pytest

from espalier.api.testing import RunningServer
from espalier.core.infrastructure.contracts import ChatMessage, GenerationParams, ModelSpec
from espalier.core.infrastructure.errors import InvalidInput, Unavailable
from espalier.plugins.remote_models import RemoteProvider

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, model_cache_dir):
    running = RunningServer(tmp_path_factory.mktemp("upstream"), env={"ESPALIER_MODEL_CACHE_DIR": str(model_cache_dir)})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def upstream_key(upstream):
    return upstream.create_key("user", "downstream-espalier")


@pytest.fixture
def remote_model(upstream, upstream_key, monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", upstream_key)
    spec = ModelSpec(
        name="far",
        provider="remote",
        source=upstream.base + "/v1",
        options={"model": MODEL, "api_key_env": "UPSTREAM_KEY"},
    )
    return RemoteProvider().load(spec, cache_dir="")


def test_generate_and_stream_through_the_remote(remote_model):
    question = [ChatMessage("user", "What is the capital of France?")]
    params = GenerationParams(max_tokens=12, temperature=0)
    [generation] = remote_model.generate(question, params)
    assert "Paris" in generation.text and generation.completion_tokens > 0
    streamed = list(remote_model.stream(question, params))
    assert "".join(delta.text for delta in streamed) == generation.text
    assert streamed[-1].finish_reason in ("stop", "length")
    three = remote_model.generate(question, GenerationParams(max_tokens=6, temperature=0.8, n=3, seed=3))
    assert len(three) == 3
    [text] = remote_model.generate_text("The capital of France is", GenerationParams(max_tokens=4, temperature=0))
    assert text.text


def test_remote_errors_are_clear(upstream, remote_model, monkeypatch):
    with pytest.raises(InvalidInput, match="context window"):
        remote_model.generate([ChatMessage("user", "tree " * 9000)], GenerationParams(max_tokens=8))
    monkeypatch.setenv("BAD_KEY", "esp_000000000000_nope")
    spec = ModelSpec(
        name="far", provider="remote", source=upstream.base + "/v1", options={"model": MODEL, "api_key_env": "BAD_KEY"}
    )
    with pytest.raises(Unavailable, match="refused Espalier's key"):
        RemoteProvider().load(spec, cache_dir="").generate([ChatMessage("user", "hi")], GenerationParams(max_tokens=2))
    dead = ModelSpec(name="gone", provider="remote", source="http://127.0.0.1:9/v1", options={"connect_timeout": 0.5})
    with pytest.raises(Unavailable, match="cannot reach"):
        RemoteProvider().load(dead, cache_dir="").generate([ChatMessage("user", "hi")], GenerationParams(max_tokens=2))


def test_registration_checks_the_source(monkeypatch):
    provider = RemoteProvider()
    with pytest.raises(InvalidInput, match="http"):
        provider.validate(ModelSpec(name="x", provider="remote", source="ftp://nowhere"))
    with pytest.raises(InvalidInput, match="environment variable"):
        provider.validate(
            ModelSpec(name="x", provider="remote", source="http://h/v1", options={"api_key_env": "NOT_SET_ANYWHERE"})
        )
    with pytest.raises(InvalidInput, match="do not store keys"):
        provider.validate(ModelSpec(name="x", provider="remote", source="http://h/v1", options={"api_key": "sk-..."}))


def test_a_remote_model_served_by_espalier(upstream, upstream_key, tmp_path, model_cache_dir):
    """Espalier in front of Espalier: register the upstream as a remote model, chat through it."""
    env = {"UPSTREAM_KEY": upstream_key, "ESPALIER_MODEL_CACHE_DIR": str(model_cache_dir)}
    front = RunningServer(tmp_path / "front", env=env)
    try:
        added = httpx.post(
            front.base + "/api/models",
            headers=front.headers(),
            json={
                "name": "upstream-smol",
                "provider": "remote",
                "source": upstream.base + "/v1",
                "options": {"model": MODEL, "api_key_env": "UPSTREAM_KEY"},
            },
        )
        assert added.status_code == 201, added.text
        client = openai.OpenAI(base_url=front.base + "/v1", api_key=front.admin_key, max_retries=0)
        assert "upstream-smol" in {m.id for m in client.models.list().data}
        reply = client.chat.completions.create(
            model="upstream-smol",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12,
            temperature=0,
        )
        assert "Paris" in reply.choices[0].message.content
        chunks = [
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="upstream-smol", messages=[{"role": "user", "content": "Say hi"}], max_tokens=6, stream=True
            )
            if c.choices
        ]
        assert "".join(chunks)
        duplicate = httpx.post(
            front.base + "/api/models",
            headers=front.headers(),
            json={"name": "upstream-smol", "provider": "remote", "source": upstream.base + "/v1"},
        )
        assert duplicate.status_code == 409
        assert httpx.delete(front.base + "/api/models/upstream-smol", headers=front.headers()).status_code == 200
        assert httpx.delete(front.base + f"/api/models/{MODEL}", headers=front.headers()).status_code == 409
    finally:
        front.stop()
    assert os.environ.get("UPSTREAM_KEY") is None  # the key lived in the server's environment only
