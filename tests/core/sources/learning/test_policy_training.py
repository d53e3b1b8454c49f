"""Policy updates on the real default model with small settings: RL against a real (tiny) reward
model and DPO on real preference pairs, each as a job through ``POST /api/policy/train``; the
adapter each registers loads and generates through the transformers provider; cancellation; and
the bad input refused before anything is queued."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from espalier.api.testing import wait_job
from espalier.core.infrastructure.contracts import ChatMessage, GenerationParams
from tests.support import SHARED_DATA

SHARED = SHARED_DATA
MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "The worst thing about my neighbour is",
    "Write one sentence about the sea.",
    "He looked at the crowd and shouted",
    "Give me a tip for learning to cook.",
    "She said the referee was a",
    "Tell me something about owls.",
]
TINY_RL = {
    "method": "rl",
    "steps": 2,
    "batch_size": 2,
    "num_generations": 2,
    "max_completion_tokens": 6,
    "max_prompt_tokens": 48,
    "eval_prompts": 2,
    "prompts": PROMPTS,
    "learning_rate": 5e-3,
    # 0: the toxicity is still recorded every step, and profanity, the only toxicity scorer here, may
    # then judge the candidate (a run that optimised it could not be judged by it).
    "toxicity_weight": 0.0,
}
TINY_DPO = {
    "method": "dpo",
    "steps": 2,
    "batch_size": 2,
    "max_completion_tokens": 16,
    "max_prompt_tokens": 64,
    "eval_prompts": 2,
    "min_pairs": 4,
    "learning_rate": 5e-3,
}


@pytest.fixture(scope="module")
def reward_artifact(tmp_path_factory) -> tuple[Path, dict]:
    """A real MiniLM reward model trained for a few steps on real HH pairs (shared by the tests)."""
    from espalier.core.sources.feedback.pairs import Pair, parse_pair_lines
    from espalier.core.sources.reward.settings import RewardSettings
    from espalier.plugins.reward_models.training import train_reward_model

    lines = (SHARED / "hh_pairs_train.jsonl").read_text().splitlines()[:24]
    pairs = [Pair(p, c, r, "import") for p, c, r in parse_pair_lines(lines)]
    out = tmp_path_factory.mktemp("reward") / "rm"
    card = train_reward_model(pairs, out, RewardSettings(max_steps=2, batch_size=4, max_length=64))
    return out, card


def register_reward_model(platform, path: Path, base_model: str) -> None:
    platform.reward_models.register(
        path=str(path),
        base_model=base_model,
        data_sha256="0" * 64,
        pairs=24,
        metrics={"accuracy": 0.5},
        current_accuracy_same_holdout=None,
        job_id=None,
    )


@pytest.fixture
def espalier_settings(model_cache_dir):
    return {"model_cache_dir": model_cache_dir}


def start(espalier, body: dict) -> str:
    response = espalier.client.post("/api/policy/train", json=body, headers=espalier.headers("operator"))
    assert response.status_code == 202, response.text
    return response.json()["job"]["id"]


def assert_trained_adapter_serves(espalier, result: dict) -> None:
    from safetensors.torch import load_file

    adapter = Path(result["adapter"])
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(float(t.abs().sum()) > 0 for t in lora_b), "LoRA B starts at zero: training must move it"
    info = espalier.platform.models.info(MODEL)
    version = next(v for v in info.versions if v["label"] == result["label"])
    assert version["status"] == "candidate" and not version["serving"] and version["adapter"] == str(adapter)
    assert info.serving_version == "base"
    model, row = espalier.platform.models.load(MODEL, result["label"])  # the provider applies the adapter
    assert row.adapter == str(adapter)
    text = model.generate(
        [ChatMessage("user", "Say hello to the sea.")], GenerationParams(max_tokens=8, temperature=0)
    )[0].text
    assert text.strip()


@pytest.mark.slow
def test_rl_and_dpo_jobs_record_curves_and_register_candidates_that_serve(espalier, reward_artifact):
    platform = espalier.platform
    path, card = reward_artifact
    register_reward_model(platform, path, card["base_model"])
    lines = (SHARED / "hh_pairs_train.jsonl").read_text().splitlines()[100:108]
    platform.pairs.import_lines(lines, source="hh")
    rl_id = start(espalier, TINY_RL)
    dpo_id = start(espalier, TINY_DPO)  # queued behind the RL run (one worker)

    for job_id, method in ((rl_id, "rl"), (dpo_id, "dpo")):
        job = wait_job(platform, job_id)
        assert job.status == "succeeded", job.error
        result = job.result
        metrics = espalier.client.get(f"/api/jobs/{job_id}/metrics", headers=espalier.headers("operator")).json()
        rows = metrics["metrics"]
        assert [row["step"] for row in rows] == [1, 2], rows
        for row in rows:
            assert {"reward", "loss"} <= set(row["values"]), row
        assert "kl" in rows[-1]["values"]
        if method == "rl":
            assert all("toxicity" in row["values"] and "reward_model" in row["values"] for row in rows)
        assert Path(result["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert isinstance(result["warnings"], list)
        evaluation = result["evaluation"]
        assert evaluation["prompts"] == 2 and 0 <= evaluation["policy"]["toxicity"] <= 1
        assert (
            "reward" in evaluation["base"] and "reward" in evaluation["policy"]
        )  # dpo measures with the current RM too
        assert result["stop_reason"] == "step budget" and result["steps"] == 2
        assert_trained_adapter_serves(espalier, result)
        version = next(v for v in platform.models.info(MODEL).versions if v["label"] == result["label"])
        assert version["metrics"]["method"] == method and version["metrics"]["warnings"] == result["warnings"]
    listed = espalier.client.get(f"/api/jobs/{rl_id}", headers=espalier.headers("operator")).json()
    assert listed["params"]["beta"] == 0.1  # the RL run's KL penalty was on (rl's default)

    # The rest of the loop on what the RL run produced: evaluation against the serving version,
    # promotion, the promoted version served (the response names it), rollback, the base again.
    label = platform.jobs.get(rl_id).result["label"]
    operator = espalier.headers("operator")

    def ask(model: str) -> dict:
        response = espalier.client.post(
            "/v1/chat/completions",
            headers=espalier.headers("user"),
            json={
                "model": model,
                "messages": [{"role": "user", "content": PROMPTS[1]}],
                "temperature": 0,
                "max_tokens": 8,
            },
        )
        assert response.status_code == 200, response.text
        return response.json()

    refused = espalier.client.post(f"/api/models/{MODEL}/promote", headers=operator, json={"version": label})
    assert refused.status_code == 409 and refused.json()["code"] == "evaluation_missing"
    queued = espalier.client.post(
        f"/api/models/{MODEL}/evaluations",
        headers=operator,
        json={
            "candidate": label,
            "prompts": PROMPTS[:2],
            "max_tokens": 8,
            "tasks": [{"question": "What is the capital of France? Answer with one word.", "answer": "Paris"}],
            # a two-step run moves little: the gate here only bounds how far it may move
            "gate": {
                "reward_tolerance": 100.0,
                "toxicity_tolerance": 1.0,
                "max_kl": 1e6,
                "task_tolerance": 1.0,
                "min_prompts": 1,
                "require_improvement": False,
            },
        },
    )
    assert queued.status_code == 202, queued.text
    report = wait_job(platform, queued.json()["job_id"], timeout=600)
    assert report.status == "succeeded", report.error
    assert report.result["passed"] is True and "kl" in report.result["candidate_results"]
    promoted = espalier.client.post(f"/api/models/{MODEL}/promote", headers=operator, json={"version": label})
    assert promoted.status_code == 200 and promoted.json()["serving_version"] == label, promoted.text
    served = ask(MODEL)
    assert served["espalier"]["model_version"] == label
    assert served["choices"][0]["message"]["content"] == ask(f"{MODEL}@{label}")["choices"][0]["message"]["content"]
    assert {f"{MODEL}@{label}", f"{MODEL}@base", MODEL} <= {
        m["id"] for m in espalier.client.get("/v1/models", headers=espalier.headers("user")).json()["data"]
    }
    rolled = espalier.client.post(f"/api/models/{MODEL}/rollback", headers=operator, json={"reason": "loop test"})
    assert rolled.status_code == 200 and rolled.json()["serving_version"] == "base"
    back = ask(MODEL)
    assert back["espalier"]["model_version"] == "base"
    assert back["choices"][0]["message"]["content"] == ask(f"{MODEL}@base")["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_dpo_on_sampled_pairs_ranks_the_policys_own_samples_by_the_reward(espalier, reward_artifact):
    """pairs="sampled": completions of each training prompt sampled from the model, scored as RL's
    reward (reward model minus toxicity_weight x profanity), best against worst; the held-out
    prompts never give a pair; the pairs file is kept with the job and nothing enters the store."""
    from espalier.plugins.policy_training.common import Scorers

    platform = espalier.platform
    path, card = reward_artifact
    register_reward_model(platform, path, card["base_model"])
    body = {
        **TINY_DPO,
        "pairs": "sampled",
        "samples_per_prompt": 3,
        "prompts": PROMPTS,
        "prompt_format": "text",
        "max_completion_tokens": 8,
        "min_pairs": 2,
        "toxicity_weight": 1.0,
    }
    job = wait_job(platform, start(espalier, body))
    assert job.status == "succeeded", job.error
    result = job.result
    assert result["pairs"]["source"] == "sampled" and result["pairs"]["samples_per_prompt"] == 3
    rows = [json.loads(line) for line in Path(result["pairs"]["file"]).read_text().splitlines()]
    assert len(rows) == result["pairs"]["count"] and 2 <= len(rows) <= len(PROMPTS) - 2
    held_out = {example["prompt"] for example in result["evaluation"]["examples"]}
    assert len(held_out) == 2 and not held_out & {row["prompt"] for row in rows}
    assert {row["prompt"] for row in rows} <= set(PROMPTS) and len({row["prompt"] for row in rows}) == len(rows)
    # The recorded scores are the reward signal's own: rescore chosen and rejected independently.
    scorers = Scorers(platform, platform.reward_models.current(), "profanity")
    for side in ("chosen", "rejected"):
        again = scorers.objective([r["prompt"] for r in rows], [r[side] for r in rows], 1.0)
        assert again == pytest.approx([r[f"{side}_score"] for r in rows], abs=1e-4)
    assert all(r["chosen_score"] > r["rejected_score"] and r["chosen"] != r["rejected"] for r in rows)
    assert platform.pairs.all(include_imported=True) == []  # the samples' pairs stay with the job
    assert [row.step for row in platform.jobs.metrics(job.id)] == [1, 2]
    assert result["steps"] == 2 and result["metrics"]["loss"] > 0
    assert_trained_adapter_serves(espalier, result)


@pytest.mark.slow
def test_rejection_sampling_keeps_the_best_sample_and_the_gate_refuses_its_own_scorer(espalier, reward_artifact):
    """rsft: samples of each training prompt from the serving engine, the best by reward minus
    toxicity kept (never a held-out prompt), a LoRA fine-tuned on them; the version records the
    scorer it optimised, and an evaluation judged by that scorer is refused before it is queued."""
    from espalier.plugins.policy_training.common import Scorers

    platform = espalier.platform
    path, card = reward_artifact
    register_reward_model(platform, path, card["base_model"])
    body = {
        "method": "rsft",
        "steps": 2,
        "batch_size": 2,
        "samples_per_prompt": 3,
        "prompts": PROMPTS,
        "prompt_format": "text",
        "max_completion_tokens": 8,
        "max_prompt_tokens": 48,
        "eval_prompts": 2,
        "min_pairs": 2,
        "learning_rate": 5e-3,
        "toxicity_weight": 1.0,
    }
    job = wait_job(platform, start(espalier, body))
    assert job.status == "succeeded", job.error
    result = job.result
    kept = [json.loads(line) for line in (Path(job.artifact_dir) / "kept_samples.jsonl").read_text().splitlines()]
    held_out = {example["prompt"] for example in result["evaluation"]["examples"]}
    assert len(held_out) == 2 and not held_out & {row["prompt"] for row in kept}
    assert 2 <= len(kept) <= len(PROMPTS) - 2 and all(row["source"] == "sampled" for row in kept)
    # What was recorded is the scorers' own reading of the kept answers.
    scorers = Scorers(platform, platform.reward_models.current(), "profanity")
    texts = [r["completion"] for r in kept]
    assert scorers.rewards([r["prompt"] for r in kept], texts) == pytest.approx([r["reward"] for r in kept], abs=1e-4)
    assert scorers.toxicities(texts) == pytest.approx([r["toxicity"] for r in kept], abs=1e-4)
    assert result["steps"] == 2 and result["metrics"]["loss"] > 0
    assert_trained_adapter_serves(espalier, result)
    version = next(v for v in platform.models.info(MODEL).versions if v["label"] == result["label"])
    assert version["metrics"]["toxicity_scorer_optimised"] == "profanity"
    refused = espalier.client.post(
        f"/api/models/{MODEL}/evaluations",
        headers=espalier.headers("operator"),
        json={"candidate": result["label"], "scorer": "profanity"},
    )
    assert refused.status_code == 400 and refused.json()["code"] == "judge_is_optimised_scorer", refused.text


@pytest.mark.slow
def test_sft_on_curated_demonstrations_stops_at_its_time_budget(espalier, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "Let us keep it kind."}]}
        for p in PROMPTS[:3]
    ] + [{"prompt": "Say something about tea.", "completion": "Tea is a warm and friendly drink."}]
    outside = espalier.client.post(
        "/api/policy/train",
        json={"method": "sft", "sft_path": str(tmp_path / "x.jsonl")},
        headers=espalier.headers("operator"),
    )
    assert outside.status_code == 400 and outside.json()["code"] == "sft_path_outside_home", outside.text
    demonstrations = Path(espalier.platform.settings.home) / "curated.jsonl"
    demonstrations.write_text("".join(json.dumps(row) + "\n" for row in rows))
    body = {
        "method": "sft",
        "sft_path": str(demonstrations),
        "steps": 100000,
        "budget_minutes": 1,
        "batch_size": 2,
        "max_completion_tokens": 12,
        "max_prompt_tokens": 48,
        "eval_prompts": 0,
        "min_pairs": 4,
        "learning_rate": 5e-3,
    }
    started = time.monotonic()
    job = wait_job(espalier.platform, start(espalier, body), timeout=600)
    assert job.status == "succeeded", job.error
    assert job.result["stop_reason"] == "time budget of 1 minutes" and 1 <= job.result["steps"] < 100000
    assert time.monotonic() - started < 300
    bad = Path(espalier.platform.settings.home) / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    refused = espalier.client.post(
        "/api/policy/train", json={**body, "sft_path": str(bad)}, headers=espalier.headers("operator")
    )
    assert refused.status_code == 400 and "line 1" in refused.json()["detail"], refused.text


@pytest.mark.slow
def test_a_cancelled_policy_run_registers_nothing(espalier, reward_artifact):
    platform = espalier.platform
    path, card = reward_artifact
    register_reward_model(platform, path, card["base_model"])
    job_id = start(espalier, {**TINY_RL, "steps": 200})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not platform.jobs.metrics(job_id):
        assert platform.jobs.get(job_id).status in ("queued", "running"), platform.jobs.get(job_id).error
        time.sleep(0.5)
    assert espalier.client.post(f"/api/jobs/{job_id}/cancel", headers=espalier.headers("operator")).status_code == 200
    job = wait_job(platform, job_id, timeout=300)
    assert job.status == "cancelled"
    assert len(platform.jobs.metrics(job_id)) < 10
    assert [v["label"] for v in platform.models.info(MODEL).versions] == ["base"]


def test_bad_input_is_refused_before_a_job_is_queued(tmp_path, database_url):
    from espalier.api.testing import build_harness

    for espalier in build_harness(tmp_path / "home", [], database_url=database_url):
        platform, client = espalier.platform, espalier.client

        def refused(body: dict, status: int, code: str | None = None, role: str = "operator") -> str:
            # called only within this iteration of the loop
            response = client.post("/api/policy/train", json=body, headers=espalier.headers(role))  # noqa: B023
            assert response.status_code == status, response.text
            if code:
                assert response.json()["code"] == code, response.text
            return response.json().get("detail", "")

        detail = refused({"method": "rl", "prompts": PROMPTS}, 409, "no_reward_model")
        assert "train one first" in detail
        refused({"method": "rl", "prompts": PROMPTS}, 403, role="user")
        refused({"method": "ppo"}, 400)
        refused({"method": "rl", "prompts": PROMPTS, "bogus": 1}, 400)
        refused({"method": "dpo", "min_pairs": 4}, 400, "too_few_pairs")
        detail = refused({"method": "dpo", "pairs": "sampled", "prompts": PROMPTS}, 409, "no_reward_model")
        assert "pairs 'store'" in detail
        assert "'store'" in refused({"method": "dpo", "pairs": "hh"}, 400) and "'sampled'" in refused(
            {"method": "dpo", "pairs": "hh"}, 400
        )
        assert "dpo only" in refused({"method": "rl", "pairs": "sampled", "prompts": PROMPTS}, 400)
        refused({"method": "rl", "model": "no-such-model", "prompts": PROMPTS}, 404)

        register_reward_model(platform, tmp_path / "rm", "sentence-transformers/all-MiniLM-L6-v2")
        refused({"method": "rl", "beta": 0, "prompts": PROMPTS}, 400)
        refused({"method": "rl", "steps": 0, "prompts": PROMPTS}, 400)
        refused({"method": "rl", "prompts": PROMPTS, "toxicity_scorer": "nope"}, 400)
        detail = refused({"method": "rl"}, 400, "empty_prompt_set")
        assert "prompt set is empty" in detail
        refused({"method": "rl", "prompts_path": "missing.jsonl"}, 400)
        refused({"method": "rl", "prompts_path": "/etc/passwd"}, 400, "prompts_path_outside_home")
        refused({"method": "rl", "prompts_path": "../../etc/passwd"}, 400, "prompts_path_outside_home")
        refused({"method": "rl", "prompts": PROMPTS[:1]}, 400, "too_few_prompts")
        refused({"method": "rl", "prompts": PROMPTS, "label": "base"}, 409)
        refused({"method": "dpo", "pairs": "sampled"}, 400, "empty_prompt_set")
        detail = refused(
            {"method": "dpo", "pairs": "sampled", "prompts": PROMPTS}, 400, "too_few_prompts"
        )  # min_pairs 8
        assert "one pair per training prompt" in detail
        refused({"method": "dpo", "pairs": "sampled", "prompts": PROMPTS, "min_pairs": 2, "samples_per_prompt": 1}, 400)

        # A reward model trained from a chat model's own backbone drives that model only.
        gguf = platform.models.resolve(MODEL)[0].source
        from espalier.plugins.common.model_sources import resolve_source

        copy = str(resolve_source(gguf).path)
        client.post(
            "/api/models",
            json={"name": "smol-copy", "provider": "transformers", "source": copy},
            headers=espalier.headers("admin"),
        ).raise_for_status()
        register_reward_model(platform, tmp_path / "rm2", f"builtin:{MODEL}")
        detail = refused(
            {"method": "rl", "model": "smol-copy", "reward_model": "2", "prompts": PROMPTS},
            409,
            "reward_model_base_mismatch",
        )
        assert f"'{MODEL}'" in detail and "smol-copy" in detail
        assert platform.jobs.list() == []


def cli(*args: str, home: Path, cache: Path | None = None):
    env = {**os.environ, "ESPALIER_HOME": str(home), "ESPALIER_LOG_JSON": "false"}
    if cache is not None:
        env["ESPALIER_MODEL_CACHE_DIR"] = str(cache)
    return subprocess.run([sys.executable, "-m", "espalier.api.cli", *args], env=env, capture_output=True, text=True)


def test_cli_refuses_rl_without_a_reward_model(tmp_path):
    result = cli("policy", "train", "--method", "rl", "--prompt", "a", "--prompt", "b", home=tmp_path)
    assert result.returncode == 2 and "train one first" in result.stderr, result.stderr
    result = cli("policy", "train", "--method", "dpo", home=tmp_path)
    assert result.returncode == 2 and "DPO needs at least 8" in result.stderr, result.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a whole CLI process loading torch and the model: minutes on a loaded 2-core machine
def test_cli_trains_dpo_and_registers_a_candidate(tmp_path, model_cache_dir):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join((SHARED / "hh_pairs_train.jsonl").read_text().splitlines()[200:206]) + "\n")
    assert cli("pairs", "import", str(pairs), "--source", "hh", home=tmp_path).returncode == 0
    result = cli(
        "policy",
        "train",
        "--method",
        "dpo",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--max-completion-tokens",
        "6",
        "--eval-prompts",
        "1",
        "--min-pairs",
        "4",
        "--label",
        "cli-dpo",
        home=tmp_path,
        cache=model_cache_dir,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"registered {MODEL} version 'cli-dpo' (candidate)" in " ".join(result.stdout.split())
    assert "mean toxicity" in result.stdout and "KL from reference" in result.stdout
