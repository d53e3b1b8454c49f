"""The default scorer on real held-out text, and both plugins' registration through pluggy."""

from __future__ import annotations

import statistics

import pluggy
import pytest

from espalier.core.infrastructure import hookspecs
from espalier.core.infrastructure.contracts import Guardrail, GuardrailScore, Trainer
from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.infrastructure.settings import Settings
from espalier.core.platform import Platform
from espalier.plugins import injection as injection_plugin
from espalier.plugins import toxicity as toxicity_plugin
from espalier.plugins.common.text_classifiers.metrics import roc_auc
from espalier.plugins.toxicity import ProfanityScorer


def test_profanity_separates_toxic_from_benign_held_out_rows(toxicity_split):
    data, _, held = toxicity_split
    scorer = ProfanityScorer()
    assert isinstance(scorer, Guardrail)
    rows = held[::2]
    results = scorer.score([data.texts[i] for i in rows], direction="input")
    assert len(results) == len(rows)
    assert all(isinstance(r, GuardrailScore) and r.scorer == "profanity" for r in results)
    assert all(0.0 <= r.scores["toxicity"] <= 1.0 for r in results)
    labels = [data.binary()[i] for i in rows]
    toxic = [r.scores["toxicity"] for r, y in zip(results, labels, strict=False) if y]
    clean = [r.scores["toxicity"] for r, y in zip(results, labels, strict=False) if not y]
    assert statistics.mean(toxic) > statistics.mean(clean) + 0.4
    # The tweets overlap its training data (see data/README.md), so expect a high score here.
    assert roc_auc(labels, [r.scores["toxicity"] for r in results]) > 0.9


def test_profanity_on_implicit_hate_is_weaker_but_above_chance(read_jsonl):
    rows = read_jsonl("toxigen_train.jsonl")
    scores = [r.scores["toxicity"] for r in ProfanityScorer().score([row["text"] for row in rows], direction="output")]
    auc = roc_auc([row["label"] == "toxic" for row in rows], scores)
    assert 0.55 < auc < 0.9


def test_empty_batch():
    assert ProfanityScorer().score([], direction="input") == []


def collect(plugin_module, hook, home, **settings):
    pm = pluggy.PluginManager("espalier")
    pm.add_hookspecs(hookspecs)
    pm.register(plugin_module)
    configured = Settings(home=home, **settings)
    platform = Platform(configured, load_entry_points=False)  # the platform a register_* hook may take
    items = []
    try:
        # register(item, default=True) offers an item as its kind's default: accept the option
        getattr(pm.hook, hook)(
            register=lambda item, **options: items.append(item), settings=configured, platform=platform
        )
    finally:
        platform.close()
    return items


def test_toxicity_plugin_registers_profanity_only_when_no_checkpoint(tmp_path):
    guardrails = collect(toxicity_plugin, "register_guardrails", tmp_path)
    assert [g.name for g in guardrails] == ["profanity"]
    assert all(isinstance(g, Guardrail) for g in guardrails)
    trainers = collect(toxicity_plugin, "register_trainers", tmp_path)
    assert [t.name for t in trainers] == ["toxicity-classifier"] and isinstance(trainers[0], Trainer)


def test_a_configured_checkpoint_that_is_missing_stops_start_up(tmp_path):
    with pytest.raises(InvalidInput, match="nope.ckpt does not exist"):
        collect(toxicity_plugin, "register_guardrails", tmp_path, toxicity_checkpoint=tmp_path / "nope.ckpt")
    with pytest.raises(InvalidInput, match="does not exist"):
        collect(injection_plugin, "register_guardrails", tmp_path, injection_checkpoint=tmp_path / "nope.ckpt")


def test_injection_plugin_registers_rules_scorer(tmp_path):
    (scorer,) = collect(injection_plugin, "register_guardrails", tmp_path, injection_canaries="zebra-4417, ")
    assert isinstance(scorer, Guardrail) and scorer.name == "injection"
    assert scorer.categories == ("injection", "canary")
    assert scorer.score(["the zebra-4417 says hi"], direction="output")[0].scores == {"injection": 1.0, "canary": 1.0}
    (trainer,) = collect(injection_plugin, "register_trainers", tmp_path)
    assert trainer.name == "injection-classifier" and isinstance(trainer, Trainer)


def test_evaluations_measure_with_profanity_until_a_detoxify_checkpoint_exists(tmp_path):
    """The toxicity plugin offers the scorer evaluations use (ESPALIER_EVALUATION_SCORER unset)."""
    platform = Platform(Settings(home=tmp_path), load_entry_points=False)
    try:
        assert platform.guardrails.choose(None, "ESPALIER_EVALUATION_SCORER").name == "profanity"
        assert platform.guardrails.choose("injection", "ESPALIER_EVALUATION_SCORER").name == "injection"
    finally:
        platform.close()
