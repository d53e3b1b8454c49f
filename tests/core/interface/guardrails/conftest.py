"""Shared fixtures: the real data in ``<repo root>/../shared/data`` and one small trained model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support import REPO

REPO_ROOT = REPO
DATA_DIR = REPO_ROOT.parent / "shared" / "data"

# Nothing here may reach a model hub; make any attempt fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def data_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        pytest.fail(f"{path} is missing; these tests read the shared data beside the repository")
    return path


@pytest.fixture(scope="session")
def read_jsonl():
    """``read_jsonl(name)``: the rows of a shared data file (fails the test when it is missing)."""

    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in data_file(name).read_text().splitlines() if line.strip()]

    return read


@pytest.fixture(scope="session")
def toxicity_split():
    """The toxicity data and a seeded stratified split: (data, train indices, held-out indices)."""
    from espalier.plugins.toxicity import load_labelled, stratified_split

    data = load_labelled(data_file("toxicity_train.jsonl"))
    train, held = stratified_split(data, 0.2, seed=0)
    return data, train, held


@pytest.fixture(scope="session")
def toxigen_split():
    """Implicit hate (no profanity in most toxic rows): half to train on, half held out."""
    from espalier.plugins.toxicity import load_labelled, stratified_split

    data = load_labelled(data_file("toxigen_train.jsonl"))
    train, held = stratified_split(data, 0.5, seed=0)
    return data, train, held


@pytest.fixture(scope="session")
def small_model(tmp_path_factory, toxicity_split, toxigen_split):
    """A toxicity model trained for one short epoch on 400 tweets plus half of the implicit-hate
    sentences (twice); the held-out rows of both are never seen."""
    from espalier.plugins.common.text_classifiers.data import stratified_sample
    from espalier.plugins.toxicity import LabelledTexts, train_toxicity_model

    data, train, held = toxicity_split
    toxigen, toxigen_train, _ = toxigen_split
    # The implicit-hate half is repeated so that one short epoch sees it often enough.
    tweets, implicit = data.subset(stratified_sample(data, train, 400, seed=0)), toxigen.subset(toxigen_train)
    training = LabelledTexts.concat(tweets, implicit, implicit)
    out = tmp_path_factory.mktemp("toxicity-model")
    updates = []
    card = train_toxicity_model(
        training,
        out,
        eval_data=data.subset(held[::8]),
        epochs=1,
        max_length=48,
        learning_rate=2e-4,
        max_examples=None,
        progress=lambda fraction, message="": updates.append((fraction, message)),
    )
    return {"dir": out, "card": card, "updates": updates, "trained_on": len(training)}
