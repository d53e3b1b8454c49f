"""ReAct control flow with a scripted model (malformed actions, unknown tools, limits), the API
around runs (traces, streaming, ownership), and one end-to-end run on the real default model."""

from __future__ import annotations

import json
import time

import pytest

from espalier.plugins.react.parsing import parse_step


def run(espalier, role="user", **body):
    body.setdefault("model", "scripted")
    response = espalier.client.post("/api/agents/react/runs", json=body, headers=espalier.headers(role))
    assert response.status_code == 200, response.text
    return response.json()


# Parsing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "tool", "argument_text", "arguments"),
    [
        ("Thought: add\nAction: calculator[2 + 3]", "calculator", "2 + 3", None),
        ("Thought: x\nAction: finish[the Seine] and then I rambled", "finish", "the Seine", None),
        (
            'Thought: x\nAction: {"tool": "calculator", "arguments": {"expression": "1"}}',
            "calculator",
            None,
            {"expression": "1"},
        ),
        ('Thought: x\nAction: sql[{"query": "SELECT 1"}]', "sql", None, {"query": "SELECT 1"}),
        ("Thought: nested\nAction: calculator[(2 * [3])]", "calculator", "(2 * [3])", None),
    ],
)
def test_parse_step_reads_bracket_and_json_actions(text, tool, argument_text, arguments):
    parsed = parse_step(text)
    assert (parsed.tool, parsed.argument_text, parsed.arguments, parsed.problem) == (
        tool,
        argument_text,
        arguments,
        None,
    )


@pytest.mark.parametrize("text", ["Thought: I am not sure", "Thought: x\nAction: calculator 2+3", 'Action: {"tool": 1'])
def test_parse_step_reports_malformed_actions(text):
    assert parse_step(text).problem is not None


# The loop -----------------------------------------------------------------------------------------
def test_tool_then_finish_stores_the_full_trace(espalier, agent_plugin):
    agent_plugin.provider.script = [
        " I need to multiply.\nAction: calculator[17 * 3.25]",
        " The product is known.\nAction: finish[55.25]",
    ]
    result = run(espalier, question="What is 17 times 3.25?")
    assert (result["status"], result["answer"], result["steps"]) == ("ok", "55.25", 2)
    first, last = result["trace"]
    assert (first["thought"], first["action"], first["arguments"]) == (
        "I need to multiply.",
        "calculator",
        {"expression": "17 * 3.25"},
    )
    assert first["observation"] == "55.25" and first["led_by"] is None and first["tool_ms"] >= 0
    assert (last["action"], last["led_by"]) == ("finish", 0)
    # the second prompt shows the observation quoted, after the model's own parsed step
    second_prompt = agent_plugin.provider.prompts[1][-1].content
    assert second_prompt.endswith("Action: calculator[17 * 3.25]\nObservation:\n| 55.25\nThought:")
    stored = espalier.client.get(f"/api/agents/runs/{result['id']}", headers=espalier.headers("user")).json()
    assert stored["trace"] == json.loads(json.dumps(result["trace"]))


def test_prompt_defines_the_action_space_and_has_worked_examples(espalier, agent_plugin):
    agent_plugin.provider.script = ["done\nAction: finish[ok]"]
    run(espalier, question="Q?", tools=["calculator"])
    system, user = agent_plugin.provider.prompts[0]
    assert "- calculator[<expression>]" in system.content and "- finish[<answer>]" in system.content
    assert "- search[" not in system.content  # only the run's tools are offered
    assert "Observation:\n| 55.25" in user.content and user.content.endswith("Question: Q?\nThought:")


def test_malformed_and_unknown_actions_become_observations(espalier, agent_plugin):
    agent_plugin.provider.script = [
        " hmm, no action here",
        " use a shell\nAction: shell[rm -rf /]",
        " python is not allowed in this run\nAction: python[print(1)]",
        " wrong arguments\nAction: calculator[import os]",
        " fine\nAction: finish[7]",
    ]
    result = run(espalier, question="What is 3 + 4?", tools=["calculator"])
    assert (result["status"], result["answer"]) == ("ok", "7")
    trace = result["trace"]
    assert trace[0]["extra"]["invalid"] and "no Action line" in trace[0]["observation"]
    assert "'shell' is not an available action" in trace[1]["observation"]
    assert "'python' is not an available action" in trace[2]["observation"]
    assert trace[3]["is_error"] and "not an arithmetic expression" in trace[3]["observation"]
    prompt = agent_plugin.provider.prompts[2][-1].content
    assert "Invalid action: 'shell' is not an available action" in prompt


def test_step_limit_stops_the_run(espalier, agent_plugin):
    agent_plugin.provider.script = lambda messages: " again\nAction: calculator[1 + 1]"
    result = run(espalier, question="Loop forever", max_steps=3)
    assert (result["status"], result["answer"], result["steps"]) == ("step_limit", None, 3)
    assert "step limit" in result["error"]


def test_time_limit_stops_the_run(espalier, agent_plugin):
    def slow(messages):
        time.sleep(0.4)
        return " wait\nAction: calculator[2 * 2]"

    agent_plugin.provider.script = slow
    started = time.monotonic()
    result = run(espalier, question="Slow", timeout_s=1.0, max_steps=50)
    assert result["status"] == "time_limit" and time.monotonic() - started < 3


def test_a_failing_model_is_an_error_status_not_a_500(espalier, agent_plugin):
    def broken(messages):
        raise RuntimeError("GPU on fire")

    agent_plugin.provider.script = broken
    result = run(espalier, question="anything")
    assert result["status"] == "error" and "RuntimeError" in result["error"] and "fire" not in result["error"]


# Requests, ownership, listing, streaming -----------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"question": ""}, 400),
        ({"question": "q", "tools": ["nope"]}, 400),
        ({"question": "q", "model": "no-such-model"}, 404),
        ({"question": "q", "max_steps": 0}, 400),
        ({"question": "q", "unexpected": 1}, 400),
    ],
)
def test_bad_run_requests_are_4xx(espalier, body, status):
    response = espalier.client.post("/api/agents/react/runs", json=body, headers=espalier.headers("user"))
    assert response.status_code == status, response.text


def test_unknown_agent_is_404(espalier):
    response = espalier.client.post("/api/agents/nope/runs", json={"question": "q"}, headers=espalier.headers("user"))
    assert response.status_code == 404 and "react" in response.text


def test_runs_are_listed_per_key(espalier, agent_plugin):
    agent_plugin.provider.script = lambda messages: " ok\nAction: finish[yes]"
    mine = run(espalier, "user", question="mine")
    theirs = run(espalier, "operator", question="theirs")
    listed = espalier.client.get("/api/agents/runs", headers=espalier.headers("user")).json()["runs"]
    assert [r["id"] for r in listed] == [mine["id"]] and "trace" not in listed[0]
    hidden = espalier.client.get(f"/api/agents/runs/{theirs['id']}", headers=espalier.headers("user"))
    assert hidden.status_code == 404
    everyone = espalier.client.get("/api/agents/runs?all=true", headers=espalier.headers("admin")).json()["runs"]
    assert {r["id"] for r in everyone} == {mine["id"], theirs["id"]}
    # all=true from a non-admin still shows only its own
    assert len(espalier.client.get("/api/agents/runs?all=true", headers=espalier.headers("user")).json()["runs"]) == 1


def test_agents_are_listed(espalier):
    agents = {
        a["name"]: a for a in espalier.client.get("/api/agents", headers=espalier.headers("user")).json()["agents"]
    }
    assert agents["react"]["tools"] == ["search", "lookup", "calculator", "finish"] and agents["pal"]["tools"] == [
        "python"
    ]


def test_steps_stream_as_server_sent_events(espalier, agent_plugin):
    agent_plugin.provider.script = [" add\nAction: calculator[2 + 2]", " done\nAction: finish[4]"]
    with espalier.client.stream(
        "POST",
        "/api/agents/react/runs",
        headers=espalier.headers("user"),
        json={"question": "2+2?", "model": "scripted", "stream": True},
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())
    events = [
        (block.split("\n")[0][len("event: ") :], json.loads(block.split("\n", 1)[1][len("data: ") :]))
        for block in body.strip().split("\n\n")
    ]
    assert [name for name, _ in events] == ["start", "step", "step", "run"]
    assert events[1][1]["observation"] == "4" and events[3][1]["answer"] == "4"
    assert events[3][1]["id"] == events[0][1]["id"]


# The real default model -----------------------------------------------------------------------------
@pytest.fixture
def espalier_settings(model_cache_dir):
    return {"model_cache_dir": model_cache_dir}


@pytest.mark.slow
def test_react_runs_end_to_end_on_the_default_model(espalier, agent_plugin):
    agent_plugin.retriever.collections["hotpot"] = [
        ("c1", "The Seine is a river that flows through Paris."),
        ("c2", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    ]
    response = espalier.client.post(
        "/api/agents/react/runs",
        headers=espalier.headers("user"),
        json={
            "question": "Which river flows through the city of the Eiffel Tower?",
            "collection": "hotpot",
            "model": "smollm2-135m-instruct",
            "max_steps": 2,
            "tools": ["search", "lookup"],
        },
    )
    assert response.status_code == 200, response.text
    result = response.json()
    # a 135M model rarely answers well: the loop must still run, end, and keep its trace
    assert result["status"] in ("ok", "step_limit") and 1 <= result["steps"] <= 2
    assert all(step["raw"] for step in result["trace"]) and all(step["model_ms"] > 0 for step in result["trace"])
    assert {s["action"] for s in result["trace"]} <= {"search", "lookup", "finish", None}
    stored = espalier.platform.agent_runs.get(result["id"], None)
    assert stored["model"] == "smollm2-135m-instruct" and len(stored["trace"]) == result["steps"]


def test_worked_examples_only_use_the_runs_tools():
    from espalier.plugins.react.prompt import EXAMPLES, build_messages

    class Search:
        name, description, parameters = (
            "search",
            "Search.",
            {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        )

    class Calculator:
        name, description, parameters = (
            "calculator",
            "Maths.",
            {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
        )

    search_only = build_messages("Who?", {"search": Search(), "finish": Search()}, [])[-1].content
    assert "calculator[" not in search_only and "search[river through Paris]" in search_only
    both = build_messages("Who?", {"search": Search(), "calculator": Calculator()}, [])[-1].content
    assert "calculator[17 * 3.25]" in both and "search[river through Paris]" in both
    assert (
        "Question: What is the total" in build_messages("Who?", {"lookup": Search()}, [])[-1].content
    )  # none fit: all kept
    assert EXAMPLES.count("Question:") == 2
