"""Labelled text for guardrail classifiers: reading JSONL, checking it, splitting it.

Two line shapes are accepted (one per file, not mixed):

* single category: ``{"text": "...", "label": L}`` where ``L`` is 0/1, true/false, or a word
  such as ``"toxic"``/``"clean"`` or ``"injection"``/``"benign"`` (see ``POSITIVE_WORDS``);
* several categories: ``{"text": "...", "labels": {"toxicity": 1, "insult": 0}}``, every line
  naming the same categories, each value 0/1 (or a probability in [0, 1]).

Every problem is reported as :class:`~espalier.core.infrastructure.errors.InvalidInput` naming the line, so an
operator who uploads a file through the API learns what to fix.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from espalier.core.infrastructure.errors import InvalidInput

POSITIVE_WORDS = frozenset({"1", "true", "yes", "positive", "toxic", "injection", "unsafe", "harmful"})
NEGATIVE_WORDS = frozenset({"0", "false", "no", "negative", "clean", "benign", "safe", "harmless", "neither"})

#: Files bigger than this are refused; the trainer subsamples anyway.
MAX_EXAMPLES = 1_000_000


@dataclass
class LabelledTexts:
    """Texts with one target per category (``targets[i][j]`` is text ``i``'s label for category ``j``)."""

    texts: list[str]
    targets: list[list[float]]
    categories: list[str]
    source: str = "records"
    sha256: str = ""
    extra: list[Mapping[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> LabelledTexts:
        return LabelledTexts(
            texts=[self.texts[i] for i in indices],
            targets=[self.targets[i] for i in indices],
            categories=list(self.categories),
            source=f"{self.source} [{len(indices)} of {len(self)} rows]",
            sha256=self.sha256,
            extra=[self.extra[i] for i in indices] if self.extra else [],
        )

    @classmethod
    def concat(cls, *parts: LabelledTexts) -> LabelledTexts:
        """Examples of several sources in one set (categories must agree); the hash covers all."""
        if not parts or any(p.categories != parts[0].categories for p in parts):
            raise InvalidInput("can only combine labelled sets with the same categories")
        return cls(
            texts=[t for p in parts for t in p.texts],
            targets=[row for p in parts for row in p.targets],
            categories=list(parts[0].categories),
            source=" + ".join(p.source for p in parts),
            sha256=hashlib.sha256("".join(p.sha256 for p in parts).encode()).hexdigest(),
        )

    def binary(self, category: str | None = None) -> list[int]:
        """0/1 labels of one category (the first by default), thresholded at 0.5."""
        column = self.categories.index(category) if category else 0
        return [int(row[column] >= 0.5) for row in self.targets]

    def class_counts(self) -> dict[str, dict[str, int]]:
        counts = {}
        for j, category in enumerate(self.categories):
            positives = sum(1 for row in self.targets if row[j] >= 0.5)
            counts[category] = {"positive": positives, "negative": len(self.targets) - positives}
        return counts


def load_labelled(
    source: str | Path | Iterable[Mapping[str, Any]],
    *,
    category: str = "toxicity",
    text_field: str = "text",
    label_field: str = "label",
    positive_words: Iterable[str] = POSITIVE_WORDS,
    negative_words: Iterable[str] = NEGATIVE_WORDS,
) -> LabelledTexts:
    """Read and check labelled examples from a JSONL file or from records already in memory.

    :param category: the category name a single ``label`` field stands for.
    :raises InvalidInput: empty input, malformed JSON, a missing or empty text, an unknown label,
        categories that differ between lines, or a category with only one class.
    """
    positive = {w.lower() for w in positive_words}
    negative = {w.lower() for w in negative_words}
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InvalidInput(f"training data {path} does not exist or is not a file")
        raw = path.read_bytes()
        records = _parse_jsonl(raw, str(path))
        origin, digest = str(path), hashlib.sha256(raw).hexdigest()
    else:
        records = [(i + 1, r) for i, r in enumerate(source)]
        origin = "records"
        digest = hashlib.sha256(
            "\n".join(json.dumps(r, sort_keys=True, default=str) for _, r in records).encode()
        ).hexdigest()
    if not records:
        raise InvalidInput(f"training data {origin} has no examples; give one JSON object per line")
    if len(records) > MAX_EXAMPLES:
        raise InvalidInput(f"training data {origin} has {len(records)} examples; the limit is {MAX_EXAMPLES}")

    texts: list[str] = []
    targets: list[list[float]] = []
    categories: list[str] | None = None
    for line_no, record in records:
        where = f"{origin} line {line_no}"
        if not isinstance(record, Mapping):
            raise InvalidInput(f"{where}: expected a JSON object, got {type(record).__name__}")
        text = record.get(text_field)
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"{where}: field '{text_field}' must be a non-empty string")
        if "labels" in record and label_field not in record:
            row_categories, row = _multi_label(record["labels"], where)
        elif label_field in record:
            row_categories, row = [category], [_single_label(record[label_field], where, positive, negative)]
        else:
            raise InvalidInput(f"{where}: no '{label_field}' field (or 'labels' object with one value per category)")
        if categories is None:
            categories = row_categories
        elif row_categories != categories:
            raise InvalidInput(f"{where}: categories {row_categories} differ from the first line's {categories}")
        texts.append(text)
        targets.append(row)

    assert categories is not None
    data = LabelledTexts(texts, targets, categories, source=origin, sha256=digest)
    for name, counts in data.class_counts().items():
        if counts["positive"] == 0 or counts["negative"] == 0:
            only = "positive" if counts["negative"] == 0 else "negative"
            raise InvalidInput(
                f"training data {origin}: all {len(data)} examples are {only} for '{name}'; "
                "a classifier needs examples of both classes"
            )
    return data


def _parse_jsonl(raw: bytes, origin: str) -> list[tuple[int, Any]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"training data {origin} is not UTF-8 text: {exc}") from None
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"{origin} line {line_no} is not valid JSON ({exc.msg}); expected one object per line"
            ) from None
    return records


def _single_label(value: Any, where: str, positive: set[str], negative: set[str]) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return float(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in positive:
            return 1.0
        if word in negative:
            return 0.0
    raise InvalidInput(
        f"{where}: label {value!r} is not understood; use 0/1, true/false, "
        f"or one of {sorted(positive)} / {sorted(negative)}"
    )


def _multi_label(value: Any, where: str) -> tuple[list[str], list[float]]:
    if not isinstance(value, Mapping) or not value:
        raise InvalidInput(f"{where}: 'labels' must be an object mapping each category to 0/1")
    names, row = [], []
    for name, label in sorted(value.items()):
        if isinstance(label, bool):
            label = float(label)
        if not isinstance(label, (int, float)) or not 0 <= label <= 1:
            raise InvalidInput(f"{where}: label {label!r} for category '{name}' must be 0/1 or a probability in [0, 1]")
        names.append(str(name))
        row.append(float(label))
    return names, row


def stratified_split(data: LabelledTexts, fraction: float, *, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices ``(kept, held_out)``, holding out ``fraction`` of each class of the first category.

    Deterministic for a given ``seed``: the bench and the tests hold out the same rows.
    """
    if not 0 < fraction < 1:
        raise InvalidInput(f"held-out fraction must be between 0 and 1, got {fraction}")
    rng = random.Random(seed)
    labels = data.binary()
    kept, held = [], []
    for cls in (0, 1):
        members = [i for i, y in enumerate(labels) if y == cls]
        rng.shuffle(members)
        cut = max(1, round(len(members) * fraction))
        held.extend(members[:cut])
        kept.extend(members[cut:])
    return sorted(kept), sorted(held)


def stratified_sample(data: LabelledTexts, indices: Sequence[int], size: int | None, *, seed: int = 0) -> list[int]:
    """At most ``size`` of ``indices``, keeping the class balance of the first category."""
    if size is None or size >= len(indices):
        return list(indices)
    rng = random.Random(seed)
    labels = data.binary()
    chosen = []
    for cls in (0, 1):
        members = [i for i in indices if labels[i] == cls]
        rng.shuffle(members)
        chosen.extend(members[: max(1, round(size * len(members) / len(indices)))])
    return sorted(chosen)
