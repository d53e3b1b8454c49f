"""The pytest kit plugin authors use: a module-scoped app, and a scripted model registered beside a
plugin (its control flow through the real chat service and a real agent run)."""

from __future__ import annotations

import pytest

from espalier import hookimpl
from espalier.api.testing import ScriptedModels

scripted = ScriptedModels()


class Counter:
    """A plugin under test: a tool the scripted ReAct run calls."""

    @hookimpl
    def register_tools(self, register):
        from espalier import tool

        @tool(name="count_words")
        def count_words(text: str) -> int:
            """Count the words of a text."""
            return len(text.split())

        register(count_words)


@pytest.fixture(scope="module")
def espalier_module_plugins():
    return [Counter(), scripted]


def test_a_scripted_model_drives_the_chat_service(espalier_module):
    scripted.model.script = ["Hello from the script. STOP and nothing after"]
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stop": ["STOP"]}
    reply = espalier_module.client.post("/v1/chat/completions", json=body, headers=espalier_module.headers("user"))
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "Hello from the script. "
    assert scripted.model.prompts[-1][-1].content == "hi"


def test_a_scripted_agent_run_calls_the_plugins_tool(espalier_module):
    scripted.model.script = [
        ' I count.\nAction: {"tool": "count_words", "arguments": {"text": "one two three"}}',
        " Done.\nAction: finish[3]",
    ]
    body = {"question": "How many words?", "model": "scripted", "tools": ["count_words"]}
    run = espalier_module.client.post("/api/agents/react/runs", json=body, headers=espalier_module.headers("user"))
    assert run.status_code == 200, run.text
    assert run.json()["answer"] == "3" and run.json()["trace"][0]["observation"] == "3"


def test_the_module_app_is_shared(espalier_module, request):
    # Both tests above ran on this same app: its database holds their requests.
    stored = espalier_module.client.get("/api/conversations", headers=espalier_module.headers("admin"))
    assert stored.status_code == 200
