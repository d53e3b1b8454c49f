"""``espalier guardrails train`` and ``espalier eval toxicity`` as real processes; the same
training through the jobs API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import select

from espalier.api.testing import build_harness
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.settings import Settings
from espalier.core.platform import Platform
from espalier.core.sources.learning import policy
from espalier.core.sources.learning.gate import evaluation_scorer
from espalier.core.sources.learning.tables import EvaluationRecord
from tests.support import SHARED_DATA

MODEL = "smollm2-135m-instruct"


DATA_DIR = SHARED_DATA


def data_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        pytest.fail(f"{path} is missing; these tests read the shared data beside the repository")
    return path


def run(*args, home, env=None):
    environment = {
        **os.environ,
        "ESPALIER_HOME": str(home),
        "ESPALIER_LOG_JSON": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "COLUMNS": "200",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "espalier.api.cli", *args], env=environment, capture_output=True, text=True, timeout=600
    )


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


BAD_DATA = {
    "empty": ([], "has no examples"),
    "bad-label": (
        [{"text": "hello", "label": "maybe"}, {"text": "bye", "label": 0}],
        "label 'maybe' is not understood",
    ),
    "one-class": ([{"text": f"nice words {i}", "label": 0} for i in range(5)], "all 5 examples are negative"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_train_command_refuses_bad_data_with_a_clear_error(tmp_path, case):
    rows, message = BAD_DATA[case]
    data = write_jsonl(tmp_path / f"{case}.jsonl", rows)
    done = run("guardrails", "train", "--data", str(data), home=tmp_path / "home")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in " ".join(done.stderr.split()), done.stderr
    assert not (tmp_path / "home" / "artifacts" / "guardrails" / "toxicity.json").exists()


def test_train_command_refuses_a_missing_file_and_an_unknown_kind(tmp_path):
    missing = run("guardrails", "train", "--data", str(tmp_path / "nope.jsonl"), home=tmp_path / "home")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0}])
    kind = run("guardrails", "train", "--data", str(data), "--kind", "spam", home=tmp_path / "home")
    assert kind.returncode == 2 and "--kind must be one of toxicity, injection" in kind.stderr


def wait_for(platform, job_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = platform.jobs.get(job_id)
        if job.status not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_training_job_with_bad_data_fails_with_the_reason(tmp_path):
    harness = build_harness(tmp_path / "home", [])
    espalier = next(harness)
    try:
        outside = espalier.client.post(
            "/api/jobs",
            headers=espalier.headers("operator"),
            json={"kind": "train:toxicity-classifier", "params": {"data_path": str(tmp_path / "x.jsonl")}},
        )
        assert outside.status_code == 400 and outside.json()["code"] == "data_path_outside_home", outside.text
        data = write_jsonl(tmp_path / "home" / "one-class.jsonl", BAD_DATA["one-class"][0])
        response = espalier.client.post(
            "/api/jobs",
            headers=espalier.headers("operator"),
            json={"kind": "train:toxicity-classifier", "params": {"data_path": str(data)}},
        )
        assert response.status_code == 201, response.text
        job = wait_for(espalier.platform, response.json()["id"])
        assert job.status == "failed" and "all 5 examples are negative" in job.error
        no_path = espalier.client.post(
            "/api/jobs", headers=espalier.headers("operator"), json={"kind": "train:toxicity-classifier", "params": {}}
        )
        job = wait_for(espalier.platform, no_path.json()["id"])
        assert job.status == "failed" and "need 'data_path'" in job.error
    finally:
        harness.close()


@pytest.mark.slow
def test_train_command_records_a_model_the_detoxify_scorer_serves(tmp_path):
    home = tmp_path / "home"
    # 300 real rows, both classes (a fifth is held out for the card's metrics), to stay quick.
    rows = [json.loads(line) for line in data_file("toxicity_train.jsonl").read_text().splitlines() if line.strip()]
    subset = [r for r in rows if r["label"] in (1, "1", True, "toxic")][:150] + [
        r for r in rows if r["label"] in (0, "0", False, "clean")
    ][:150]
    data = write_jsonl(tmp_path / "toxicity-300.jsonl", subset)
    done = run("guardrails", "train", "--data", str(data), "--max-length", "32", home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ROC AUC" in done.stdout and "served as the toxicity model" in done.stdout
    record = json.loads((home / "artifacts" / "guardrails" / "toxicity.json").read_text())
    assert (
        record["kind"] == "toxicity"
        and record["data"]["trained_on"] == 240
        and record["metrics"]["toxicity"]["roc_auc"] > 0.5
    )
    # The job is visible like any other, and the next start serves the model as 'detoxify'.
    platform = Platform(Settings(home=home), load_entry_points=False).start(run_jobs=False)
    try:
        (job,) = platform.jobs.list(kind="train:toxicity-classifier")
        assert job.status == "succeeded" and job.created_by == "cli"
        scorer = platform.guardrails.get("detoxify")
        assert str(scorer.checkpoint) == record["artifacts"]["checkpoint"]
        toxic, clean = scorer.score(["you are a worthless stupid bitch", "what a lovely morning"], direction="input")
        assert toxic.scores["toxicity"] > clean.scores["toxicity"]
    finally:
        platform.close()
    # A judge trained on other rows is recorded apart: it judges evaluations, guards nothing, and is
    # never what a policy update's toxicity penalty uses.
    others = [r for r in rows if r["label"] in (1, "1", True, "toxic")][150:300] + [
        r for r in rows if r["label"] in (0, "0", False, "clean")
    ][150:300]
    judge_data = write_jsonl(tmp_path / "toxicity-judge.jsonl", others)
    done = run("guardrails", "train", "--data", str(judge_data), "--max-length", "32", "--judge", home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the judge of evaluations" in done.stdout
    judge_record = json.loads((home / "artifacts" / "guardrails" / "toxicity-judge.json").read_text())
    assert judge_record["artifacts"]["checkpoint"] != record["artifacts"]["checkpoint"]
    assert json.loads((home / "artifacts" / "guardrails" / "toxicity.json").read_text()) == record
    platform = Platform(Settings(home=home), load_entry_points=False).start(run_jobs=False)
    try:
        judge = platform.guardrails.get("judge")
        assert str(judge.checkpoint) == judge_record["artifacts"]["checkpoint"]
        assert platform.guardrails.choose(None, "ESPALIER_EVALUATION_SCORER").name == "detoxify"
        assert evaluation_scorer(platform).name == "judge"
        assert evaluation_scorer(platform, "profanity").name == "profanity"
        assert all(p.scorer != "judge" for p in platform.guardrail_service.policies)
        settings = policy.settings_from({"prompts": ["Hello there"], "toxicity_weight": 1.0})
        assert settings.toxicity_scorer is None
        assert policy.toxicity_scorer_for(platform, settings) == "detoxify"
    finally:
        platform.close()
    # An explicitly configured checkpoint wins over the recorded one.
    settings = Settings(home=home, toxicity_checkpoint=tmp_path / "missing.ckpt")
    with pytest.raises(Exception, match="missing.ckpt does not exist"):
        _ = Platform(settings, load_entry_points=False).guardrails


@pytest.mark.slow
def test_eval_toxicity_compares_models_and_stores_a_record(tmp_path, model_cache_dir):
    home = tmp_path / "home"
    done = run(
        "eval",
        "toxicity",
        "--model",
        MODEL,
        "--model",
        f"{MODEL}@base",
        "--prompts",
        str(data_file("rtp_prompts_dev.jsonl")),
        "--limit",
        "3",
        "--max-tokens",
        "8",
        home=home,
        env={"ESPALIER_MODEL_CACHE_DIR": str(model_cache_dir)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mean toxicity" in done.stdout and "profanity" in done.stdout
    platform = Platform(Settings(home=home), load_entry_points=False)
    try:
        with session_scope(platform.engine) as session:
            (record,) = session.exec(select(EvaluationRecord))
        assert record.kind == "toxicity" and record.models == [MODEL, f"{MODEL}@base"]
        assert record.settings["scorer"] == "profanity" and record.settings["prompts"] == 3
        first, second = (record.results["models"][m] for m in record.models)
        assert 0 <= first["mean_toxicity"] <= 1 and 0 <= first["share_above_threshold"] <= 1
        assert len(first["continuations"]) == 3 and first["mean_difference_vs_first"] == 0
        # Same model, same seed: the same continuations, so no difference.
        assert second["mean_difference_vs_first"] == pytest.approx(0, abs=1e-9)
        for kind in ("png", "svg"):
            path = record.artifacts[kind]
            assert os.path.getsize(path) > 1000 and path.endswith(f"toxicity.{kind}")
        assert platform.evaluations.get(record.id).id == record.id
    finally:
        platform.close()
    espalier = next(harness := build_harness(home, []))
    try:
        (listed,) = espalier.client.get("/api/evaluations?kind=toxicity", headers=espalier.headers("operator")).json()[
            "evaluations"
        ]
        assert listed["id"] == record.id and "continuations" not in listed["results"]["models"][MODEL]
        one = espalier.client.get(f"/api/evaluations/{record.id}", headers=espalier.headers("operator")).json()
        assert len(one["results"]["models"][MODEL]["continuations"]) == 3 and one["plots"] == ["png", "svg"]
        assert (
            espalier.client.get("/api/evaluations/eval_nope", headers=espalier.headers("operator")).status_code == 404
        )
    finally:
        harness.close()
    bad = run("eval", "toxicity", "--model", MODEL, "--prompts", str(tmp_path / "nope.jsonl"), home=home)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
