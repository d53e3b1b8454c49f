"""Fine-tune a shipped encoder into a detoxify-format guardrail classifier.

The output folder holds what ``detoxify.Detoxify(checkpoint=..., huggingface_config_path=...)``
needs to load the model with no network:

    out_dir/checkpoint.ckpt   torch.save({"config": ..., "state_dict": ...}) in detoxify's layout
    out_dir/hf_config/        config.json and tokenizer files (``save_pretrained``)
    out_dir/model_card.json   data source and hash, counts, settings, held-out metrics, date

detoxify builds the model config from ``config["arch"]["args"]["model_type"]``, so that field is
the absolute path of ``hf_config/``; :class:`~.detoxify_scorer.DetoxifyScorer` repairs it when
the folder has been moved. Outputs are one sigmoid per category, which is how detoxify reads
them, so training uses binary cross-entropy per category.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from espalier.core.infrastructure.errors import EspalierError, InvalidInput
from espalier.plugins.common.text_classifiers.data import (
    LabelledTexts,
    load_labelled,
    stratified_sample,
    stratified_split,
)
from espalier.plugins.common.text_classifiers.metrics import binary_report
from espalier.plugins.common.training_loop import Callbacks, Progress, Schedule, Step, base_encoder_path, train_steps

if TYPE_CHECKING:
    from espalier.core.platform import Platform

CHECKPOINT_NAME = "checkpoint.ckpt"
CONFIG_DIR_NAME = "hf_config"
CARD_NAME = "model_card.json"


class TrainingCancelled(EspalierError):
    """Training stopped because the job was cancelled; nothing was written."""

    status = 409
    code = "cancelled"


@dataclass
class TrainingSettings:
    epochs: int = 1
    max_length: int = 64
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.1
    max_examples: int | None = 3000
    holdout_fraction: float = 0.2
    seed: int = 0
    threshold: float = 0.5

    def check(self) -> None:
        if self.epochs < 1 or self.epochs > 50:
            raise InvalidInput(f"epochs must be between 1 and 50, got {self.epochs}")
        if not 8 <= self.max_length <= 512:
            raise InvalidInput(f"max_length must be between 8 and 512 tokens, got {self.max_length}")
        if not 1 <= self.batch_size <= 512:
            raise InvalidInput(f"batch_size must be between 1 and 512, got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            raise InvalidInput(f"learning_rate must be between 0 and 1, got {self.learning_rate}")
        if self.max_examples is not None and self.max_examples < 2:
            raise InvalidInput(f"max_examples must be at least 2, got {self.max_examples}")


def train_classifier(
    data: str | Path | Iterable[Mapping[str, Any]] | LabelledTexts,
    out_dir: str | Path,
    *,
    category: str = "toxicity",
    eval_data: str | Path | Iterable[Mapping[str, Any]] | LabelledTexts | None = None,
    base_model: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    name: str = "espalier-guardrail",
    metrics: Callable[..., None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Fine-tune ``base_model`` (MiniLM by default) on labelled text; write a detoxify checkpoint.

    :param data: a JSONL path, records (``{"text", "label"}`` or ``{"text", "labels": {...}}``),
        or already loaded :class:`LabelledTexts`.
    :param eval_data: held-out examples for the metrics; when absent, ``holdout_fraction`` of
        ``data`` is held out (stratified, seeded) and never trained on.
    :param settings: fields of :class:`TrainingSettings` (``epochs``, ``max_length``,
        ``batch_size``, ``learning_rate``, ``max_examples``, ``holdout_fraction``, ``seed``...).
    :returns: the model card (also written to ``out_dir/model_card.json``), including
        ``metrics`` per category on the held-out examples and the artifact paths.
    :raises InvalidInput: bad data or settings. :raises TrainingCancelled: when ``cancelled()``
        turned true between batches.
    :param metrics: ``metrics(step, loss=...)`` receives each step's loss (a job's ``job.metrics``).
    """
    unknown = set(settings) - set(TrainingSettings.__dataclass_fields__)
    if unknown:
        raise InvalidInput(
            f"unknown training settings {sorted(unknown)}; known: {sorted(TrainingSettings.__dataclass_fields__)}"
        )
    config = TrainingSettings(**settings)
    config.check()
    calls = Callbacks.of(progress, log, cancelled, metrics)

    dataset = data if isinstance(data, LabelledTexts) else load_labelled(data, category=category)
    if eval_data is None:
        train_idx, held_idx = stratified_split(dataset, config.holdout_fraction, seed=config.seed)
        held = dataset.subset(held_idx)
    else:
        train_idx = list(range(len(dataset)))
        held = eval_data if isinstance(eval_data, LabelledTexts) else load_labelled(eval_data, category=category)
        if held.categories != dataset.categories:
            raise InvalidInput(
                f"evaluation categories {held.categories} differ from training categories {dataset.categories}"
            )
    train_idx = stratified_sample(dataset, train_idx, config.max_examples, seed=config.seed)
    train = dataset.subset(train_idx)
    if min(min(c.values()) for c in train.class_counts().values()) == 0:
        raise InvalidInput(
            "after holding out evaluation rows, a category has only one class left to train on; add examples"
        )

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = base_model or base_encoder_path()
    calls.log(
        f"training on {len(train)} examples from {dataset.source} ({dataset.sha256[:12]}), evaluating on {len(held)}"
    )
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if len(tokenizer) < 1000:  # the 5-token tokenizer transformers 5 builds from a bare vocab file
        raise EspalierError(f"tokenizer loaded from {base} has only {len(tokenizer)} tokens; the folder is incomplete")
    labels = list(dataset.categories)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        problem_type="multi_label_classification",
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )

    schedule = Schedule(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        warmup_fraction=config.warmup_fraction,
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def classification_loss(rows: list[int]) -> tuple[Any, None]:
        encoded = tokenizer(
            [train.texts[i] for i in rows],
            truncation=True,
            max_length=config.max_length,
            padding=True,
            return_tensors="pt",
        )
        target = torch.tensor([train.targets[i] for i in rows], dtype=torch.float32)
        return loss_fn(model(**encoded).logits, target), None

    def after_step(step: Step) -> None:
        calls.metrics(step.number, loss=step.loss, loss_avg=step.loss_avg)
        calls.progress(
            0.9 * step.number / step.total,
            f"epoch {step.epoch}/{config.epochs} step {step.number}/{step.total} loss {step.loss_avg:.3f}",
        )

    done = train_steps(
        model, len(train), schedule, classification_loss, after_step, calls, cancelled_error=TrainingCancelled
    )
    calls.log(f"trained {done.steps} steps in {done.seconds:.1f}s, final loss {done.loss_avg:.3f}")

    calls.progress(0.9, "evaluating on held-out examples")
    model.eval()
    scores = predict_scores(model, tokenizer, held.texts, max_length=config.max_length, cancelled=calls.cancelled)
    held_out_metrics = {}
    for j, label in enumerate(labels):
        y = held.binary(label)
        if 0 < sum(y) < len(y):
            held_out_metrics[label] = binary_report(y, [row[j] for row in scores], config.threshold)

    calls.progress(0.95, "saving checkpoint")
    card = {
        "name": name,
        "format": "detoxify",
        "categories": labels,
        "base_model": base,
        "data": {
            "source": dataset.source,
            "sha256": dataset.sha256,
            "examples": len(dataset),
            "trained_on": len(train),
            "held_out": len(held),
            "held_out_source": "split of the training data" if eval_data is None else held.source,
            "class_counts_trained": train.class_counts(),
        },
        "settings": vars(config),
        "metrics": held_out_metrics,
        "train_seconds": round(done.seconds, 1),
        "final_loss": round(done.loss_avg, 4),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    paths = save_checkpoint(model, tokenizer, labels, Path(out_dir), card=card, max_length=config.max_length)
    card["artifacts"] = {key: str(value) for key, value in paths.items()}
    calls.progress(1.0, "done")
    return card


def predict_scores(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    max_length: int,
    batch_size: int = 64,
    cancelled: Callable[[], bool] | None = None,
) -> list[list[float]]:
    import torch

    rows: list[list[float]] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            if cancelled and cancelled():
                raise TrainingCancelled("training cancelled during evaluation")
            encoded = tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            rows.extend(torch.sigmoid(model(**encoded).logits).tolist())
    return rows


def save_checkpoint(
    model: Any, tokenizer: Any, labels: list[str], out_dir: Path, *, card: Mapping[str, Any], max_length: int
) -> dict[str, Path]:
    """Write the detoxify checkpoint, the offline config folder and the model card."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    config_dir = (out_dir / CONFIG_DIR_NAME).resolve()
    model.config.save_pretrained(config_dir)
    # detoxify tokenizes with truncation=True and no max_length: the saved limit is the one used.
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(config_dir)
    checkpoint = {
        "config": {
            "name": card.get("name", "espalier-guardrail"),
            "arch": {
                "type": "espalier",
                "args": {
                    "model_type": str(config_dir),
                    "model_name": type(model).__name__,
                    "tokenizer_name": type(tokenizer).__name__,
                    "num_classes": len(labels),
                },
            },
            "dataset": {"args": {"classes": list(labels)}},
        },
        "state_dict": {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()},
        "espalier": {"model_card": dict(card)},
    }
    checkpoint_path = out_dir / CHECKPOINT_NAME
    partial = checkpoint_path.with_suffix(".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, checkpoint_path)
    card_path = out_dir / CARD_NAME
    card_path.write_text(json.dumps(dict(card), indent=2, default=str) + "\n")
    return {"checkpoint": checkpoint_path.resolve(), "config_dir": config_dir, "model_card": card_path.resolve()}


def train_toxicity_model(
    data: str | Path | Iterable[Mapping[str, Any]] | LabelledTexts,
    out_dir: str | Path,
    *,
    epochs: int = 1,
    max_length: int = 64,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train a toxicity classifier (category ``toxicity`` unless the data names its own).

    Same options as :func:`train_classifier`. Returns the model card with held-out ``metrics``.
    """
    options.setdefault("category", "toxicity")
    options.setdefault("name", "espalier-toxicity")
    return train_classifier(data, out_dir, epochs=epochs, max_length=max_length, progress=progress, **options)


class ClassifierTrainer:
    """The job-facing trainer: ``train:<name>`` jobs with ``params`` such as ``{"data_path": ...}``.

    Params: ``data_path`` (JSONL on the server), optional ``eval_path``, ``include_flags`` (default
    true: add the texts operators flagged for this category, see
    :class:`~espalier.core.interface.guardrails.flags.GuardrailFlagService`; with flags of both classes,
    ``data_path`` may be left out), ``judge`` (default false: record the model as the independent
    ``judge`` that evaluations use, not as the guardrail; flags then stay out unless asked for) and
    any :class:`TrainingSettings` field. The checkpoint goes to the job's ``artifact_dir``; each
    step's loss to the job's metrics.
    """

    SETTINGS = frozenset(TrainingSettings.__dataclass_fields__)

    def __init__(
        self,
        platform: Platform,
        name: str,
        description: str,
        *,
        category: str,
        model_name: str,
        record_dir: str | Path | None = None,
    ):
        self.platform = platform  # where operators' flagged examples are read
        self.name = name
        # Where a finished model is recorded as the one to serve (None: only the job's artifact).
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.description = description
        self.category = category
        self.model_name = model_name

    @classmethod
    def for_guardrail(cls, platform: Platform, category: str, description: str) -> ClassifierTrainer:
        """The ``<category>-classifier`` trainer of a guardrail plugin: it trains ``espalier-<category>``
        and records it as the model the platform serves for ``category`` from the next start."""
        return cls(
            platform,
            f"{category}-classifier",
            description,
            category=category,
            model_name=f"espalier-{category}",
            record_dir=platform.settings.guardrail_models_dir,
        )

    def training_data(self, data_path: str | None, flags: list[dict[str, Any]]) -> LabelledTexts:
        """The file's examples plus the operators' flags (which need not cover both classes alone)."""
        if not flags:
            return load_labelled(data_path, category=self.category)  # type: ignore[arg-type]
        source = f"{len(flags)} operator flags"
        if not data_path:
            flagged = load_labelled(flags, category=self.category)
            flagged.source = source
            return flagged
        data = load_labelled(data_path, category=self.category)
        if data.categories != [self.category]:
            raise InvalidInput(
                f"{data_path} labels categories {data.categories}; operator flags label only "
                f"'{self.category}': train with include_flags=false, or a single-label file"
            )
        digest = hashlib.sha256(json.dumps(flags, sort_keys=True).encode()).hexdigest()
        flagged = LabelledTexts(
            [f["text"] for f in flags],
            [[float(f["label"])] for f in flags],
            [self.category],
            source=source,
            sha256=digest,
        )
        return LabelledTexts.concat(data, flagged)

    def flagged(self) -> list[dict[str, Any]]:
        return self.platform.guardrail_flags.examples(self.category)

    def train(self, job: Any) -> Mapping[str, Any]:
        params = dict(job.params or {})
        data_path = params.pop("data_path", None)
        # judge: record it as the independent scorer that judges evaluations, not as the guardrail.
        judge = bool(params.pop("judge", False))
        include_flags = bool(params.pop("include_flags", not judge))
        flags = self.flagged() if include_flags else []
        if not data_path and not flags:
            raise InvalidInput(
                f'job params need \'data_path\': a JSONL file of {{"text", "label"}} lines for {self.name} '
                f"(or {self.category} flags set by operators on the console's Feedback page)"
            )
        eval_path = params.pop("eval_path", None)
        unknown = set(params) - self.SETTINGS
        if unknown:
            raise InvalidInput(
                f"unknown params {sorted(unknown)}; known: data_path, eval_path, include_flags, judge, "
                f"{', '.join(sorted(self.SETTINGS))}"
            )
        data = self.training_data(data_path, flags)
        if flags:
            job.log(f"{len(flags)} operator-flagged {self.category} examples included")
        try:
            card = train_classifier(
                data,
                job.artifact_dir,
                category=self.category,
                eval_data=eval_path,
                name=self.model_name,
                progress=job.progress,
                log=job.log,
                cancelled=job.cancelled,
                metrics=getattr(job, "metrics", None),
                **params,
            )
        except TrainingCancelled as exc:
            return {"status": "cancelled", "message": exc.message}
        if self.record_dir is not None:
            from espalier.core.interface.guardrails.policies import record_trained_model

            if judge:
                record_trained_model(self.record_dir, f"{self.category}-judge", card)
                job.log(f"recorded as the {self.category} judge of evaluations from the next start")
            else:
                record_trained_model(self.record_dir, self.category, card)
                job.log(f"recorded as the {self.category} model served from the next start")
        return {"status": "trained", **card}
