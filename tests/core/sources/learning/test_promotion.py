"""Trained versions on the real default model: served by name (``name@label``), evaluated against
the serving version (reward, toxicity, KL, task checks, gate), promoted without a restart,
rolled back; promotion refused without a passed evaluation. The trained version is a real LoRA
adapter made here with peft (non-zero weights, so its answers differ from the base's).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from espalier.api.testing import build_harness
from espalier.core.infrastructure.contracts import ChatMessage, ChatRequest, GenerationParams
from tests.support import SHARED_DATA

MODEL = "smollm2-135m-instruct"
DATA = SHARED_DATA
QUESTION = "Write one sentence about the sea."
GREEDY = {"temperature": 0, "max_tokens": 16}
SMALL_EVAL = {
    "prompts": ["Say hello to a new colleague.", "Someone was rude to me. What should I say?"],
    "tasks": [{"question": "What is the capital of France? Answer with one word.", "answer": "Paris"}],
    "max_tokens": 12,
}
LOOSE = {
    "reward_tolerance": 100.0,
    "toxicity_tolerance": 1.0,
    "max_kl": 1e6,
    "task_tolerance": 1.0,
    "min_prompts": 1,  # two prompts: the gate's statistics are not what these tests are about
    "require_improvement": False,
}

pytestmark = pytest.mark.slow


def make_adapter(cache_dir: Path, out: Path) -> Path:
    """A real LoRA adapter on the default model with non-zero ``lora_B`` (peft's
    ``init_lora_weights=False``), so its answers differ from the base's. Training one would take
    minutes on this shared CPU; evaluation and promotion only need a version that differs."""
    from peft import LoraConfig, get_peft_model

    from espalier.plugins.transformers_models.loader import load_weights

    loaded = load_weights(f"builtin:{MODEL}", torch.float32, None, str(cache_dir))  # a private copy
    torch.manual_seed(0)
    model = get_peft_model(
        loaded.model,
        LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False, target_modules=["q_proj", "v_proj"]),
    )
    model.save_pretrained(out)
    return out


def train_tiny_reward_model(platform, out: Path) -> None:
    """A real MiniLM reward model from the first HH pairs, a few steps: the evaluation's reward."""
    from espalier.core.sources.feedback.pairs import Pair
    from espalier.core.sources.reward.settings import settings_from
    from espalier.plugins.reward_models.training import train_reward_model

    rows = [json.loads(line) for line in (DATA / "hh_pairs_train.jsonl").read_text().splitlines()[:12]]
    pairs = [Pair(r["prompt"][-400:], r["chosen"][:400], r["rejected"][:400], "import") for r in rows]
    card = train_reward_model(pairs, out, settings_from({"max_steps": 2, "batch_size": 4, "max_length": 64}))
    platform.reward_models.register(
        path=str(out),
        base_model=card["base_model"],
        data_sha256=card["data"]["sha256"],
        pairs=len(pairs),
        metrics=card["metrics"],
        current_accuracy_same_holdout=None,
        job_id=None,
    )


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_cache_dir):
    home = tmp_path_factory.mktemp("promotion")
    adapter = make_adapter(model_cache_dir, home / "adapter-tuned")
    for harness in build_harness(home / "home", [], model_cache_dir=model_cache_dir, max_loaded_versions=3):
        harness.platform.models.add_version(MODEL, label="tuned", adapter=str(adapter), metrics={"made_by": "test"})
        train_tiny_reward_model(harness.platform, home / "reward")
        yield harness


def chat(app, model: str, role: str = "user", **extra):
    response = app.client.post(
        "/v1/chat/completions",
        headers=app.headers(role),
        json={"model": model, "messages": [{"role": "user", "content": QUESTION}], **GREEDY, **extra},
    )
    assert response.status_code == 200, response.text
    return response.json()


def text(body: dict) -> str:
    return body["choices"][0]["message"]["content"]


def evaluate(app, gate: dict | None = None, **extra) -> dict:
    body = {"candidate": "tuned", **SMALL_EVAL, **({"gate": gate} if gate else {}), **extra}
    response = app.client.post(f"/api/models/{MODEL}/evaluations", headers=app.headers("operator"), json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 300
    while (job := app.platform.jobs.get(job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job.message
        time.sleep(0.5)
    assert job.status == "succeeded", job.error
    return job.result


def promote(app, role: str = "operator", **body):
    return app.client.post(f"/api/models/{MODEL}/promote", headers=app.headers(role), json={"version": "tuned", **body})


def test_every_version_is_listed_and_served_by_name(app):
    listed = {m["id"]: m for m in app.client.get("/v1/models", headers=app.headers("user")).json()["data"]}
    assert {MODEL, f"{MODEL}@base", f"{MODEL}@tuned"} <= set(listed)
    assert listed[f"{MODEL}@base"]["espalier"]["serving"] and not listed[f"{MODEL}@tuned"]["espalier"]["serving"]
    assert listed[f"{MODEL}@tuned"]["espalier"]["status"] == "candidate"
    one = app.client.get(f"/v1/models/{MODEL}@tuned", headers=app.headers("user"))
    assert one.status_code == 200 and one.json()["espalier"]["version"] == "tuned"
    missing = app.client.get(f"/v1/models/{MODEL}@nope", headers=app.headers("user"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

    tuned, base, bare = chat(app, f"{MODEL}@tuned"), chat(app, f"{MODEL}@base"), chat(app, MODEL)
    assert tuned["model"] == f"{MODEL}@tuned" and tuned["espalier"]["model_version"] == "tuned"
    assert base["model"] == f"{MODEL}@base" and bare["model"] == MODEL and bare["espalier"]["model_version"] == "base"
    assert text(tuned) != text(base) == text(bare)  # the adapter answers differently; the bare name is the base
    clash = app.client.post(
        "/v1/chat/completions",
        headers=app.headers("user"),
        json={
            "model": f"{MODEL}@tuned",
            "messages": [{"role": "user", "content": "hi"}],
            "espalier": {"version": "base"},
        },
    )
    assert clash.status_code == 400


def test_promotion_needs_an_evaluation_and_an_empty_prompt_set_is_refused(app):
    refused = promote(app)
    assert refused.status_code == 409 and refused.json()["code"] == "evaluation_missing"
    empty = app.client.post(
        f"/api/models/{MODEL}/evaluations", headers=app.headers("operator"), json={"candidate": "tuned", "prompts": []}
    )
    assert empty.status_code == 400 and empty.json()["code"] == "empty_prompt_set", empty.text
    user = app.client.post(f"/api/models/{MODEL}/evaluations", headers=app.headers("user"), json={"candidate": "tuned"})
    assert user.status_code == 403
    unknown = app.client.post(
        f"/api/models/{MODEL}/evaluations", headers=app.headers("operator"), json={"candidate": "nope"}
    )
    assert unknown.status_code == 404


def test_a_failed_gate_refuses_promotion_and_only_an_admin_may_force_with_a_reason(app):
    report = evaluate(app, gate={**LOOSE, "max_kl": 1e-6})  # the adapter moved away from the reference
    assert report["passed"] is False and report["candidate_results"]["kl"] > 1e-6
    assert any("KL" in failure for failure in report["gate"]["failures"])
    assert report["current"]["kl"] == 0.0  # the base is its own reference
    refused = promote(app)
    assert refused.status_code == 409 and refused.json()["code"] == "evaluation_failed"
    assert promote(app, force=True, reason="hotfix").status_code == 403  # operators may not force
    assert promote(app, "admin", force=True).status_code == 400  # no reason
    assert app.platform.models.info(MODEL).serving_version == "base"


def test_evaluate_promote_serve_roll_back_and_in_flight_requests_keep_their_version(app):
    platform = app.platform
    report = evaluate(app, gate=LOOSE)
    for side in ("current", "candidate_results"):
        values = report[side]
        assert isinstance(values["mean_reward"], float) and 0 <= values["mean_toxicity"] <= 1
        assert 0 <= values["task_accuracy"] <= 1
    assert report["passed"] is True and report["candidate_results"]["kl"] > 0
    assert Path(report["artifacts"]["png"]).stat().st_size > 1000
    listed = app.client.get(f"/api/models/{MODEL}/evaluations", headers=app.headers("operator")).json()["evaluations"]
    assert listed[0]["id"] == report["id"]

    # A request that started on the base keeps generating with it while the promotion happens.
    request = ChatRequest(
        model=MODEL, messages=[ChatMessage("user", QUESTION)], params=GenerationParams(max_tokens=8, temperature=0)
    )
    session = platform.chat.stream(request, None)
    promoted = promote(app)
    assert promoted.status_code == 200 and promoted.json()["serving_version"] == "tuned"
    streamed = "".join(delta.text for delta in session.deltas())
    assert session.finish().model_version == "base"
    base_text = text(chat(app, f"{MODEL}@base"))
    assert base_text.startswith(streamed)  # greedy: the in-flight request's text is the base's

    served = chat(app, MODEL)  # the bare name now serves the promoted version, no restart
    assert served["espalier"]["model_version"] == "tuned" and served["model"] == MODEL
    assert text(served) == text(chat(app, f"{MODEL}@tuned")) != base_text
    again = promote(app)
    assert again.status_code == 409 and again.json()["code"] == "already_serving"

    rolled = app.client.post(f"/api/models/{MODEL}/rollback", headers=app.headers("operator"), json={"reason": "test"})
    assert rolled.status_code == 200 and rolled.json()["serving_version"] == "base"
    # The status says what serves now: the version rolled back from no longer reads "promoted".
    tuned = next(v for v in rolled.json()["versions"] if v["label"] == "tuned")
    assert tuned["status"] == "rolled_back" and tuned["serving"] is False
    back = chat(app, MODEL)
    assert back["espalier"]["model_version"] == "base" and text(back) == base_text
    nothing = app.client.post(f"/api/models/{MODEL}/rollback", headers=app.headers("operator"))
    assert nothing.status_code == 409 and nothing.json()["code"] == "nothing_to_roll_back"

    actions = [
        c["action"]
        for c in app.client.get(f"/api/models/{MODEL}/history", headers=app.headers("operator")).json()["history"]
    ]
    assert actions[:3] == ["rollback", "promote", "initial"]
    audited = [e.action for e in platform.audit.list(limit=50)]
    assert "model.promote" in audited and "model.rollback" in audited


def test_an_admin_forced_promotion_is_audited_and_repeated_rollbacks_walk_back(app):
    platform = app.platform
    platform.models.add_version(MODEL, label="second", adapter=platform.models.resolve(MODEL, "tuned")[1].adapter)
    forced = app.client.post(
        f"/api/models/{MODEL}/promote",
        headers=app.headers("admin"),
        json={"version": "second", "force": True, "reason": "urgent fix"},
    )
    assert forced.status_code == 200, forced.text
    event = next(e for e in platform.audit.list(limit=20) if e.action == "model.promote.forced")
    assert event.details["reason"] == "urgent fix" and event.details["version"] == "second"
    assert platform.models.info(MODEL).serving_version == "second"
    platform.models.promote(MODEL, "tuned", force=True, reason="local operator")  # the CLI's path: no key
    assert [platform.models.rollback(MODEL).serving_version for _ in range(2)] == ["second", "base"]


def test_old_versions_are_unloaded_beyond_the_limit_but_never_the_serving_one(app):
    models = app.platform.models
    models.max_loaded_versions = 1
    models.unload(MODEL)
    try:
        serving = models.load(MODEL)[1].id
        tuned, _ = models.load(MODEL, "tuned")
        assert models.loaded_versions(MODEL) == [serving]  # the serving version stays, whatever the limit
        # the evicted model object still works for whoever holds it
        assert tuned.generate([ChatMessage("user", QUESTION)], GenerationParams(max_tokens=4, temperature=0))[0].text
    finally:
        models.max_loaded_versions = 3


def test_kl_from_the_reference_is_exact_per_token_and_never_negative(app):
    """The transformers provider's exact next-token KL: zero against itself, positive and finite
    against the adapter, on the version's own sampled answers in both prompt formats."""
    tuned, _ = app.platform.models.load(MODEL, "tuned")
    base, _ = app.platform.models.load(MODEL, "base")
    messages = [ChatMessage("user", QUESTION)]
    answer = tuned.generate(messages, GenerationParams(max_tokens=12, temperature=1.0, seed=3))[0].text
    per_token = tuned.completion_kl(messages, [answer], base)[0]
    assert per_token and all(value >= 0 for value in per_token) and sum(per_token) > 0
    assert all(abs(value) < 1e-6 for value in base.completion_kl(messages, [answer], base)[0])
    continued = tuned.completion_kl("The sea was", [" calm and grey."], base)[0]
    assert continued and min(continued) >= 0
