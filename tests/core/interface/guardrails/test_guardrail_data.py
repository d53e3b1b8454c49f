"""Reading and checking training data: every bad input is an InvalidInput that names the problem."""

from __future__ import annotations

import json

import pytest

from espalier.core.infrastructure.errors import InvalidInput
from espalier.plugins.common.text_classifiers.metrics import binary_report, precision_recall, roc_auc
from espalier.plugins.toxicity import load_labelled, stratified_split, train_toxicity_model


def write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_reads_the_shared_toxicity_file(toxicity_split):
    data, train, held = toxicity_split
    assert data.categories == ["toxicity"]
    assert len(data) == 8000
    assert data.class_counts()["toxicity"] == {"positive": 4781, "negative": 3219}
    assert not set(train) & set(held)
    assert len(held) == 1600
    # Stratified: the held-out share of toxic rows matches the file's.
    assert abs(sum(data.binary()[i] for i in held) / len(held) - 4781 / 8000) < 0.01


def test_split_is_deterministic(toxicity_split):
    data, train, held = toxicity_split
    assert stratified_split(data, 0.2, seed=0) == (train, held)
    assert stratified_split(data, 0.2, seed=1)[1] != held


def test_label_shapes(tmp_path):
    words = load_labelled(write(tmp_path, [{"text": "a b c", "label": "toxic"}, {"text": "d e f", "label": "clean"}]))
    assert words.targets == [[1.0], [0.0]]
    numbers = load_labelled(
        [{"text": "x", "label": 1}, {"text": "y", "label": 0}, {"text": "z", "label": True}], category="injection"
    )
    assert numbers.categories == ["injection"] and numbers.binary() == [1, 0, 1]
    multi = load_labelled(
        [{"text": "x", "labels": {"toxicity": 1, "insult": 0}}, {"text": "y", "labels": {"toxicity": 0, "insult": 1}}]
    )
    assert multi.categories == ["insult", "toxicity"] and multi.targets == [[0.0, 1.0], [1.0, 0.0]]


@pytest.mark.parametrize(
    "lines, message",
    [
        ([], "no examples"),
        (["", "   "], "no examples"),
        ([{"text": "fine", "label": "clean"}, "{not json"], "line 2 is not valid JSON"),
        ([{"text": "fine", "label": "clean"}, {"text": "hm", "label": "maybe"}], "label 'maybe' is not understood"),
        ([{"text": "fine", "label": 2}, {"text": "bad", "label": 1}], "label 2 is not understood"),
        ([{"text": "fine", "label": "clean"}, {"text": "also fine", "label": "clean"}], "all 2 examples are negative"),
        ([{"text": "bad", "label": 1}, {"text": "worse", "label": 1}], "all 2 examples are positive"),
        ([{"text": "", "label": 1}, {"text": "ok", "label": 0}], "must be a non-empty string"),
        ([{"label": 1}, {"text": "ok", "label": 0}], "must be a non-empty string"),
        ([{"text": "a", "score": 1}], "no 'label' field"),
        ([[1, 2]], "expected a JSON object"),
        (
            [{"text": "a", "labels": {"toxicity": 1}}, {"text": "b", "labels": {"insult": 0}}],
            "differ from the first line",
        ),
        ([{"text": "a", "labels": {"toxicity": 3}}], "must be 0/1 or a probability"),
    ],
)
def test_bad_input_is_refused(tmp_path, lines, message):
    with pytest.raises(InvalidInput, match=message):
        load_labelled(write(tmp_path, lines))


def test_trainer_refuses_bad_input_before_loading_a_model(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        train_toxicity_model(tmp_path / "missing.jsonl", tmp_path / "out")
    with pytest.raises(InvalidInput, match="all 3 examples are positive"):
        train_toxicity_model([{"text": t, "label": "toxic"} for t in "abc"], tmp_path / "out")
    with pytest.raises(InvalidInput, match="epochs"):
        train_toxicity_model([{"text": "a", "label": 1}, {"text": "b", "label": 0}], tmp_path / "out", epochs=0)
    with pytest.raises(InvalidInput, match="unknown training settings"):
        train_toxicity_model([{"text": "a", "label": 1}, {"text": "b", "label": 0}], tmp_path / "out", epoch=1)
    assert not (tmp_path / "out").exists()


def test_metrics():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc([0, 1, 1], [0.3, 0.3, 0.9]) == 0.75
    assert precision_recall([0, 1, 1, 0], [0.9, 0.8, 0.1, 0.2]) == (0.5, 0.5)
    # accuracy at the threshold: 0.9 and 0.1 are wrong, 0.8 and 0.2 right; a score equal to it counts as flagged
    assert binary_report([0, 1, 1, 0], [0.9, 0.8, 0.1, 0.2])["accuracy"] == 0.5
    assert binary_report([0, 1], [0.49, 0.5])["accuracy"] == 1.0
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.2, 0.3])
