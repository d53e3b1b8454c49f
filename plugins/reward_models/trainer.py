"""The ``reward`` trainer (job ``train:reward``) and the retraining trigger."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from espalier.core.infrastructure.errors import EspalierError, InvalidInput
from espalier.core.sources.reward.settings import settings_from
from espalier.plugins.reward_models.features import FORMAT as FEATURES_FORMAT
from espalier.plugins.reward_models.features import backbone_folder, train_feature_reward_model
from espalier.plugins.reward_models.scoring import CARD_NAME
from espalier.plugins.reward_models.training import evaluate, train_reward_model

if TYPE_CHECKING:
    from espalier.core.platform import Platform

log = logging.getLogger("espalier.reward")
JOB_KIND = "train:reward"
FORMATS = {"features": FEATURES_FORMAT, "cross-encoder": "espalier-reward/1"}
KIND_OF_FORMAT = {fmt: kind for kind, fmt in FORMATS.items()}
#: Settings a kind does not use (the features kind fits its heads fully; the cross-encoder has one head).
IGNORED_BY = {
    "features": ("epochs", "batch_size", "learning_rate", "max_steps"),
    "cross-encoder": ("heads", "backbone"),
}


class RewardTrainer:
    name = "reward"
    description = (
        "Train a reward model (heads on the chat model's frozen features, or the MiniLM cross-encoder; "
        "pairwise loss) on the preference pairs from feedback and imports; it becomes current only if "
        "not worse on the same held-out pairs"
    )

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def finished(self, job: Any) -> None:
        """Feedback that arrived while this run trained starts the next one now, not at the next submission."""
        maybe_retrain(self.platform)

    def train(self, job: Any) -> Mapping[str, Any]:
        platform = self.platform
        params = dict(job.params)
        include_imported = bool(params.pop("include_imported", True))
        exclude = params.pop("exclude_labelers", []) or []
        auto = bool(params.pop("auto", False))
        warm_start = bool(params.pop("warm_start", True))
        below_consensus = bool(params.pop("include_below_consensus", False))
        params.pop("pairs_at_submit", None)
        ai_weight = float(params.pop("ai_pair_weight", platform.settings.ai_pair_weight))
        if not 0 <= ai_weight <= 1:
            raise InvalidInput(f"ai_pair_weight must be between 0 and 1 (got {ai_weight})")
        current = platform.reward_models.current()
        previous = _card(current) if current is not None else None
        if auto and previous is not None:
            # An automatic retrain trains as the current version was trained, bar what the operator set.
            kind = previous.get("settings", {}).get("kind") or KIND_OF_FORMAT.get(
                previous.get("format"), "cross-encoder"
            )
            params = {**previous.get("settings", {}), "kind": kind, **params}
            job.log(f"settings of the current v{current.version}: {params}")
        settings = settings_from(params)
        ignored = sorted(set(params) & set(IGNORED_BY[settings.kind]) - {"auto"})
        if ignored and not auto:
            job.log(f"{settings.kind}: {', '.join(ignored)} do not apply to this kind and are ignored")
        init_from = None
        if warm_start and previous is not None:
            if previous.get("settings", {}).get("holdout_fraction") != settings.holdout_fraction:
                # Another held-out fraction moves pairs between the sides: the current version may have
                # trained on pairs that now judge it, so it cannot be the starting point.
                job.log("training from scratch: the held-out fraction differs from the current version's")
            elif previous.get("format") != FORMATS[settings.kind]:
                job.log("training from scratch: the current version is of another kind")
            else:
                init_from = current.path
        pairs = platform.pairs.all(
            include_imported=include_imported,
            exclude_labelers=exclude,
            ai_weight=ai_weight,
            exclude_below_consensus=False if below_consensus else None,
        )
        ai_pairs = sum(pair.origin == "ai" for pair in pairs)
        job.log(
            f"{len(pairs)} pairs in the snapshot (imports {'included' if include_imported else 'excluded'}; "
            f"{ai_pairs} AI pairs at weight {ai_weight})"
        )
        callbacks = {
            "progress": job.progress,
            "log": job.log,
            "cancelled": job.cancelled,
            "metrics": getattr(job, "metrics", None),
        }
        if settings.kind == "features":
            name = settings.backbone or platform.settings.default_model
            try:
                backbone = backbone_folder(platform, name)
            except EspalierError as exc:
                raise InvalidInput(
                    f"the features kind reads the backbone of a local chat model, and '{name}' has none here "
                    f"({exc}); give backbone=<a local chat model>, or train kind=cross-encoder"
                ) from None
            card = train_feature_reward_model(
                pairs, job.artifact_dir + "/reward-model", settings, backbone=backbone, init_from=init_from, **callbacks
            )
        else:
            card = train_reward_model(
                pairs,
                job.artifact_dir + "/reward-model",
                settings,
                base_model=previous.get("base_model") if init_from and previous else None,
                init_from=init_from,
                **callbacks,
            )
        held = card.pop("held_out_pairs")
        current_accuracy = None
        if current is not None:
            try:
                scorer = platform.reward_models.scorer(current)
                current_accuracy = evaluate(scorer.score, held)["accuracy"]
                job.log(f"current v{current.version} scores {current_accuracy:.4f} on the same held-out pairs")
            except Exception as exc:  # a missing artifact must not block a fresh model forever
                job.log(f"could not evaluate the current model v{current.version}: {exc!r}")
        record = platform.reward_models.register(
            path=job.artifact_dir + "/reward-model",
            base_model=card["base_model"],
            data_sha256=card["data"]["sha256"],
            pairs=card["data"]["pairs"],
            metrics=card["metrics"],
            current_accuracy_same_holdout=current_accuracy,
            job_id=job.job_id,
        )
        job.log(record.decision)
        return {
            "reward_model": record.id,
            "version": record.version,
            "current": record.is_current,
            "decision": record.decision,
            "metrics": card["metrics"],
            "data": card["data"],
            "warm_start": card["warm_start"],
        }


def _card(record: Any) -> dict[str, Any] | None:
    """A version's reward card (its settings, base model and format), or None when unreadable."""
    try:
        return json.loads((Path(record.path) / CARD_NAME).read_text())
    except (OSError, ValueError):
        return None


def maybe_retrain(platform: Any) -> str | None:
    """Submit a retrain when enough new pairs arrived since the current model's snapshot."""
    threshold = platform.settings.reward_retrain_after_pairs
    if threshold <= 0 or not platform.started:  # a platform that is not serving has no workers to train
        return None
    with platform.state.setdefault("reward_retrain_lock", threading.Lock()):  # threads of this platform
        jobs = platform.jobs.list(kind=JOB_KIND, limit=20)
        if any(j.status in ("queued", "running") for j in jobs):
            return None
        latest = platform.reward_models.list()
        baseline = latest[0].pairs if latest else 0
        # A failed automatic run also counts, so a broken setup does not resubmit on every feedback.
        submitted = [j.params.get("pairs_at_submit", 0) for j in jobs if j.params.get("auto")]
        baseline = max([baseline, *submitted])
        total = platform.pairs.count()
        if total - baseline < threshold or total < 2:
            return None
        # Across processes (several API replicas, or a CLI beside the server): the database decides.
        job = platform.jobs.submit_exclusive(
            JOB_KIND,
            {**platform.settings.reward_retrain_params, "auto": True, "pairs_at_submit": total},
            created_by=None,
        )
        if job is None:
            return None
        log.info("submitted reward retrain %s: %d pairs now, %d at the last training", job.id, total, baseline)
        platform.audit.record(None, "reward.retrain", job.id, pairs=total, since=baseline)
        return job.id
