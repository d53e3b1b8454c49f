"""Small evaluation helpers shared by the trainers, the tests and ``bench/guardrails.py``.

Written out rather than imported from scikit-learn so that scoring a guardrail does not make
scikit-learn a direct dependency of Espalier (it only arrives through alt-profanity-check).
"""

from __future__ import annotations

from collections.abc import Sequence


def roc_auc(labels: Sequence[int | bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the chance that a random positive outscores a random negative
    (ties count one half). Raises ``ValueError`` when either class is missing."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
    positives = sum(1 for y in labels if y)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC needs at least one positive and one negative example")
    # Mann-Whitney U with average ranks for ties.
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        average_rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = average_rank
        i = j + 1
    positive_rank_sum = sum(rank for rank, y in zip(ranks, labels, strict=False) if y)
    return (positive_rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def precision_recall(
    labels: Sequence[int | bool], scores: Sequence[float], threshold: float = 0.5
) -> tuple[float, float]:
    """Precision and recall of ``score >= threshold``; precision is 0.0 when nothing is flagged."""
    flagged = [s >= threshold for s in scores]
    true_positives = sum(1 for f, y in zip(flagged, labels, strict=False) if f and y)
    flagged_count = sum(flagged)
    positives = sum(1 for y in labels if y)
    precision = true_positives / flagged_count if flagged_count else 0.0
    recall = true_positives / positives if positives else 0.0
    return precision, recall


def binary_report(labels: Sequence[int | bool], scores: Sequence[float], threshold: float = 0.5) -> dict[str, float]:
    precision, recall = precision_recall(labels, scores, threshold)
    correct = sum(1 for y, s in zip(labels, scores, strict=True) if bool(y) == (s >= threshold))
    return {
        "roc_auc": roc_auc(labels, scores),
        "accuracy": correct / len(labels) if labels else 0.0,
        "precision": precision,
        "recall": recall,
        "threshold": threshold,
        "n": len(labels),
        "positives": sum(1 for y in labels if y),
    }
