"""End to end on the real default model: a labeling task's candidates, two labelers (a tie, a flag),
pairs, a reward model, scoring, an automatic retrain from new feedback that becomes current only
when not worse."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlmodel import select

from espalier.api.testing import wait_job
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.sources.reward.tables import RewardModelRecord
from tests.support import SHARED_DATA

TINY = {"max_steps": 3, "batch_size": 4, "max_length": 64, "min_pairs": 4}


@pytest.fixture
def espalier_settings(model_cache_dir):
    return {
        "model_cache_dir": model_cache_dir,
        "reward_retrain_after_pairs": 6,
        "reward_retrain_params": TINY,
        "feedback_rate_limit_per_minute": 1000,
    }


def candidates(espalier, prompt: str, seed: int) -> tuple[str, list[str], list[str]]:
    response = espalier.client.post(
        "/v1/chat/completions",
        headers=espalier.headers("user"),
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": prompt}],
            "n": 3,
            "max_tokens": 12,
            "temperature": 1.0,
            "seed": seed,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return body["id"], body["espalier"]["completion_ids"], [c["message"]["content"] for c in body["choices"]]


def rank(espalier, role: str, request_id: str, ids: list[str], ranks: list[int], flags=(False, False, False), key=""):
    body = {
        "request_id": request_id,
        "candidates": [
            {"completion_id": cid, "rank": r, "unacceptable": f} for cid, r, f in zip(ids, ranks, flags, strict=False)
        ],
    }
    response = espalier.client.post(
        "/api/feedback/rankings",
        json=body,
        headers={**espalier.headers(role), "Idempotency-Key": f"{request_id}-{role}{key}"},
    )
    assert response.status_code == 201, response.text


def labeling_task_candidates(espalier, prompt: str, labelers: list[str], seed: int) -> str:
    """An operator's labeling task: one prompt, n=3 candidates from the real model, two rankings each."""
    response = espalier.client.post(
        "/api/labeling/tasks",
        headers=espalier.headers("operator"),
        json={
            "name": "sleep tips",
            "prompts": [prompt],
            "n": 3,
            "rankings_required": 2,
            "labelers": labelers,
            "max_tokens": 12,
            "temperature": 1.0,
            "seed": seed,
        },
    )
    assert response.status_code == 202, response.text
    job = wait_job(espalier.platform, response.json()["job_id"])
    assert job.status == "succeeded", job.error
    return response.json()["task"]["id"]


def label(espalier, task_id: str, headers: dict, ranks: list[int], flags=(False, False, False)) -> dict:
    item = espalier.client.get(f"/api/labeling/tasks/{task_id}/next", headers=headers).json()["item"]
    body = {
        "candidates": [
            {"completion_id": c["completion_id"], "rank": r, "unacceptable": f}
            for c, r, f in zip(item["candidates"], ranks, flags, strict=False)
        ]
    }
    path = f"/api/labeling/tasks/{task_id}/items/{item['item_id']}/ranking"
    for attempt in range(2):  # a retried POST with the same Idempotency-Key stores one ranking
        response = espalier.client.post(path, json=body, headers={**headers, "Idempotency-Key": f"{item['item_id']}-1"})
        assert response.status_code == (201 if attempt == 0 else 200), response.text
    return item


@pytest.mark.slow
def test_feedback_to_reward_model_to_automatic_retrain(espalier):
    platform, client = espalier.platform, espalier.client
    keys = {name: platform.keys.create(name=name, role="user").key for name in ("ann", "bob")}
    ann, bob = (keys[name].split("_")[1] for name in ("ann", "bob"))
    task_id = labeling_task_candidates(espalier, "Give me one tip for sleeping well.", [ann, bob], seed=7)
    # two labelers with user keys: one ties for first, the other flags a candidate unacceptable
    item = label(espalier, task_id, {"Authorization": f"Bearer {keys['ann']}"}, [1, 1, 3])
    again = label(espalier, task_id, {"Authorization": f"Bearer {keys['bob']}"}, [1, 2, 3], flags=(True, False, False))
    assert again["item_id"] == item["item_id"]
    texts = [c["text"] for c in item["candidates"]]
    assert len(set(texts)) == 3, f"the sampled candidates should differ: {texts}"
    progress = client.get(f"/api/labeling/tasks/{task_id}", headers=espalier.headers("operator")).json()["progress"]
    assert progress["items_done"] == 1 and progress["rankings_done"] == 2

    pairs = client.get("/api/pairs", headers=espalier.headers("operator")).json()
    got = sorted((p["labeler"], p["chosen"], p["rejected"]) for p in pairs["items"])
    expected = sorted(
        [
            (ann, texts[0], texts[2]),
            (ann, texts[1], texts[2]),  # the tie gives no pair
            (bob, texts[1], texts[0]),
            (bob, texts[2], texts[0]),  # the flagged candidate loses to all
            (bob, texts[1], texts[2]),
        ]
    )
    assert got == expected
    agreement = client.get(f"/api/labeling/tasks/{task_id}/agreement", headers=espalier.headers("operator")).json()
    assert set(agreement["labelers"]) == {ann, bob} and agreement["mean_tau"] is not None

    started = client.post("/api/reward/train", json={"params": TINY}, headers=espalier.headers("operator"))
    assert started.status_code == 202, started.text
    job = wait_job(platform, started.json()["job_id"])
    assert job.status == "succeeded", job.error
    assert job.result["version"] == 1 and job.result["current"] is True
    first = client.get("/api/reward/models", headers=espalier.headers("operator")).json()
    assert first["current"] == 1
    model = first["models"][0]
    assert model["pairs"] == 5 and len(model["data_sha256"]) == 64
    assert (
        0 <= model["metrics"]["accuracy"] <= 1 and "ece" in model["metrics"] and model["metrics"]["held_out_pairs"] >= 1
    )

    scored = client.post(
        "/api/reward/score",
        headers=espalier.headers("user"),
        json={
            "items": [
                {"prompt": "Give me one tip for sleeping well.", "completion": texts[1]},
                {"prompt": "Give me one tip for sleeping well.", "completion": texts[0]},
            ]
        },
    )
    assert scored.status_code == 200 and scored.json()["version"] == 1
    assert len(scored.json()["scores"]) == 2 and all(isinstance(s, float) for s in scored.json()["scores"])

    # New feedback: 6 new pairs reach the retrain threshold and a job starts by itself.
    request_id, ids, texts = candidates(espalier, "Name a healthy breakfast.", seed=11)
    rank(espalier, "operator", request_id, ids, [1, 2, 3])
    assert platform.jobs.list(kind="train:reward", status="queued") == []
    rank(espalier, "admin", request_id, ids, [2, 1, 3])  # broadly agreeing: nobody is below consensus
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(platform.jobs.list(kind="train:reward")) < 2:
        time.sleep(0.2)
    auto = platform.jobs.list(kind="train:reward")[0]
    assert auto.params.get("auto") is True
    auto = wait_job(platform, auto.id)
    assert auto.status == "succeeded", auto.error
    second = platform.reward_models.get("2")
    assert second.pairs == 11
    # The retrain refined the current version with the settings it was trained with.
    assert auto.result["warm_start"] == platform.reward_models.get("1").path
    card = json.loads((Path(second.path) / "reward_card.json").read_text())
    assert card["warm_start"] == auto.result["warm_start"]
    assert {k: card["settings"][k] for k in TINY} == TINY
    assert any("warm start from" in line.message for line in platform.jobs.logs(auto.id))
    same_holdout = second.metrics["current_accuracy_same_holdout"]
    assert second.is_current == (second.metrics["accuracy"] >= same_holdout), second.decision
    assert platform.reward_models.current().version == (2 if second.is_current else 1)

    # Best-of-n serving: an alias answers with the candidate the current reward model prefers.
    from espalier.core.infrastructure.contracts import ChatMessage, GenerationParams, ModelSpec

    platform.models.add(
        ModelSpec(name="tips-bon", provider="best-of-n", source="smollm2-135m-instruct", options={"n": 3})
    )
    question = "Give me one tip for sleeping well."
    served = client.post(
        "/v1/chat/completions",
        headers=espalier.headers("user"),
        json={
            "model": "tips-bon",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 10,
            "temperature": 1.0,
            "seed": 5,
        },
    )
    assert served.status_code == 200, served.text
    base, _ = platform.models.load("smollm2-135m-instruct")
    pool = base.generate([ChatMessage("user", question)], GenerationParams(max_tokens=10, temperature=1.0, n=3, seed=5))
    rewards = platform.reward_models.scorer(platform.reward_models.current()).score(
        ["\n\nHuman: " + question + "\n\nAssistant:"] * 3, [g.text for g in pool]
    )
    assert served.json()["choices"][0]["message"]["content"] == pool[rewards.index(max(rewards))].text

    # A worse candidate never becomes current.
    current = platform.reward_models.current()
    worse = platform.reward_models.register(
        path=current.path,
        base_model="x",
        data_sha256="0" * 64,
        pairs=11,
        metrics={"accuracy": 0.0},
        current_accuracy_same_holdout=1.0,
        job_id=None,
    )
    assert worse.status == "rejected" and not worse.is_current
    assert platform.reward_models.current().id == current.id
    with session_scope(platform.engine) as session:
        assert len(session.exec(select(RewardModelRecord).where(RewardModelRecord.is_current == True)).all()) == 1  # noqa: E712


@pytest.mark.slow
def test_a_cancelled_training_run_saves_no_model(espalier):
    lines = SHARED_DATA / "hh_pairs_train.jsonl"
    platform = espalier.platform
    platform.pairs.import_lines(lines.read_text().splitlines()[:200], source="hh", skip_invalid=True)
    started = espalier.client.post(
        "/api/reward/train",
        json={"params": {"epochs": 5, "batch_size": 4, "max_length": 64}},
        headers=espalier.headers("operator"),
    )
    job_id = started.json()["job_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and platform.jobs.get(job_id).progress == 0:
        time.sleep(0.2)
    assert espalier.client.post(f"/api/jobs/{job_id}/cancel", headers=espalier.headers("operator")).status_code == 200
    job = wait_job(platform, job_id)
    assert job.status == "cancelled"
    assert platform.reward_models.list() == []


@pytest.mark.slow
def test_feedback_that_arrives_during_a_training_starts_the_next_when_it_ends(espalier):
    """The retrain trigger passes over feedback while a training runs (one at a time); the run's end
    looks again, so the waiting pairs start the next training without another submission."""
    from .helpers import stored_request

    platform = espalier.platform
    lines = (SHARED_DATA / "hh_pairs_train.jsonl").read_text().splitlines()[:40]
    platform.pairs.import_lines(lines, source="hh", skip_invalid=True)
    started = espalier.client.post(
        "/api/reward/train",
        json={"params": {"epochs": 3, "batch_size": 4, "max_length": 64}},
        headers=espalier.headers("operator"),
    )
    first = started.json()["job_id"]
    deadline = time.monotonic() + 120
    while platform.jobs.get(first).progress == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    owner = espalier.keys["user"].split("_")[1]
    for number in range(3):  # 3 rankings of 3 candidates: 9 new pairs, past the threshold of 6
        request_id, ids = stored_request(platform, owner, f"Question {number}?", ["one", "two", "three"])
        rank(espalier, "operator", request_id, ids, [1, 2, 3])
    assert platform.jobs.get(first).status == "running", "the training ended before the feedback arrived"
    assert len(platform.jobs.list(kind="train:reward")) == 1  # nothing queued beside a running training
    assert wait_job(platform, first).status == "succeeded"
    deadline = time.monotonic() + 30
    while len(platform.jobs.list(kind="train:reward")) < 2:
        assert time.monotonic() < deadline, "no retrain followed the training"
        time.sleep(0.2)
    follow = platform.jobs.list(kind="train:reward")[0]
    assert follow.id != first and follow.params.get("auto") is True
    espalier.client.post(f"/api/jobs/{follow.id}/cancel", headers=espalier.headers("operator"))
    wait_job(platform, follow.id)
