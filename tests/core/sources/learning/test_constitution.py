"""Constitutional AI on the real default model: the model critiques and revises its own answers by
the shipped constitution; the revised-over-original pairs are stored apart from human pairs,
counted apart in the pairs API, and enter reward training only at their own weight."""

from __future__ import annotations

import pytest

from espalier.api.testing import wait_job
from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.sources.feedback.pairs import Pair
from espalier.core.sources.learning.constitution import DEFAULT_CONSTITUTION, load_constitution

pytestmark = pytest.mark.slow


@pytest.fixture
def espalier_settings(model_cache_dir):
    return {"model_cache_dir": model_cache_dir, "ai_pair_weight": 0.25, "reward_retrain_after_pairs": 0}


def test_the_shipped_constitution_loads_and_a_bad_one_is_refused(tmp_path):
    constitution = load_constitution(DEFAULT_CONSTITUTION)
    assert len(constitution.principles) >= 3 and all(p.critique and p.revision for p in constitution.principles)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[principles]]\nname = "x"\ncritique = "c"\n')
    with pytest.raises(InvalidInput, match="revision"):
        load_constitution(bad)
    with pytest.raises(InvalidInput, match="no principle"):
        constitution.pick(["nope"])


def test_ai_labels_are_stored_apart_counted_apart_and_weighted(espalier):
    platform, client = espalier.platform, espalier.client
    empty = client.post("/api/pairs/ai", headers=espalier.headers("operator"), json={"prompts": []})
    assert empty.status_code == 400 and empty.json()["code"] == "empty_prompt_set"
    assert client.post("/api/pairs/ai", headers=espalier.headers("user"), json={}).status_code == 403

    prompts = ["Someone insulted me online. Write a reply.", "Tell me something mean about my coworker."]
    response = client.post(
        "/api/pairs/ai",
        headers=espalier.headers("operator"),
        json={"prompts": prompts, "max_tokens": 12, "temperature": 1.0},
    )
    assert response.status_code == 202, response.text
    job = wait_job(platform, response.json()["job_id"])
    assert job.status == "succeeded", job.error
    assert job.result["prompts"] == 2 and job.result["added"] >= 1, job.result
    assert set(job.result["by_principle"]) <= {p.name for p in load_constitution(DEFAULT_CONSTITUTION).principles}

    ai = platform.pairs.ai(weight=0.25)
    assert len(ai) == job.result["added"] and all(p.origin == "ai" and p.weight == 0.25 for p in ai)
    assert all(p.chosen != p.rejected and p.prompt in prompts for p in ai)
    # Apart from human pairs: not in the derived or imported ones, counted on their own.
    assert platform.pairs.derived() == [] and platform.pairs.imported() == []
    listed = client.get("/api/pairs", headers=espalier.headers("operator")).json()
    assert listed["pairs"] == 0 and listed["ai"]["pairs"] == len(ai) and listed["ai"]["weight"] == 0.25
    with_ai = client.get("/api/pairs?include_ai=true", headers=espalier.headers("operator")).json()
    assert with_ai["by_origin"] == {"ai": len(ai)} and {item["weight"] for item in with_ai["items"]} == {0.25}

    # The reward trainer takes them at their weight, only to train (held-out pairs stay human).
    human = [Pair(f"Question {i}?", f"A kind, useful answer number {i}.", f"Go away {i}.", "import") for i in range(6)]
    platform.pairs.import_lines(
        [f'{{"prompt": "{p.prompt}", "chosen": "{p.chosen}", "rejected": "{p.rejected}"}}' for p in human],
        source="test",
    )
    tiny = {"max_steps": 1, "batch_size": 8, "max_length": 64, "min_pairs": 4}
    trained = client.post("/api/reward/train", headers=espalier.headers("operator"), json={"params": tiny})
    assert trained.status_code == 202 and trained.json()["pairs"] == 6 + len(ai), trained.text
    job = wait_job(platform, trained.json()["job_id"])
    assert job.status == "succeeded", job.error
    data = job.result["data"]
    assert data["by_origin"] == {"import": 6, "ai": len(ai)} and data["ai_pair_weight"] == 0.25
    assert job.result["metrics"]["held_out_pairs"] <= 6 - 1  # never an AI pair among them
    without = client.post(
        "/api/reward/train", headers=espalier.headers("operator"), json={"params": {**tiny, "ai_pair_weight": 0}}
    )
    assert without.json()["pairs"] == 6
    job = wait_job(platform, without.json()["job_id"])
    assert job.status == "succeeded" and "ai" not in job.result["data"]["by_origin"]
