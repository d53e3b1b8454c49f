"""Feedback starts a reward retrain whatever the door it came in by: the API, the console's
playground, the console's labeling queue. The feedback service announces what it stored, so no
entry point can forget to; the pair store announces imports the same way (the API's and the
CLI's imports go through it; the CLI's audit record is checked in tests/api/test_cli.py).

The candidates come from a scripted model (the control flow is under test here); the retrain
itself on the real model is tests/core/sources/feedback/test_reward_loop.py.
"""

from __future__ import annotations

import re
import time

import pytest

from espalier import hookimpl
from espalier.plugins.reward_models.trainer import JOB_KIND
from tests.api.test_console import EchoPlugin, labeling_task, sign_in

from .helpers import key_id, stored_request


class Heard:
    """Records every on_feedback event, as any third-party plugin would receive it."""

    def __init__(self) -> None:
        self.events = []

    @hookimpl
    def on_feedback(self, event):
        self.events.append(event)


@pytest.fixture
def heard():
    return Heard()


@pytest.fixture
def espalier_plugins(heard):
    return [EchoPlugin(), heard]


@pytest.fixture
def espalier_settings():
    # one ranking of three candidates is three pairs: enough to trigger a retrain
    return {
        "feedback_rate_limit_per_minute": 1000,
        "reward_retrain_after_pairs": 3,
        "reward_retrain_params": {"max_steps": 1, "batch_size": 2, "max_length": 32, "min_pairs": 2},
    }


def automatic_retrains(platform, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [job for job in platform.jobs.list(kind=JOB_KIND) if job.params.get("auto")]
        if jobs or time.monotonic() > deadline:
            for job in jobs:  # the trigger is under test, not the training: stop it
                platform.jobs.cancel(job.id)
            return jobs


def wait_heard(heard: Heard, kind: str, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while not [e for e in heard.events if e.kind == kind] and time.monotonic() < deadline:
        time.sleep(0.05)
    return [e for e in heard.events if e.kind == kind]


def test_a_ranking_sent_to_the_api_starts_a_retrain(espalier, heard):
    request_id, ids = stored_request(espalier.platform, key_id(espalier, "user"), "Say hi", ["a", "b", "c"])
    body = {
        "request_id": request_id,
        "candidates": [{"completion_id": c, "rank": r} for c, r in zip(ids, [1, 2, 3], strict=True)],
    }
    response = espalier.client.post(
        "/api/feedback/rankings", json=body, headers={**espalier.headers("user"), "Idempotency-Key": "api-1"}
    )
    assert response.status_code == 201, response.text
    [event] = wait_heard(heard, "ranking")
    assert event.feedback_id == response.json()["id"]
    [job] = automatic_retrains(espalier.platform)
    assert job.params["pairs_at_submit"] == 3


def test_a_ranking_made_in_the_console_playground_starts_a_retrain(espalier, heard):
    csrf = sign_in(espalier, "operator")
    client = espalier.client
    shown = client.post(
        "/console/playground/chat",
        headers={"X-CSRF-Token": csrf},
        data={"model": "echo", "prompt": "Name a tree", "n": "3"},
    )
    assert shown.status_code == 200, shown.text
    request_id = re.search(r'name="request_id" value="([^"]+)"', shown.text).group(1)
    ids = re.findall(r'name="rank_(cmp_[0-9a-f]+)"', shown.text)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', shown.text).group(1)
    assert len(ids) == 3
    form = {
        "request_id": request_id,
        "idempotency_key": key,
        **{f"rank_{c}": str(r) for c, r in zip(ids, [3, 1, 2], strict=True)},
    }
    ranked = client.post("/console/playground/rank", headers={"X-CSRF-Token": csrf}, data=form)
    assert ranked.status_code == 200, ranked.text
    [event] = wait_heard(heard, "ranking")
    assert event.kind == "ranking" and len(event.payload["candidates"]) == 3
    [job] = automatic_retrains(espalier.platform)
    assert job.params["pairs_at_submit"] == 3
    # a double submit of the same form is stored once and announced once
    again = client.post("/console/playground/rank", headers={"X-CSRF-Token": csrf}, data=form)
    assert again.status_code == 200
    time.sleep(0.3)
    assert len([e for e in heard.events if e.kind == "ranking"]) == 1


def test_a_ranking_from_the_console_labeling_queue_starts_a_retrain(espalier, heard):
    operator_id = espalier.keys["operator"].split("_")[1]
    task_id = labeling_task(espalier, [operator_id])
    csrf = sign_in(espalier, "operator")
    queue = espalier.client.get(f"/console/labeling/{task_id}/label")
    assert queue.status_code == 200, queue.text
    ids = re.findall(r'name="rank_(cmp_[0-9a-f]+)"', queue.text)
    item_id = re.search(r"/items/(li_[0-9a-f]+)/rank", queue.text).group(1)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', queue.text).group(1)
    form = {"idempotency_key": key, **{f"rank_{c}": str(r) for c, r in zip(ids, [2, 3, 1], strict=True)}}
    saved = espalier.client.post(
        f"/console/labeling/{task_id}/items/{item_id}/rank", data=form, headers={"X-CSRF-Token": csrf}
    )
    assert saved.status_code == 200, saved.text
    [event] = wait_heard(heard, "ranking")
    assert event.api_key_id == operator_id
    [job] = automatic_retrains(espalier.platform)
    assert job.params["pairs_at_submit"] == 3


def test_an_import_of_pairs_is_announced_and_audited(espalier, heard):
    lines = [f'{{"prompt": "q{i}", "chosen": "good {i}", "rejected": "bad {i}"}}' for i in range(4)]
    result = espalier.platform.pairs.import_lines(lines, source="cli-file.jsonl")
    assert result["added"] == 4
    [event] = wait_heard(heard, "import")
    assert event.feedback_id == "cli-file.jsonl" and event.payload["added"] == 4 and event.api_key_id is None
    [entry] = espalier.platform.audit.list(action="pairs.import")
    assert entry.target == "cli-file.jsonl" and entry.details["added"] == 4
    # an import is an operator's deliberate act: it is heard, and training stays the operator's call
    assert automatic_retrains(espalier.platform, timeout=0.5) == []
