"""Reward model versions: register a trained artifact, decide whether it becomes current, score.

A new version becomes current only when its held-out pairwise accuracy is not worse than the
current version's measured on the *same* held-out pairs (the trainer evaluates both), so a
retrain on noisier data cannot silently replace a better model.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import select

from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.contracts import RewardScorer, RewardScorerLoader
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import Conflict, InvalidInput, NotFound, Unavailable
from espalier.core.infrastructure.identity import Principal
from espalier.core.sources.reward.settings import settings_from
from espalier.core.sources.reward.tables import RewardModelRecord

if TYPE_CHECKING:
    from espalier.core.infrastructure.jobs.service import JobService
    from espalier.core.sources.feedback.store import PairStore

MAX_SCORE_ITEMS = 64


TRAIN_JOB = "train:reward"
#: Job parameters about which pairs train, not how (the trainer reads them; the settings do not).
PAIR_PARAMS = ("include_imported", "exclude_labelers", "ai_pair_weight", "include_below_consensus", "warm_start")


class RewardModelService:
    def __init__(
        self,
        engine: Engine,
        *,
        pairs: Callable[[], PairStore] | None = None,
        jobs: Callable[[], JobService] | None = None,
        audit: AuditLog | None = None,
        ai_pair_weight: float = 0.5,
        loader: Callable[[], RewardScorerLoader] | None = None,
    ):
        """``pairs`` and ``jobs`` (given by the platform) let it queue trainings itself."""
        self.engine = engine
        self._pairs = pairs
        self._jobs = jobs
        self.audit = audit
        self.ai_pair_weight = ai_pair_weight
        self._loader = loader
        self._loaded: dict[str, RewardScorer] = {}
        self._lock = threading.Lock()

    def list(self) -> list[RewardModelRecord]:
        with session_scope(self.engine) as session:
            return list(session.exec(select(RewardModelRecord).order_by(RewardModelRecord.version.desc())))

    def current(self) -> RewardModelRecord | None:
        with session_scope(self.engine) as session:
            return session.exec(select(RewardModelRecord).where(RewardModelRecord.is_current == True)).first()  # noqa: E712

    def get(self, ref: str) -> RewardModelRecord:
        with session_scope(self.engine) as session:
            query = select(RewardModelRecord)
            query = (
                query.where(RewardModelRecord.version == int(ref))
                if ref.isdigit()
                else query.where(RewardModelRecord.id == ref)
            )
            record = session.exec(query).first()
        if record is None:
            raise NotFound(f"no reward model '{ref}'; GET /api/reward/models lists them")
        return record

    def register(
        self,
        *,
        path: str,
        base_model: str,
        data_sha256: str,
        pairs: int,
        metrics: Mapping[str, Any],
        current_accuracy_same_holdout: float | None,
        job_id: str | None,
    ) -> RewardModelRecord:
        """Record a trained artifact and promote it when it is not worse than the current one."""
        with session_scope(self.engine) as session:
            current = session.exec(select(RewardModelRecord).where(RewardModelRecord.is_current == True)).first()  # noqa: E712
            version = (session.exec(select(func.max(RewardModelRecord.version))).one() or 0) + 1
            accuracy = float(metrics["accuracy"])
            if current is None:
                promote, decision = True, "first reward model"
            elif current_accuracy_same_holdout is None:
                promote, decision = False, "kept the current model: it could not be evaluated on the new held-out pairs"
            else:
                promote = accuracy >= current_accuracy_same_holdout
                decision = (
                    f"held-out accuracy {accuracy:.4f} vs current v{current.version} "
                    f"{current_accuracy_same_holdout:.4f} on the same pairs: "
                    + ("promoted (not worse)" if promote else "rejected (worse)")
                )
            if promote and current is not None:
                session.execute(
                    update(RewardModelRecord)
                    .where(RewardModelRecord.id == current.id)
                    .values(is_current=False, status="retired")
                )
            record = RewardModelRecord(
                id=f"rm_{secrets.token_hex(8)}",
                version=version,
                status="current" if promote else "rejected",
                is_current=promote,
                base_model=base_model,
                path=path,
                data_sha256=data_sha256,
                pairs=pairs,
                metrics={**metrics, "current_accuracy_same_holdout": current_accuracy_same_holdout},
                decision=decision,
                job_id=job_id,
            )
            session.add(record)
        return record

    def scorer(self, record: RewardModelRecord) -> RewardScorer:
        """The version's scorer, loaded once by the chosen reward scorer plugin."""
        if self._loader is None:
            raise Unavailable("no reward scorer plugin is loaded (the built-in one is reward_models)")
        with self._lock:
            if record.id not in self._loaded:
                self._loaded[record.id] = self._loader().load(Path(record.path))
            return self._loaded[record.id]

    def score(
        self, items: Sequence[tuple[str, str]], *, version: str | None = None
    ) -> tuple[RewardModelRecord, list[float]]:
        if not items:
            raise InvalidInput("give at least one (prompt, completion) item to score")
        if len(items) > MAX_SCORE_ITEMS:
            raise InvalidInput(f"score at most {MAX_SCORE_ITEMS} items per call")
        record = self.get(version) if version else self.current()
        if record is None:  # a state to change, not a server fault: 409 as policy updates answer it
            raise Conflict(
                "no reward model is trained yet: submit a 'train:reward' job (POST /api/reward/train)",
                code="no_reward_model",
            )
        scorer = self.scorer(record)
        return record, scorer.score([p for p, _ in items], [c for _, c in items])

    # Training ------------------------------------------------------------------------------
    def queue_training(
        self, params: Mapping[str, Any], principal: Principal | None, *, via: str | None = None
    ) -> tuple[Any, int]:
        """Check a training request against the pairs held now and queue ``train:reward``
        (audited as ``reward.train``): bad settings and too few pairs fail here, not in the job.
        The API and the CLI both start trainings this way. Returns the job and the pair count."""
        if self._pairs is None or self._jobs is None:
            raise Unavailable("this reward model service cannot queue trainings (no pair store or jobs)")
        params = dict(params)
        settings = settings_from({k: v for k, v in params.items() if k not in PAIR_PARAMS})
        ai_weight = params.get("ai_pair_weight", self.ai_pair_weight)
        if isinstance(ai_weight, bool) or not isinstance(ai_weight, int | float) or not 0 <= ai_weight <= 1:
            raise InvalidInput("ai_pair_weight must be a number between 0 and 1")
        pairs = self._pairs().all(
            include_imported=bool(params.get("include_imported", True)),
            exclude_labelers=params.get("exclude_labelers") or [],
            ai_weight=ai_weight,
            exclude_below_consensus=False if params.get("include_below_consensus") else None,
        )
        if len(pairs) < settings.min_pairs:
            raise InvalidInput(
                f"only {len(pairs)} preference pairs; training needs at least {settings.min_pairs}. "
                "Collect rankings or thumbs, or import pairs (POST /api/pairs/import)",
                code="too_few_pairs",
            )
        job = self._jobs().submit(TRAIN_JOB, params, created_by=principal.key_id if principal else None)
        if self.audit is not None:
            self.audit.record(principal, "reward.train", job.id, pairs=len(pairs), via=via)
        return job, len(pairs)
