"""Fixtures for the agent tests: a scripted model (for control flow only), a small keyword
retriever over real text, and the real app with both registered."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from espalier import hookimpl
from espalier.core.infrastructure import contracts
from tests.support import REPO


class ScriptedModel:
    """Answers from ``provider.script(messages)``: a list of canned texts or a function."""

    context_window = 4096

    def __init__(self, provider: ScriptedProvider):
        self.provider = provider

    def count_tokens(self, messages):
        return sum(len(m.content.split()) for m in messages)

    def generate(self, messages, params, cancel=None):
        self.provider.prompts.append(list(messages))
        script = self.provider.script
        text = script(messages) if callable(script) else script.pop(0)
        for stop in params.stop:  # behave like a real model: cut at the stop sequences
            if stop in text:
                text = text[: text.index(stop)]
        return [contracts.Generation(text, "stop", 1, len(text.split()))]

    def stream(self, messages, params, cancel=None):
        yield contracts.TokenDelta(0, self.generate(messages, params, cancel)[0].text, "stop")


class ScriptedProvider:
    name = "scripted"

    def __init__(self):
        self.script: list[str] | Callable[[Sequence[contracts.ChatMessage]], str] = []
        self.prompts: list[list[contracts.ChatMessage]] = []

    def load(self, spec, *, cache_dir):
        return ScriptedModel(self)


class KeywordRetriever:
    """Scores passages by shared words with the query: enough to test tools over real text."""

    name = "keywords"
    searches_collections = False  # its own in-memory sources, open to every key

    def __init__(self):
        self.collections: dict[str, list[tuple[str, str]]] = {}

    def sources(self):
        return list(self.collections)

    def search(self, query, *, collection, k=5, filters=None):
        words = set(re.findall(r"\w+", query.lower()))
        scored = []
        for chunk_id, text in self.collections.get(collection, []):
            overlap = len(words & set(re.findall(r"\w+", text.lower())))
            if overlap:
                scored.append((overlap, chunk_id, text))
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [
            contracts.RetrievedChunk(f"doc-{cid}", cid, text, float(score), source="test")
            for score, cid, text in scored[:k]
        ]


class AgentTestPlugin:
    def __init__(self):
        self.provider = ScriptedProvider()
        self.retriever = KeywordRetriever()

    @hookimpl
    def register_model_providers(self, register):
        register(self.provider)

    @hookimpl
    def register_models(self, register):
        register(contracts.ModelSpec(name="scripted", provider="scripted", source="memory"))

    @hookimpl
    def register_retrievers(self, register):
        register(self.retriever)


@pytest.fixture
def agent_plugin() -> AgentTestPlugin:
    return AgentTestPlugin()


@pytest.fixture
def espalier_plugins(agent_plugin):
    return [agent_plugin]


@pytest.fixture(scope="session")
def sandbox_cache() -> Path:
    """The compiled python.wasm, shared by every test (compiling takes seconds)."""
    path = REPO / ".pytest_cache" / "espalier-sandbox"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def shared_sandbox(espalier, sandbox_cache):
    from espalier.plugins.sandbox import PythonTool, Sandbox

    tool = espalier.platform.tools.get("python")
    assert isinstance(tool, PythonTool)
    tool._sandbox = Sandbox(sandbox_cache)
    return tool._sandbox
