"""PAL: the model's program runs in the wasm sandbox; ``answer`` is the answer; the trace keeps
the program, its output and the value."""

from __future__ import annotations

import os

import pytest

from espalier.plugins.pal import extract_program, format_value, pal_messages

PROGRAM = """```python
# 3 boxes of 12 eggs, 5 broken
boxes = 3
eggs = boxes * 12
print("eggs", eggs)
answer = eggs - 5
```"""


def test_prompt_is_few_shot_with_programs_as_comments_and_code():
    messages = pal_messages("How many?")
    assert messages[0].role == "system" and "answer" in messages[0].content
    assert (
        messages[2].role == "assistant" and messages[2].content.startswith("# ") and "answer =" in messages[2].content
    )
    assert messages[-1].content == "How many?"


def test_extract_program_takes_the_fenced_block():
    assert extract_program(PROGRAM).startswith("# 3 boxes") and extract_program("answer = 1") == "answer = 1"


def test_pal_runs_the_program_in_the_sandbox(espalier, agent_plugin, shared_sandbox):
    agent_plugin.provider.script = [PROGRAM]
    response = espalier.client.post(
        "/api/agents/pal/runs",
        headers=espalier.headers("user"),
        json={"question": "3 boxes of 12 eggs, 5 break. How many are left?", "model": "scripted"},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["status"], result["answer"]) == ("ok", "31")
    [step] = result["trace"]
    assert step["action"] == "python" and step["extra"]["program"].startswith("# 3 boxes")
    assert step["extra"]["stdout"] == "eggs 36\n" and step["extra"]["value"] == 31
    assert step["thought"] == "3 boxes of 12 eggs, 5 broken" and step["extra"]["sandbox_ms"] > 0


def test_a_failing_program_is_fed_back_once(espalier, agent_plugin, shared_sandbox):
    agent_plugin.provider.script = ["answer = 1 / 0", "answer = 2 + 2"]
    result = espalier.platform.agent_runs.run("pal", "What is 2 + 2?", None, model="scripted")
    assert (result["status"], result["answer"], result["steps"]) == ("ok", "4", 2)
    assert "ZeroDivisionError" in result["trace"][0]["observation"]
    retry = agent_plugin.provider.prompts[1]
    assert retry[-2].content == "answer = 1 / 0" and "ZeroDivisionError" in retry[-1].content


def test_model_written_code_cannot_reach_the_server(espalier, agent_plugin, shared_sandbox, monkeypatch):
    monkeypatch.setenv("ESPALIER_SECRET_PROBE", "s3cret")
    agent_plugin.provider.script = [
        "import os\nanswer = [os.environ.get('ESPALIER_SECRET_PROBE'), open('/etc/passwd').read()]",
        "import os\nanswer = os.environ.get('ESPALIER_SECRET_PROBE') or 'none'",
    ]
    result = espalier.platform.agent_runs.run("pal", "leak", None, model="scripted")
    assert "s3cret" not in str(result) and "root:" not in str(result)
    assert result["answer"] == "none" and os.environ["ESPALIER_SECRET_PROBE"] == "s3cret"


@pytest.fixture
def espalier_settings(model_cache_dir):
    return {"model_cache_dir": model_cache_dir}


@pytest.mark.slow
def test_pal_end_to_end_on_the_default_model(espalier, shared_sandbox):
    result = espalier.platform.agent_runs.run("pal", "Tom has 3 apples and buys 4 more. How many apples?", None)
    # the 135M model may or may not write a working program: the loop must run the sandbox and keep the trace
    assert result["status"] in ("ok", "error", "time_limit") and result["trace"]
    assert all(step["action"] == "python" and "program" in step["extra"] for step in result["trace"])
    if result["status"] == "ok":
        assert result["answer"] == format_value(result["trace"][-1]["extra"]["value"])
