"""Training a small real model and loading it the way an operator would: through detoxify."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from espalier.core.infrastructure.contracts import Guardrail, JobContext, Trainer
from espalier.core.infrastructure.errors import InvalidInput
from espalier.plugins.common.text_classifiers.metrics import roc_auc
from espalier.plugins.toxicity import ClassifierTrainer, DetoxifyScorer, ProfanityScorer


@pytest.mark.slow
def test_training_writes_a_detoxify_checkpoint_and_a_card(small_model):
    out, card = small_model["dir"], small_model["card"]
    assert (out / "checkpoint.ckpt").is_file() and (out / "hf_config" / "config.json").is_file()
    written = json.loads((out / "model_card.json").read_text())
    assert written["data"]["sha256"] == card["data"]["sha256"] and len(card["data"]["sha256"]) == 64
    assert written["data"]["trained_on"] == small_model["trained_on"] and written["data"]["held_out"] == 200
    assert written["categories"] == ["toxicity"] and written["created_at"]
    # Held-out AUC well above chance after one short epoch.
    assert written["metrics"]["toxicity"]["roc_auc"] > 0.8
    fractions = [f for f, _ in small_model["updates"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.slow
def test_detoxify_loads_the_checkpoint_in_a_fresh_process(small_model):
    out = small_model["dir"]
    script = textwrap.dedent(
        f"""
        import json
        from detoxify import Detoxify
        model = Detoxify(
            checkpoint={str(out / "checkpoint.ckpt")!r}, huggingface_config_path={str(out / "hf_config")!r}
        )
        assert len(model.tokenizer) > 30000, len(model.tokenizer)
        print(json.dumps(model.predict(["you are a worthless stupid bitch", "what a lovely morning for a walk"])))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    scores = json.loads(done.stdout.strip().splitlines()[-1])["toxicity"]
    assert scores[0] > scores[1]


@pytest.mark.slow
def test_scorer_beats_chance_on_held_out_rows_and_satisfies_the_protocol(small_model, toxicity_split):
    data, _, held = toxicity_split
    scorer = DetoxifyScorer(small_model["dir"] / "checkpoint.ckpt")
    assert isinstance(scorer, Guardrail) and scorer.categories == ("toxicity",)
    rows = held[1::8]  # none of these were trained on or used for the card's metrics
    results = scorer.score([data.texts[i] for i in rows], direction="output")
    assert len(results) == len(rows) and results[0].scorer == "detoxify" and results[0].version
    auc = roc_auc([data.binary()[i] for i in rows], [r.scores["toxicity"] for r in results])
    assert auc > 0.8
    assert len(scorer.score(["just one"], direction="input")) == 1


@pytest.mark.slow
def test_beats_profanity_on_implicit_hate_it_never_saw(small_model, toxigen_split):
    # alt-profanity-check saw the tweets but only reads words; implicit hate needs more than that.
    toxigen, _, held = toxigen_split
    texts, labels = [toxigen.texts[i] for i in held], [toxigen.binary()[i] for i in held]
    trained = [
        s.scores["toxicity"]
        for s in DetoxifyScorer(small_model["dir"] / "checkpoint.ckpt").score(texts, direction="input")
    ]
    profanity = [s.scores["toxicity"] for s in ProfanityScorer().score(texts, direction="input")]
    assert roc_auc(labels, trained) > roc_auc(labels, profanity) + 0.03


@pytest.mark.slow
def test_a_moved_model_folder_still_loads(small_model, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(small_model["dir"], moved)
    original = small_model["dir"] / "hf_config"
    hidden = small_model["dir"] / "hf_config.hidden"
    original.rename(hidden)  # the checkpoint's recorded model_type no longer exists
    try:
        scorer = DetoxifyScorer(moved / "checkpoint.ckpt")
        [score] = scorer.score(["you stupid bitch"], direction="input")
        assert 0 <= score.scores["toxicity"] <= 1
    finally:
        hidden.rename(original)


def test_not_a_checkpoint_is_refused(tmp_path):
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInput, match="not a readable torch checkpoint"):
        DetoxifyScorer(bogus)


def test_a_checkpoint_naming_a_hub_model_needs_a_config_folder(tmp_path):
    import torch

    published_layout = {
        "config": {
            "arch": {
                "args": {
                    "model_type": "bert-base-uncased",
                    "model_name": "BertForSequenceClassification",
                    "tokenizer_name": "BertTokenizer",
                    "num_classes": 1,
                }
            },
            "dataset": {"args": {"classes": ["toxic"]}},
        },
        "state_dict": {},
    }
    torch.save(published_layout, tmp_path / "published.ckpt")
    with pytest.raises(InvalidInput, match="'bert-base-uncased', which is not a local folder"):
        DetoxifyScorer(tmp_path / "published.ckpt")
    with pytest.raises(InvalidInput, match="has no config.json"):
        DetoxifyScorer(tmp_path / "published.ckpt", config_dir=tmp_path)


class FakeJob:
    """A JobContext the way the job runner gives one: params, artifact folder, progress, cancel."""

    def __init__(self, params, artifact_dir, cancel_after=None):
        self.job_id = "job-1"
        self.params = params
        self.artifact_dir = str(artifact_dir)
        self.progress_calls, self.logs = [], []
        self.cancel_after = cancel_after

    def progress(self, fraction, message=""):
        self.progress_calls.append(fraction)

    def log(self, message):
        self.logs.append(message)

    def metrics(self, step, **values):
        pass

    def cancelled(self):
        return self.cancel_after is not None and len(self.progress_calls) > self.cancel_after


@pytest.mark.slow
def test_trainer_protocol_and_cancellation_between_batches(tmp_path):
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform

    # The trainer reads the operators' flags (none here) from the platform's database.
    platform = Platform(Settings(home=tmp_path / "home"), load_entry_points=False).start(run_jobs=False)
    try:
        trainer = platform.trainers.get("toxicity-classifier")
        assert isinstance(trainer, ClassifierTrainer) and isinstance(trainer, Trainer)
        rows = [{"text": f"you are an idiot number {i}", "label": "toxic"} for i in range(40)]
        rows += [{"text": f"the weather is nice on day {i}", "label": "clean"} for i in range(40)]
        data = tmp_path / "data.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in rows))
        job = FakeJob(
            {"data_path": str(data), "batch_size": 8, "max_length": 16}, tmp_path / "artifacts", cancel_after=2
        )
        assert isinstance(job, JobContext)
        result = trainer.train(job)
        assert result["status"] == "cancelled"
        assert len(job.progress_calls) == 3  # stopped at the next batch boundary
        assert not (tmp_path / "artifacts" / "checkpoint.ckpt").exists()
        with pytest.raises(InvalidInput, match="data_path"):
            trainer.train(FakeJob({}, tmp_path / "artifacts"))
        with pytest.raises(InvalidInput, match="unknown params"):
            trainer.train(FakeJob({"data_path": str(data), "epoch": 3}, tmp_path / "artifacts"))
    finally:
        platform.close()
