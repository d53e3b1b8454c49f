"""Feedback capture: append-only rows with provenance, idempotent, rate limited, owner-checked.

A submission is committed before it is acknowledged, so a crash after the acknowledgement loses
nothing; a retried POST with the same ``Idempotency-Key`` returns the stored row (the unique
constraint on (key, idempotency key) settles races between concurrent retries).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from espalier.core.infrastructure.contracts import FeedbackEvent
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import Conflict, InvalidInput, NotFound
from espalier.core.infrastructure.errors import RateLimited as BaseRateLimited
from espalier.core.infrastructure.identity import Principal
from espalier.core.infrastructure.ratelimit import RateLimiter
from espalier.core.sources.conversations.tables import ChatRequestRecord, CompletionRecord
from espalier.core.sources.feedback.pairs import check_ranking
from espalier.core.sources.feedback.tables import FeedbackRecord

MAX_IDEMPOTENCY_KEY = 200
MAX_COMMENT_CHARS = 10_000
MAX_CORRECTION_CHARS = 100_000


class RateLimited(BaseRateLimited):
    code = "feedback_rate_limited"


@dataclass
class Submission:
    record: FeedbackRecord
    replayed: bool  # True when an earlier identical submission was returned


def body_sha256(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def may_label(principal: Principal) -> bool:
    """Operators and admins label other keys' completions; users judge only their own."""
    return principal.has_role("operator")


class FeedbackService:
    """Stores feedback and, once it is committed, announces it (``on_feedback``: the retrain
    trigger listens), so every entry point behaves the same."""

    def __init__(
        self,
        engine: Engine,
        *,
        rate_limit_per_minute: int,
        limiter: RateLimiter | None = None,
        announce: Callable[[FeedbackEvent], None] | None = None,
    ):
        self.engine = engine
        self.rate_limit_per_minute = rate_limit_per_minute
        self.limiter = limiter or RateLimiter()
        self.announce = announce or (lambda event: None)

    # Submissions ---------------------------------------------------------------------------
    def submit_completion(
        self,
        principal: Principal,
        idempotency_key: str | None,
        *,
        completion_id: str,
        thumbs: str | None = None,
        score: float | None = None,
        comment: str | None = None,
        correction: str | None = None,
    ) -> Submission:
        payload: dict[str, Any] = {}
        if thumbs is not None:
            if thumbs not in ("up", "down"):
                raise InvalidInput("thumbs must be 'up' or 'down'", code="invalid_thumbs")
            payload["thumbs"] = thumbs
        if score is not None:
            if not 0 <= score <= 1:
                raise InvalidInput(f"score must be between 0 and 1 (got {score})", code="invalid_score")
            payload["score"] = float(score)
        if comment is not None:
            if len(comment) > MAX_COMMENT_CHARS:
                raise InvalidInput(f"comment is longer than {MAX_COMMENT_CHARS} characters", code="invalid_comment")
            payload["comment"] = comment
        if correction is not None:
            if not correction.strip() or len(correction) > MAX_CORRECTION_CHARS:
                raise InvalidInput(f"correction must be 1-{MAX_CORRECTION_CHARS} characters", code="invalid_correction")
            payload["correction"] = correction
        if not payload:
            raise InvalidInput("give at least one of thumbs, score, comment or correction", code="empty_feedback")
        body = {"kind": "completion", "completion_id": completion_id, **payload}
        return self._submit(principal, idempotency_key, body, payload, completion_id=completion_id)

    def submit_ranking(
        self,
        principal: Principal,
        idempotency_key: str | None,
        *,
        request_id: str,
        candidates: Sequence[Mapping[str, Any]],
        comment: str | None = None,
        as_labeler: bool = False,
    ) -> Submission:
        """``as_labeler``: the caller (the labeling service) checked that this key holds a lease on
        the request as a labeler of a labeling task, so it may rank a request it does not own."""
        if comment is not None and len(comment) > MAX_COMMENT_CHARS:
            raise InvalidInput(f"comment is longer than {MAX_COMMENT_CHARS} characters", code="invalid_comment")
        ordered = [
            {
                "completion_id": c["completion_id"],
                "rank": int(c["rank"]),
                "unacceptable": bool(c.get("unacceptable", False)),
            }
            for c in candidates
        ]
        body = {"kind": "ranking", "request_id": request_id, "candidates": ordered, "comment": comment}
        return self._submit(
            principal,
            idempotency_key,
            body,
            {"candidates": ordered, "comment": comment},
            request_id=request_id,
            as_labeler=as_labeler,
        )

    def _submit(
        self,
        principal: Principal,
        idempotency_key: str | None,
        body: dict[str, Any],
        payload: dict[str, Any],
        *,
        completion_id: str | None = None,
        request_id: str | None = None,
        as_labeler: bool = False,
    ) -> Submission:
        if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidInput(
                f"send an Idempotency-Key header (1-{MAX_IDEMPOTENCY_KEY} characters, unique per submission; "
                "reuse it when you retry)",
                code="idempotency_key_required",
            )
        digest = body_sha256(body)
        replay = self._replay(principal, idempotency_key, digest)
        if replay is not None:
            return Submission(replay, True)
        self._check_rate(principal)
        try:
            with session_scope(self.engine) as session:
                request, completions = self._target(session, principal, completion_id, request_id, as_labeler)
                if body["kind"] == "ranking":
                    self._check_candidates(payload["candidates"], completions)
                    payload["candidates"] = sorted(
                        payload["candidates"], key=lambda c: {x.id: x.index for x in completions}[c["completion_id"]]
                    )
                record = FeedbackRecord(
                    id=f"fb_{secrets.token_hex(10)}",
                    kind=body["kind"],
                    request_id=request.id,
                    completion_id=completion_id,
                    payload=payload,
                    key_id=principal.key_id,
                    key_name=principal.name,
                    key_role=principal.role,
                    model=request.model,
                    model_version=request.model_version,
                    sampling=dict(request.params or {}),
                    sources=None,
                    tool_traces=None,
                    idempotency_key=idempotency_key,
                    body_sha256=digest,
                )
                session.add(record)
        except IntegrityError:
            # A concurrent retry with the same key won the insert: answer as its replay.
            replay = self._replay(principal, idempotency_key, digest)
            if replay is None:
                raise
            return Submission(replay, True)
        self.announce(
            FeedbackEvent(
                feedback_id=record.id,
                kind=record.kind,
                completion_id=record.completion_id,
                payload=dict(record.payload),
                api_key_id=record.key_id,
            )
        )
        return Submission(record, False)

    def _replay(self, principal: Principal, idempotency_key: str, digest: str) -> FeedbackRecord | None:
        with session_scope(self.engine) as session:
            existing = session.exec(
                select(FeedbackRecord).where(
                    FeedbackRecord.key_id == principal.key_id,
                    FeedbackRecord.idempotency_key == idempotency_key,
                )
            ).first()
        if existing is not None and existing.body_sha256 != digest:
            raise Conflict(
                f"Idempotency-Key '{idempotency_key}' was already used for a different submission "
                f"({existing.id}); use a new key for new feedback",
                code="idempotency_key_reused",
            )
        return existing

    def _check_rate(self, principal: Principal) -> None:
        # One atomic hit of the shared limiter (Redis when set): counting stored rows and then
        # inserting let concurrent submissions past the limit.
        decision = self.limiter.hit(f"feedback:{principal.key_id}", self.rate_limit_per_minute)
        if not decision.allowed:
            raise RateLimited(
                f"this key reached its limit of {self.rate_limit_per_minute} feedback submissions a minute; "
                f"wait {decision.retry_after} s (a minute at most) and retry with the same Idempotency-Key",
                retry_after=decision.retry_after,
            )

    @staticmethod
    def _target(
        session: Any, principal: Principal, completion_id: str | None, request_id: str | None, as_labeler: bool = False
    ) -> tuple[ChatRequestRecord, list[CompletionRecord]]:
        if completion_id is not None:
            completion = session.get(CompletionRecord, completion_id)
            if completion is None:
                raise NotFound(f"no completion '{completion_id}' for this key")
            request_id = completion.request_id
        request = session.get(ChatRequestRecord, request_id)
        if request is None or (request.owner_key_id != principal.key_id and not (as_labeler or may_label(principal))):
            # The same answer for "absent" and "not yours": ids of other keys' data do not leak.
            what = f"completion '{completion_id}'" if completion_id else f"request '{request_id}'"
            raise NotFound(f"no {what} for this key")
        completions = list(
            session.exec(
                select(CompletionRecord)
                .where(CompletionRecord.request_id == request.id)
                .order_by(CompletionRecord.index)
            )
        )
        return request, completions

    @staticmethod
    def _check_candidates(candidates: list[dict[str, Any]], completions: list[CompletionRecord]) -> None:
        n = len(completions)
        if n < 2:
            raise InvalidInput(
                "this request has one candidate: give thumbs or a score instead of a ranking",
                code="wrong_candidate_count",
            )
        ids = [c["completion_id"] for c in candidates]
        if len(set(ids)) != len(ids):
            raise InvalidInput("each candidate may be ranked only once", code="duplicate_candidate")
        known = {c.id for c in completions}
        if len(ids) != n or set(ids) != known:
            unknown = sorted(set(ids) - known)
            raise InvalidInput(
                f"this request has {n} candidates ({', '.join(sorted(known))}); rank each exactly once"
                + (f" (not candidates of it: {', '.join(unknown)})" if unknown else ""),
                code="wrong_candidate_count",
            )
        check_ranking([c["rank"] for c in candidates], n)

    # Reading ---------------------------------------------------------------------------------
    def list(
        self, principal: Principal, *, everyone: bool = False, request_id: str | None = None, limit: int = 100
    ) -> list[FeedbackRecord]:
        with session_scope(self.engine) as session:
            query = select(FeedbackRecord).order_by(FeedbackRecord.created_at.desc()).limit(limit)
            if not (everyone and may_label(principal)):
                query = query.where(FeedbackRecord.key_id == principal.key_id)
            if request_id:
                query = query.where(FeedbackRecord.request_id == request_id)
            return list(session.exec(query))

    def get(self, feedback_id: str, principal: Principal) -> FeedbackRecord:
        with session_scope(self.engine) as session:
            record = session.get(FeedbackRecord, feedback_id)
        if record is None or (record.key_id != principal.key_id and not may_label(principal)):
            raise NotFound(f"no feedback '{feedback_id}' for this key")
        return record
