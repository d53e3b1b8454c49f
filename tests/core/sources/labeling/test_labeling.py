"""Labeling tasks through the real app: generation as a job through the real chat service, leases,
no over-assignment, rankings as idempotent feedback, progress, agreement (tau and alpha), per-task
exclusion honoured by pairs, roles. The candidates come from a scripted model here (the control
flow); tests/core/sources/feedback/test_reward_loop.py runs the same flow on the real default model."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import select

from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.identity import Principal
from espalier.core.sources.conversations.tables import CompletionRecord
from espalier.core.sources.labeling.service import DEFAULT_INSTRUCTIONS
from espalier.core.sources.labeling.tables import LabelingAssignment, LabelingItem

from .echo import EchoPlugin


@pytest.fixture
def espalier_plugins():
    return [EchoPlugin()]


@pytest.fixture
def espalier_settings():
    return {"feedback_rate_limit_per_minute": 1000, "reward_retrain_after_pairs": 0}


def labeler(espalier, name: str) -> tuple[str, dict[str, str]]:
    key = espalier.platform.keys.create(name=name, role="user").key
    return key.split("_")[1], {"Authorization": f"Bearer {key}"}


def create_task(espalier, labelers: list[str], *, prompts=("Say hi", "Name a fruit", "Count to three"), **extra):
    body = {
        "name": "greetings",
        "prompts": list(prompts),
        "model": "echo",
        "n": 3,
        "rankings_required": 2,
        "labelers": labelers,
        **extra,
    }
    response = espalier.client.post("/api/labeling/tasks", json=body, headers=espalier.headers("operator"))
    assert response.status_code == 202, response.text
    task_id, job_id = response.json()["task"]["id"], response.json()["job_id"]
    wait_for_generation(espalier, job_id)
    return task_id


def wait_for_generation(espalier, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while espalier.platform.jobs.get(job_id).status not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    job = espalier.platform.jobs.get(job_id)
    assert job.status == "succeeded", job.error


def next_item(espalier, task_id, headers):
    response = espalier.client.get(f"/api/labeling/tasks/{task_id}/next", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["item"]


def rank(espalier, task_id, item, headers, ranks, flags=None, key="k1"):
    flags = flags or [False] * len(ranks)
    body = {
        "candidates": [
            {"completion_id": c["completion_id"], "rank": r, "unacceptable": f}
            for c, r, f in zip(item["candidates"], ranks, flags, strict=False)
        ]
    }
    return espalier.client.post(
        f"/api/labeling/tasks/{task_id}/items/{item['item_id']}/ranking",
        json=body,
        headers={**headers, "Idempotency-Key": key},
    )


def test_generated_items_are_leased_ranked_once_and_counted(espalier):
    a, a_headers = labeler(espalier, "ann")
    b, b_headers = labeler(espalier, "bob")
    c, c_headers = labeler(espalier, "cat")
    task_id = create_task(espalier, [a, b, c])
    task = espalier.client.get(f"/api/labeling/tasks/{task_id}", headers=espalier.headers("operator")).json()
    assert task["task"]["status"] == "ready" and task["task"]["instructions"] == DEFAULT_INSTRUCTIONS
    assert task["progress"]["items_generated"] == 3 and task["progress"]["rankings_total"] == 6

    first = next_item(espalier, task_id, a_headers)
    assert (
        first["position"] == 0
        and "ties" in first["instructions"].lower()
        and "facts may be checked" in first["instructions"].lower()
    )
    assert [c["text"] for c in first["candidates"]] == ["Say hi #0", "Say hi #1", "Say hi #2"]
    with session_scope(espalier.platform.engine) as session:  # each candidate is a stored completion
        assert session.get(CompletionRecord, first["candidates"][0]["completion_id"]).request_id == first["request_id"]
    assert next_item(espalier, task_id, a_headers)["item_id"] == first["item_id"]  # the open lease resumes
    assert next_item(espalier, task_id, b_headers)["item_id"] == first["item_id"]  # the second slot
    assert next_item(espalier, task_id, c_headers)["position"] == 1  # item 0 is fully assigned

    done = rank(espalier, task_id, first, a_headers, [1, 1, 3])
    assert done.status_code == 201, done.text
    replay = rank(espalier, task_id, first, a_headers, [1, 1, 3])
    assert replay.status_code == 200 and replay.json()["id"] == done.json()["id"]
    twice = rank(espalier, task_id, first, a_headers, [3, 2, 1], key="k2")
    assert twice.status_code == 409 and twice.json()["code"] == "already_ranked"
    bad = rank(espalier, task_id, first, b_headers, [1, 1, 2])
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_ranking"
    assert rank(espalier, task_id, first, b_headers, [1, 2, 3], flags=[False, False, True]).status_code == 201
    assert next_item(espalier, task_id, a_headers)["position"] == 1  # never the same item again

    progress = espalier.client.get(f"/api/labeling/tasks/{task_id}", headers=espalier.headers("operator")).json()[
        "progress"
    ]
    assert progress["items_done"] == 1 and progress["rankings_done"] == 2 and progress["fraction"] == round(2 / 6, 4)
    assert progress["labelers"][a] == {"done": 1, "leased": 1} and progress["labelers"][c] == {"done": 0, "leased": 1}
    stored = espalier.client.get(f"/api/feedback?request_id={first['request_id']}", headers=a_headers).json()[
        "feedback"
    ]
    assert len(stored) == 1 and stored[0]["payload"]["candidates"][0]["rank"] == 1


def test_an_expired_lease_goes_back_to_the_pool(espalier):
    a, a_headers = labeler(espalier, "ann")
    b, b_headers = labeler(espalier, "bob")
    task_id = create_task(espalier, [a, b], prompts=("One", "Two"), rankings_required=1)
    item = next_item(espalier, task_id, a_headers)
    assert next_item(espalier, task_id, b_headers)["item_id"] != item["item_id"]
    with session_scope(espalier.platform.engine) as session:
        session.execute(
            update(LabelingAssignment)
            .where(LabelingAssignment.item_id == item["item_id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    c, c_headers = labeler(espalier, "cat")
    espalier.client.post(
        f"/api/labeling/tasks/{task_id}/labelers", json={"key_ids": [c]}, headers=espalier.headers("operator")
    )
    assert next_item(espalier, task_id, c_headers)["item_id"] == item["item_id"]  # taken over
    late = rank(espalier, task_id, item, a_headers, [1, 2, 3])
    assert late.status_code == 409 and late.json()["code"] == "not_leased"
    assert rank(espalier, task_id, item, c_headers, [1, 2, 3]).status_code == 201
    assert next_item(espalier, task_id, a_headers) is None  # b holds the other item, this one is done


def test_concurrent_labelers_never_over_assign_an_item(espalier):
    keys = [labeler(espalier, f"l{i}")[0] for i in range(6)]
    task_id = create_task(espalier, keys, prompts=("One", "Two"))
    service, got, errors = espalier.platform.labeling, [], []
    barrier = threading.Barrier(len(keys))

    def ask(key_id):
        try:
            barrier.wait()
            got.append(service.next_item(task_id, Principal(key_id, key_id, "user")))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(k,)) for k in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_scope(espalier.platform.engine) as session:
        rows = list(session.exec(select(LabelingAssignment).where(LabelingAssignment.task_id == task_id)))
    per_item = {}
    for row in rows:
        per_item[row.item_id] = per_item.get(row.item_id, 0) + 1
    assert sorted(per_item.values()) == [2, 2] and sum(1 for item in got if item is None) == 2


def test_agreement_and_a_persisted_exclusion_that_pairs_honour(espalier):
    # The operator's own exclusion is under test here; the default one of labelers below consensus
    # (which would leave eve out already) is tested in test_feedback_api.py.
    espalier.platform.pairs.exclude_below_consensus = False
    people = [labeler(espalier, name) for name in ("ann", "bob", "eve")]
    task_id = create_task(espalier, [k for k, _ in people], prompts=("One", "Two"), rankings_required=3)
    for (key_id, headers), ranks in zip(people, ([1, 2, 3], [1, 2, 3], [3, 2, 1]), strict=False):
        for number in range(2):
            item = next_item(espalier, task_id, headers)
            assert rank(espalier, task_id, item, headers, ranks, key=f"{key_id}-{number}").status_code == 201
    operator = espalier.headers("operator")
    agreement = espalier.client.get(f"/api/labeling/tasks/{task_id}/agreement", headers=operator).json()
    eve = people[2][0]
    assert agreement["labelers"][eve]["below_consensus"] and agreement["labelers"][eve]["mean_tau"] == -1.0
    assert agreement["alpha"] is not None and agreement["alpha"] < agreement["labelers"][eve]["alpha_without"] == 1.0
    assert not agreement["labelers"][people[0][0]]["below_consensus"]
    assert espalier.client.get("/api/pairs", headers=operator).json()["pairs"] == 18
    excluded = espalier.client.put(
        f"/api/labeling/tasks/{task_id}/excluded-labelers", json={"key_ids": [eve]}, headers=operator
    )
    assert excluded.status_code == 200, excluded.text
    pairs = espalier.client.get("/api/pairs", headers=operator).json()
    assert pairs["pairs"] == 12 and all(p["labeler"] != eve for p in pairs["items"])
    assert all(p.labeler != eve for p in espalier.platform.pairs.all())  # what reward training reads
    again = espalier.client.get(f"/api/labeling/tasks/{task_id}/agreement", headers=operator).json()
    assert again["labelers"][eve]["excluded"] is True and again["excluded_labelers"] == [eve]


def test_roles_and_strangers_are_refused(espalier):
    a, a_headers = labeler(espalier, "ann")
    stranger, stranger_headers = labeler(espalier, "zed")
    body = {"name": "t", "prompts": ["x"], "model": "echo"}
    assert espalier.client.post("/api/labeling/tasks", json=body, headers=espalier.headers("user")).status_code == 403
    task_id = create_task(espalier, [a], prompts=("One",))
    for path in (f"/api/labeling/tasks/{task_id}/agreement",):
        assert espalier.client.get(path, headers=a_headers).status_code == 403
    put = espalier.client.put(
        f"/api/labeling/tasks/{task_id}/excluded-labelers", json={"key_ids": [a]}, headers=a_headers
    )
    assert put.status_code == 403
    assert espalier.client.get(f"/api/labeling/tasks/{task_id}", headers=stranger_headers).status_code == 404
    assert espalier.client.get(f"/api/labeling/tasks/{task_id}/next", headers=stranger_headers).status_code == 404
    assert espalier.client.get("/api/labeling/tasks", headers=stranger_headers).json() == {"tasks": []}
    assert [t["id"] for t in espalier.client.get("/api/labeling/tasks", headers=a_headers).json()["tasks"]] == [task_id]
    item = next_item(espalier, task_id, a_headers)
    # a stranger cannot rank it through the labeling route nor through plain ranking feedback
    assert rank(espalier, task_id, item, stranger_headers, [1, 2, 3]).status_code == 404
    plain = espalier.client.post(
        "/api/feedback/rankings",
        headers={**stranger_headers, "Idempotency-Key": "s"},
        json={
            "request_id": item["request_id"],
            "candidates": [
                {"completion_id": c["completion_id"], "rank": i + 1} for i, c in enumerate(item["candidates"])
            ],
        },
    )
    assert plain.status_code == 404
    no_key = rank(espalier, task_id, item, a_headers, [1, 2, 3], key="")
    assert no_key.status_code == 400 and no_key.json()["code"] == "idempotency_key_required"


def test_bad_tasks_are_refused_and_nothing_is_written(espalier):
    operator = espalier.headers("operator")
    cases = [
        ({"name": "t", "prompts": [], "model": "echo"}, "empty_task"),
        ({"name": "t", "prompts": ["x"], "model": "echo", "labelers": ["nokey"]}, "unknown_labeler"),
        ({"name": "t", "prompts": ["  "], "model": "echo"}, None),
        ({"name": "t", "prompts": ["x"], "model": "echo", "n": 1}, None),
        ({"name": "t", "prompts": ["x"], "model": "echo", "surprise": 1}, None),
    ]
    for body, code in cases:
        response = espalier.client.post("/api/labeling/tasks", json=body, headers=operator)
        assert response.status_code == 400, (body, response.text)
        if code:
            assert response.json()["code"] == code
    unknown = espalier.client.post(
        "/api/labeling/tasks", json={"name": "t", "prompts": ["x"], "model": "nope"}, headers=operator
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "model_not_found"
    assert espalier.client.get("/api/labeling/tasks", headers=operator).json() == {"tasks": []}
    assert espalier.platform.jobs.list() == []
    with session_scope(espalier.platform.engine) as session:
        assert session.exec(select(LabelingItem)).all() == []


def test_a_task_from_logged_conversations(espalier):
    operator = espalier.headers("operator")
    chat = espalier.client.post(
        "/v1/chat/completions",
        headers=operator,
        json={"model": "echo", "messages": [{"role": "user", "content": "Hello there"}]},
    )
    assert chat.status_code == 200, chat.text
    conversation = chat.json()["espalier"]["conversation_id"]
    a, a_headers = labeler(espalier, "ann")
    task_id = create_task(espalier, [a], prompts=(), conversation_ids=[conversation], rankings_required=1)
    item = next_item(espalier, task_id, a_headers)
    assert item["messages"] == [{"role": "user", "content": "Hello there"}]
    assert [c["text"] for c in item["candidates"]] == ["Hello there #0", "Hello there #1", "Hello there #2"]
    # another key's conversation is not the operator's to take (admins may)
    other = espalier.client.post(
        "/v1/chat/completions",
        headers=espalier.headers("user"),
        json={"model": "echo", "messages": [{"role": "user", "content": "private"}]},
    ).json()["espalier"]["conversation_id"]
    refused = espalier.client.post(
        "/api/labeling/tasks", headers=operator, json={"name": "t", "conversation_ids": [other], "model": "echo"}
    )
    assert refused.status_code == 404


def test_a_cancelled_generation_resumes_where_it_stopped(espalier):
    platform, operator = espalier.platform, espalier.headers("operator")
    platform.worker.stop()  # hold the job in the queue so it can be cancelled before it runs
    created = espalier.client.post(
        "/api/labeling/tasks", headers=operator, json={"name": "t", "prompts": ["One", "Two"], "model": "echo"}
    )
    task_id, job_id = created.json()["task"]["id"], created.json()["job_id"]
    busy = espalier.client.post(f"/api/labeling/tasks/{task_id}/generate", headers=operator)
    assert busy.status_code == 409 and busy.json()["code"] == "generating"
    assert espalier.client.post(f"/api/jobs/{job_id}/cancel", headers=operator).status_code == 200
    resumed = espalier.client.post(f"/api/labeling/tasks/{task_id}/generate", headers=operator)
    assert resumed.status_code == 202, resumed.text
    from espalier.core.infrastructure.jobs.service import JobWorker

    platform.worker = JobWorker(platform.jobs, threads=1)
    platform.worker.start()
    wait_for_generation(espalier, resumed.json()["job_id"])
    progress = espalier.client.get(f"/api/labeling/tasks/{task_id}", headers=operator).json()["progress"]
    assert progress["status"] == "ready" and progress["items_generated"] == 2
    assert (
        espalier.client.post(f"/api/labeling/tasks/{task_id}/generate", headers=espalier.headers("user")).status_code
        == 403
    )
