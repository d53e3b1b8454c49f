"""Console pages over real data: feedback browsing and guardrail flags (and the trainers that read
them), job curves from a real reward training run, agent runs streamed to the console, and the
overview's hourly figures computed in the database on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest

from espalier import hookimpl
from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.interface.usage import percentile
from tests.api.test_console import SCRIPT, EchoPlugin, sign_in, wait_for
from tests.support import SHARED_DATA

SHARED = SHARED_DATA


class TracerAgent:
    """Calls the real calculator, then records an observation full of markup: a scripted agent, for
    the streaming and escaping plumbing only (the browser test runs the real ReAct agent)."""

    name = "tracer"
    description = "adds two numbers with the calculator, then quotes a hostile page"
    tools = ["calculator"]
    needs_finish = False

    def run(self, question, *, context):
        observation = context.call_tool("calculator", {"expression": "2+3"})
        context.record_step(
            thought="I should add the numbers.",
            action="calculator",
            arguments={"expression": "2+3"},
            observation=observation,
        )
        time.sleep(0.3)  # the first step is on the wire before the second exists
        context.record_step(thought="Read the page.", action="lookup", arguments={"url": "x"}, observation=SCRIPT)
        return f"The sum is {observation.text}"


class DataPlugin(EchoPlugin):
    @hookimpl
    def register_agents(self, register):
        register(TracerAgent())


@pytest.fixture
def espalier_plugins():
    return [DataPlugin()]


def chat_and_rank(espalier, csrf, prompt):
    headers = {"X-CSRF-Token": csrf}
    shown = espalier.client.post(
        "/console/playground/chat", headers=headers, data={"model": "echo", "prompt": prompt, "n": "2"}
    )
    assert shown.status_code == 200, shown.text
    request_id = re.search(r'name="request_id" value="([^"]+)"', shown.text).group(1)
    ids = re.findall(r'name="rank_(cmp_[0-9a-f]+)"', shown.text)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', shown.text).group(1)
    ranked = espalier.client.post(
        "/console/playground/rank",
        headers=headers,
        data={"request_id": request_id, "idempotency_key": key, f"rank_{ids[0]}": "2", f"rank_{ids[1]}": "1"},
    )
    assert ranked.status_code == 200
    return request_id, ids


def test_feedback_is_browsed_and_filtered_and_a_request_shows_its_feedback(espalier):
    csrf = sign_in(espalier)
    client = espalier.client
    ranked_request, ids = chat_and_rank(espalier, csrf, SCRIPT)
    other_request, other_ids = chat_and_rank(espalier, csrf, "second prompt")
    thumbs = client.post(
        "/api/feedback",
        headers={**espalier.headers("operator"), "Idempotency-Key": "t-1"},
        json={"completion_id": other_ids[0], "thumbs": "down", "comment": "<b>bad</b> answer"},
    )
    assert thumbs.status_code == 201, thumbs.text

    def listed(**params):
        page = client.get("/console/feedback", params=params)
        assert page.status_code == 200, page.text
        return set(
            re.findall(r'href="/console/feedback/requests/([^"]+)"', page.text.split('id="flags-table"')[0])
        ), page.text

    everything, text = listed()
    assert everything == {ranked_request, other_request}
    assert SCRIPT not in text and "&lt;b&gt;bad&lt;/b&gt; answer" in text
    assert re.search(r"<b>2</b> preference pairs from feedback:\s*2 ranking", text)  # one pair per ranking
    assert listed(kind="ranking")[0] == {ranked_request, other_request}
    assert listed(kind="completion")[0] == {other_request}
    assert listed(labeler="test-operator")[0] == {other_request}
    assert listed(labeler="test-admin", kind="completion")[0] == set()
    assert listed(model="echo")[0] == {ranked_request, other_request} and listed(model="gpt-x")[0] == set()
    assert listed(request_id=ranked_request)[0] == {ranked_request}
    today = utcnow().date()
    assert listed(since=str(today), until=str(today))[0] == {ranked_request, other_request}
    assert listed(since=str(today + timedelta(days=1)))[0] == set()
    for params in (
        {"since": "yesterday"},
        {"since": str(today), "until": str(today - timedelta(days=1))},
        {"kind": "emoji"},
    ):
        refused = client.get("/console/feedback", params=params)
        assert refused.status_code == 400 and refused.json()["detail"], params

    detail = client.get(f"/console/feedback/requests/{ranked_request}")
    assert detail.status_code == 200
    assert SCRIPT not in detail.text and "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt; #1" in detail.text
    assert detail.text.count("test-admin: rank") == 2 and "rank 1" in detail.text and "rank 2" in detail.text
    assert client.get("/console/feedback/requests/req_nope").status_code == 404

    export = client.get("/console/feedback/pairs.jsonl")
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in export.text.splitlines()]
    api = client.get("/api/pairs/export", headers=espalier.headers("operator"))
    assert lines == [json.loads(line) for line in api.text.splitlines()] and len(lines) == 2
    assert {"prompt", "chosen", "rejected"} <= set(lines[0])
    assert "pairs.export" in [e.action for e in espalier.platform.audit.list(limit=5)]
    # and the overview counts the three records in this hour's feedback bar
    overview = client.get("/console").text
    chart = json.loads(
        re.search(r'<script type="application/json" id="usage-data">(.*?)</script>', overview, re.S).group(1)
    )
    assert chart["feedback"][-1] == 3 and sum(chart["feedback"]) == 3 and sum(chart["guardrail_blocks"]) == 0
    assert 'id="chart-feedback"' in overview and 'id="chart-guardrails"' in overview


def test_operators_flag_texts_for_the_guardrail_trainers(espalier):
    csrf = sign_in(espalier, "operator")
    client = espalier.client
    request_id, ids = chat_and_rank(espalier, csrf, "You are a worthless idiot")
    headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    flagged = client.post(
        "/console/feedback/flags",
        headers=headers,
        data={"request_id": request_id, "completion_id": ids[0], "category": "toxicity", "label": "1"},
    )
    assert flagged.status_code == 200 and "flagged toxic" in flagged.text, flagged.text
    prompt = client.post(
        "/console/feedback/flags",
        headers=headers,
        data={"request_id": request_id, "category": "injection", "label": "0"},
    )
    assert prompt.status_code == 200 and "not injection" in prompt.text
    flags = espalier.platform.guardrail_flags
    assert flags.examples("toxicity") == [{"text": "You are a worthless idiot #0", "label": 1}]
    assert flags.examples("injection") == [{"text": "You are a worthless idiot", "label": 0}]
    # flagging the same text again changes its label rather than adding a second example
    client.post(
        "/console/feedback/flags",
        headers=headers,
        data={"request_id": request_id, "completion_id": ids[0], "category": "toxicity", "label": "0"},
    )
    assert flags.examples("toxicity") == [{"text": "You are a worthless idiot #0", "label": 0}]
    detail = client.get(f"/console/feedback/requests/{request_id}").text
    assert "not toxic</span>" in detail and "not injection</span>" in detail
    # refused: no CSRF token, a completion of another request, an unknown category, a user's key
    no_token = client.post("/console/feedback/flags", data={"request_id": request_id, "category": "toxicity"})
    assert no_token.status_code == 403 and no_token.json()["code"] == "csrf_failed"
    other, other_ids = chat_and_rank(espalier, csrf, "another")
    wrong = client.post(
        "/console/feedback/flags",
        headers=headers,
        data={"request_id": request_id, "completion_id": other_ids[0], "category": "toxicity"},
    )
    assert wrong.status_code == 404
    assert (
        client.post(
            "/console/feedback/flags", headers=headers, data={"request_id": request_id, "category": "spam"}
        ).status_code
        == 400
    )
    assert len(flags.list()) == 2
    assert [e.action for e in espalier.platform.audit.list(limit=20)].count("guardrail.flag") == 3
    page = client.get("/console/feedback").text
    assert "You are a worthless idiot #0" in page.split('id="flags-table"')[1]


def labelled_lines(path: Path, count: int, seed: int = 0) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    positives = [r for r in rows if r["label"] in (1, "1", True, "toxic", "injection")]
    negatives = [r for r in rows if r not in positives]
    return rng.sample(positives, count // 2) + rng.sample(negatives, count // 2)


@pytest.mark.slow
def test_the_toxicity_trainer_learns_from_flags_and_records_its_loss_curve(espalier, tmp_path):
    csrf = sign_in(espalier, "operator")
    headers = {"X-CSRF-Token": csrf}
    flagged_texts = []
    for prompt, label in [("Shut up, you pathetic moron", "1"), ("Thanks, that was helpful", "0")]:
        request_id, ids = chat_and_rank(espalier, csrf, prompt)
        for completion_id in ids:
            espalier.client.post(
                "/console/feedback/flags",
                headers=headers,
                data={"request_id": request_id, "completion_id": completion_id, "category": "toxicity", "label": label},
            )
        flagged_texts += [f"{prompt} #0", f"{prompt} #1"]
    data = tmp_path / "toxicity.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": r["text"], "label": r["label"]}) + "\n"
            for r in labelled_lines(SHARED / "toxicity_train.jsonl", 24)
        )
    )
    job = espalier.platform.jobs.submit(
        "train:toxicity-classifier",
        {"data_path": str(data), "epochs": 1, "batch_size": 6, "max_length": 24, "max_examples": None},
    )
    wait_for(lambda: espalier.platform.jobs.get(job.id).status not in ("queued", "running"), timeout=240)
    done = espalier.platform.jobs.get(job.id)
    assert done.status == "succeeded", (done.error, [line.message for line in espalier.platform.jobs.logs(job.id)])
    card = done.result
    assert card["data"]["examples"] == 28 and "4 operator flags" in card["data"]["source"]
    assert any(
        "4 operator-flagged toxicity examples included" in line.message for line in espalier.platform.jobs.logs(job.id)
    )
    curve = espalier.client.get(f"/console/jobs/{job.id}/metrics").json()
    steps = [row["step"] for row in curve["metrics"]]
    assert curve["status"] == "succeeded" and not curve["active"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3  # every step of the run
    assert all(row["values"]["loss"] > 0 for row in curve["metrics"])
    # flags alone (both classes present) are enough to train on; without flags the file is needed
    only_flags = espalier.platform.jobs.submit(
        "train:toxicity-classifier", {"epochs": 1, "max_length": 16, "holdout_fraction": 0.5}
    )
    wait_for(lambda: espalier.platform.jobs.get(only_flags.id).status not in ("queued", "running"), timeout=240)
    assert espalier.platform.jobs.get(only_flags.id).status == "succeeded"
    assert espalier.platform.jobs.get(only_flags.id).result["data"]["examples"] == 4
    refused = espalier.platform.jobs.submit("train:toxicity-classifier", {"include_flags": False})
    wait_for(lambda: espalier.platform.jobs.get(refused.id).status == "failed")
    assert "job params need 'data_path'" in espalier.platform.jobs.get(refused.id).error


@pytest.mark.slow
def test_a_real_reward_training_run_draws_its_curve_on_the_job_page(espalier):
    csrf = sign_in(espalier, "operator")
    lines = (SHARED / "hh_pairs_train.jsonl").read_text().splitlines()[:24]
    imported = espalier.platform.pairs.import_lines(lines, source="hh-test")
    assert imported["added"] >= 20
    job = espalier.platform.jobs.submit(
        "train:reward",
        {"kind": "cross-encoder", "epochs": 1, "batch_size": 3, "max_length": 40, "include_imported": True},
    )
    seen_running = []

    def finished():
        answer = espalier.client.get(f"/console/jobs/{job.id}/metrics").json()
        if answer["active"] and answer["metrics"]:
            seen_running.append(len(answer["metrics"]))
        return not answer["active"]

    wait_for(finished, timeout=300)
    done = espalier.platform.jobs.get(job.id)
    assert done.status == "succeeded", (done.error, [line.message for line in espalier.platform.jobs.logs(job.id)])
    answer = espalier.client.get(f"/console/jobs/{job.id}/metrics").json()
    training = [row for row in answer["metrics"] if "loss" in row["values"]]
    assert [row["step"] for row in training] == list(range(1, len(training) + 1)) and len(training) >= 5
    assert {"loss", "loss_avg", "accuracy", "margin", "lr"} <= set(training[0]["values"])
    [final] = [row for row in answer["metrics"] if "eval_accuracy" in row["values"]]
    assert final["step"] == len(training) and final["values"]["eval_accuracy"] == done.result["metrics"]["accuracy"]
    assert seen_running, "the curve had points while the job was still running"
    # the API gives the same rows; after_step pages on
    api = espalier.client.get(f"/api/jobs/{job.id}/metrics", headers=espalier.headers("operator")).json()["metrics"]
    assert [(r["step"], r["values"]) for r in api] == [(r["step"], r["values"]) for r in answer["metrics"]]
    later = espalier.client.get(f"/console/jobs/{job.id}/metrics", params={"after_step": 3}).json()["metrics"]
    assert min(row["step"] for row in later) == 4
    page = espalier.client.get(f"/console/jobs/{job.id}")
    assert f'data-job-metrics="/console/jobs/{job.id}/metrics"' in page.text
    assert csrf


def read_events(response) -> list[tuple[str, dict]]:
    events = []
    for block in response.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_an_agent_run_streams_its_steps_to_the_console_and_its_trace_is_kept(espalier):
    csrf = sign_in(espalier, "operator")
    client = espalier.client
    page = client.get("/console/agents")
    assert page.status_code == 200 and 'value="tracer"' in page.text and 'value="react"' in page.text
    response = client.post(
        "/console/agents/tracer/runs",
        headers={"X-CSRF-Token": csrf},
        data={"question": "What is 2+3?", "model": "echo", "max_steps": "4"},
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = read_events(response)
    assert [kind for kind, _ in events] == ["start", "step", "step", "run"]
    run_id = events[0][1]["id"]
    first, second = events[1][1], events[2][1]
    assert first["action"] == "calculator" and first["observation"].strip() == "5"
    assert second["observation"] == SCRIPT  # data, as it came: the page writes it as text
    assert events[3][1]["status"] == "ok" and events[3][1]["answer"].startswith("The sum is 5")
    # the past runs list and the stored trace, escaped
    listing = client.get("/console/agents").text
    assert f'href="/console/agents/runs/{run_id}"' in listing
    trace = client.get(f"/console/agents/runs/{run_id}")
    assert trace.status_code == 200 and SCRIPT not in trace.text
    assert (
        "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in trace.text
        and "I should add the numbers." in trace.text
    )
    assert ("agent.run", "test-operator") in [(e.action, e.actor_name) for e in espalier.platform.audit.list(limit=5)]
    # refused before anything runs: no CSRF token, an unknown agent, an empty question
    assert client.post("/console/agents/tracer/runs", data={"question": "x"}).status_code == 403
    assert (
        client.post("/console/agents/nope/runs", headers={"X-CSRF-Token": csrf}, data={"question": "x"}).status_code
        == 404
    )
    assert (
        client.post("/console/agents/tracer/runs", headers={"X-CSRF-Token": csrf}, data={"question": ""}).status_code
        == 400
    )
    # an operator sees only their own key's runs; the admin's run is not theirs
    admin_run = espalier.platform.agent_runs.run("tracer", "admin question", None, model="echo")
    assert client.get(f"/console/agents/runs/{admin_run['id']}").status_code == 404


def test_hourly_figures_are_computed_in_the_database(database_url, tmp_path):
    """Several hours of requests with random latencies, guardrail events and feedback: every bucket
    matches a plain Python computation over the same rows, on SQLite and PostgreSQL."""
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.interface.guardrails.tables import GuardrailEvent
    from espalier.core.platform import Platform
    from espalier.core.sources.conversations.tables import ChatRequestRecord, Conversation
    from espalier.core.sources.feedback.tables import FeedbackRecord

    platform = Platform(Settings(home=tmp_path / "home", database_url=database_url), load_entry_points=False)
    platform.start(run_jobs=False)
    try:
        now = utcnow().replace(minute=30)
        rng = random.Random(7)
        expected: dict[int, list[float]] = {}
        failed: dict[int, int] = {}
        with session_scope(platform.engine) as session:
            session.add(Conversation(id="conv_h"))
            session.flush()
            for i in range(300):
                back = rng.randint(0, 5)
                latency = round(rng.lognormvariate(5, 0.8), 3)
                at = now.replace(minute=rng.randint(0, 59)) - timedelta(hours=back)
                status = "ok" if rng.random() > 0.1 else "failed"
                session.add(
                    ChatRequestRecord(
                        id=f"req_h{i}",
                        conversation_id="conv_h",
                        model="m",
                        latency_ms=latency,
                        prompt_tokens=3,
                        completion_tokens=back,
                        status=status,
                        created_at=at,
                    )
                )
                expected.setdefault(back, []).append(latency)
                failed[back] = failed.get(back, 0) + (status == "failed")
            session.flush()
            for _ in range(4):
                session.add(
                    GuardrailEvent(
                        direction="input",
                        route="chat",
                        policy="p",
                        scorer="s",
                        action="block",
                        at=now - timedelta(hours=2),
                    )
                )
            session.add(GuardrailEvent(direction="output", route="chat", policy="p", scorer="s", action="flag", at=now))
            for i in range(3):
                session.add(
                    FeedbackRecord(
                        id=f"fb_h{i}",
                        kind="completion",
                        request_id="req_h0",
                        key_id="k",
                        idempotency_key=f"i{i}",
                        body_sha256="x",
                        created_at=now - timedelta(hours=1),
                    )
                )
        buckets = platform.usage.hourly(8, now=now)
        assert len(buckets) == 8 and buckets[-1].hour == now.replace(minute=0, second=0, microsecond=0)
        for back in range(8):
            bucket = buckets[-1 - back]
            values = expected.get(back, [])
            assert bucket.requests == len(values), back
            assert bucket.completion_tokens == back * len(values) and bucket.failed == failed.get(back, 0)
            assert bucket.latency_p50_ms == percentile(values, 0.5), back
            assert bucket.latency_p95_ms == percentile(values, 0.95), back
        assert [b.guardrail_blocks for b in buckets][-3] == 4 and buckets[-1].guardrail_flags == 1
        assert buckets[-2].feedback == 3 and sum(b.feedback for b in buckets) == 3
        assert sum(b.failed for b in buckets) > 0
    finally:
        platform.close()
