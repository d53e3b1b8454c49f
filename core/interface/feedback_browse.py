"""Reading feedback for operators: filtered pages of it, and one request with everything said
about it (its prompt, its candidates, the feedback on each, the guardrail flags set on them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, or_
from sqlalchemy.engine import Engine
from sqlmodel import select

from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import InvalidInput, NotFound
from espalier.core.interface.guardrails.tables import GuardrailFlag
from espalier.core.sources.conversations.tables import ChatRequestRecord, CompletionRecord
from espalier.core.sources.feedback.tables import FeedbackRecord

KINDS = ("completion", "ranking")


@dataclass
class FeedbackFilter:
    kind: str | None = None
    labeler: str | None = None  # a key id or a key name
    model: str | None = None
    request_id: str | None = None
    since: date | None = None  # whole days, UTC, both ends included
    until: date | None = None

    def __post_init__(self) -> None:
        if self.kind and self.kind not in KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(KINDS)} (got {self.kind!r})")
        if self.since and self.until and self.since > self.until:
            raise InvalidInput("the 'from' date is after the 'to' date")

    def apply(self, query: Any) -> Any:
        if self.kind:
            query = query.where(FeedbackRecord.kind == self.kind)
        if self.labeler:
            query = query.where(or_(FeedbackRecord.key_id == self.labeler, FeedbackRecord.key_name == self.labeler))
        if self.model:
            query = query.where(FeedbackRecord.model == self.model)
        if self.request_id:
            query = query.where(FeedbackRecord.request_id == self.request_id)
        if self.since:
            query = query.where(FeedbackRecord.created_at >= datetime.combine(self.since, time(), UTC))
        if self.until:
            query = query.where(
                FeedbackRecord.created_at < datetime.combine(self.until + timedelta(days=1), time(), UTC)
            )
        return query


def browse(
    engine: Engine, filters: FeedbackFilter, *, limit: int = 50, offset: int = 0
) -> tuple[list[FeedbackRecord], int]:
    """A page of feedback, newest first, and how many match in all."""
    with session_scope(engine) as session:
        total = session.exec(filters.apply(select(func.count()).select_from(FeedbackRecord))).one()
        query = filters.apply(select(FeedbackRecord)).order_by(FeedbackRecord.created_at.desc(), FeedbackRecord.id)
        return list(session.exec(query.offset(offset).limit(limit))), int(total)


def labelers_and_models(engine: Engine) -> tuple[list[str], list[str]]:
    """The names to offer in the filters."""
    with session_scope(engine) as session:
        labelers = sorted(n for n in session.exec(select(FeedbackRecord.key_name).distinct()) if n)
        models = sorted(m for m in session.exec(select(FeedbackRecord.model).distinct()) if m)
    return labelers, models


def request_view(engine: Engine, request_id: str) -> dict[str, Any]:
    """One stored request: its messages, its candidates, each with its feedback, and the flags."""
    with session_scope(engine) as session:
        request = session.get(ChatRequestRecord, request_id)
        if request is None:
            raise NotFound(f"no stored request '{request_id}'")
        completions = list(
            session.exec(
                select(CompletionRecord)
                .where(CompletionRecord.request_id == request_id)
                .order_by(CompletionRecord.index)
            )
        )
        feedback = list(
            session.exec(
                select(FeedbackRecord)
                .where(FeedbackRecord.request_id == request_id)
                .order_by(FeedbackRecord.created_at)
            )
        )
        flags = list(session.exec(select(GuardrailFlag).where(GuardrailFlag.request_id == request_id)))
    rankings = [f for f in feedback if f.kind == "ranking"]
    by_completion: dict[str, list[dict[str, Any]]] = {c.id: [] for c in completions}
    for record in feedback:
        if record.completion_id in by_completion:
            by_completion[record.completion_id].append({"record": record, "payload": record.payload})
    for record in rankings:
        for candidate in record.payload.get("candidates", []):
            if candidate.get("completion_id") in by_completion:
                by_completion[candidate["completion_id"]].append(
                    {
                        "record": record,
                        "payload": {"rank": candidate["rank"], "unacceptable": candidate["unacceptable"]},
                    }
                )
    flags_of: dict[tuple[str | None, str], GuardrailFlag] = {}
    for flag in flags:
        flags_of[(flag.completion_id, flag.category)] = flag
    return {
        "request": request,
        "completions": completions,
        "feedback": by_completion,
        "rankings": rankings,
        "flags": flags_of,
    }
