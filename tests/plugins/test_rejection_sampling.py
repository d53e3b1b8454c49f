"""What rejection sampling keeps, with scripted samples and scores (the control flow only: the
job on the real model and engine is in tests/core/sources/learning/test_policy_training.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.sources.learning.policy import settings_from
from espalier.plugins.policy_training import sft

SAMPLES = {
    "calm prompt": ["a kind answer", "a rude answer", "a plain answer"],
    "other prompt": ["a plain answer", "a rude answer", "a kind answer"],
    "bad prompt": ["a vile answer", "a foul answer", "a nasty answer"],  # even the best is toxic
    "tied prompt": ["same", "same", "same"],
}
REWARD = {"kind": 2.0, "rude": 1.0, "plain": 0.0, "vile": 3.0, "foul": 1.0, "nasty": 0.5, "same": 0.0}
TOXICITY = {"kind": 0.01, "rude": 0.7, "plain": 0.05, "vile": 0.95, "foul": 0.9, "nasty": 0.6, "same": 0.1}


class ScriptedScorers:
    def rewards(self, prompts, texts):
        return [REWARD[t.split()[1] if " " in t else t] for t in texts]

    def toxicities(self, texts):
        return [TOXICITY[t.split()[1] if " " in t else t] for t in texts]


def keep(monkeypatch, tmp_path, **params):
    prompts = list(SAMPLES)
    monkeypatch.setattr(sft, "training_prompt", lambda tokenizer, prompt, settings: prompt)
    monkeypatch.setattr(sft, "engine_samples", lambda *args, **kwargs: [SAMPLES[p] for p in prompts])
    settings = settings_from({"method": "rsft", "prompts": prompts, "min_pairs": 2, **params})
    run = SimpleNamespace(say=lambda message: None)
    kept = sft.rejection_samples(None, "model", None, prompts, ScriptedScorers(), settings, run, tmp_path)
    written = [json.loads(line) for line in (tmp_path / sft.KEPT_NAME).read_text().splitlines()]
    assert [row["completion"] for row in written] == [row.completion for row in kept]
    return {row.prompt: row.completion for row in kept}


def test_the_best_of_each_prompt_is_kept_unless_even_it_is_toxic(monkeypatch, tmp_path):
    # Weighted at 2 per unit of toxicity, the kind answer wins; every answer to the bad prompt is
    # past max_kept_toxicity (0.5 by default), so that prompt teaches nothing; a tie keeps nothing.
    assert keep(monkeypatch, tmp_path) == {"calm prompt": "a kind answer", "other prompt": "a kind answer"}


def test_a_higher_ceiling_keeps_the_least_bad_answer(monkeypatch, tmp_path):
    kept = keep(monkeypatch, tmp_path, max_kept_toxicity=1.0, toxicity_weight=2.0)
    assert kept == {"calm prompt": "a kind answer", "other prompt": "a kind answer", "bad prompt": "a vile answer"}


def test_too_few_kept_is_refused_with_what_to_change(monkeypatch, tmp_path):
    with pytest.raises(InvalidInput, match="only 2 of 4 sampled prompts kept"):
        keep(monkeypatch, tmp_path, min_pairs=3)
    with pytest.raises(InvalidInput, match="max_kept_toxicity"):
        settings_from({"method": "rsft", "max_kept_toxicity": 0})
