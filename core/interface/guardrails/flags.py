"""Operators' labels on stored texts for the guardrail classifiers.

An operator reading feedback marks a prompt or a completion as toxic or as a prompt injection (or
as a false alarm: ``label=0``). The guardrail trainers (``train:toxicity-classifier``,
``train:injection-classifier``) add these examples to their training file, or train on them
alone, so the classifiers learn from what this deployment actually sees.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select

from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import InvalidInput, NotFound
from espalier.core.infrastructure.identity import Principal
from espalier.core.interface.guardrails.tables import GuardrailFlag
from espalier.core.sources.conversations.tables import ChatRequestRecord, CompletionRecord

CATEGORIES = ("toxicity", "injection")
MAX_TEXT = 20_000


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class GuardrailFlagService:
    def __init__(self, engine: Engine, audit: AuditLog | None = None):
        self.engine = engine
        self.audit = audit

    def flag(
        self,
        principal: Principal | None,
        *,
        category: str,
        label: int = 1,
        request_id: str,
        completion_id: str | None = None,
        message_index: int | None = None,
        via: str | None = None,
    ) -> GuardrailFlag:
        """Label a stored text: a completion of ``request_id`` or one of its messages (the prompt).
        Audited as ``guardrail.flag``."""
        if category not in CATEGORIES:
            raise InvalidInput(f"category must be one of {', '.join(CATEGORIES)} (got {category!r})")
        if label not in (0, 1):
            raise InvalidInput("label must be 1 (the text is of the category) or 0 (it is not)")
        with session_scope(self.engine) as session:
            request = session.get(ChatRequestRecord, request_id)
            if request is None:
                raise NotFound(f"no stored request '{request_id}'")
            if completion_id is not None:
                completion = session.get(CompletionRecord, completion_id)
                if completion is None or completion.request_id != request_id:
                    raise NotFound(f"request '{request_id}' has no completion '{completion_id}'")
                text = completion.text
            else:
                messages = request.messages or []
                index = len(messages) - 1 if message_index is None else message_index
                if not 0 <= index < len(messages):
                    raise InvalidInput(f"request '{request_id}' has {len(messages)} messages; no message {index}")
                text = str(messages[index].get("content") or "")
            if not text.strip():
                raise InvalidInput("that text is empty; there is nothing to label")
            text = text[:MAX_TEXT]
            digest = text_sha256(text)
            row = session.exec(
                select(GuardrailFlag).where(GuardrailFlag.category == category, GuardrailFlag.text_sha256 == digest)
            ).first()
            if row is None:
                row = GuardrailFlag(category=category, text=text, text_sha256=digest)
            row.label, row.request_id, row.completion_id = label, request_id, completion_id
            row.flagged_by = principal.key_id if principal else None
            row.flagged_by_name = principal.name if principal else ""
            row.created_at = utcnow()
            session.add(row)
            session.flush()
            session.refresh(row)
        if self.audit is not None:
            details = {"category": row.category, "label": row.label, "request_id": row.request_id}
            self.audit.record(
                principal,
                "guardrail.flag",
                row.id,
                **details,
                completion_id=row.completion_id,
                via=via,
            )
        return row

    def remove(self, flag_id: str) -> None:
        with session_scope(self.engine) as session:
            row = session.get(GuardrailFlag, flag_id)
            if row is None:
                raise NotFound(f"no flag '{flag_id}'")
            session.delete(row)

    def list(
        self, *, category: str | None = None, request_id: str | None = None, limit: int = 200
    ) -> list[GuardrailFlag]:
        with session_scope(self.engine) as session:
            query = select(GuardrailFlag).order_by(GuardrailFlag.created_at.desc()).limit(limit)
            if category:
                query = query.where(GuardrailFlag.category == category)
            if request_id:
                query = query.where(GuardrailFlag.request_id == request_id)
            return list(session.exec(query))

    def examples(self, category: str) -> list[dict[str, Any]]:
        """Training records (``{"text", "label"}``) in a stable order, as the trainers read them."""
        with session_scope(self.engine) as session:
            rows = session.exec(
                select(GuardrailFlag.text, GuardrailFlag.label)
                .where(GuardrailFlag.category == category)
                .order_by(GuardrailFlag.id)
            )
            return [{"text": text, "label": int(label)} for text, label in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per category: how many texts are labelled positive and negative."""
        counts = {category: {"positive": 0, "negative": 0} for category in CATEGORIES}
        with session_scope(self.engine) as session:
            query = select(GuardrailFlag.category, GuardrailFlag.label, func.count()).group_by(
                GuardrailFlag.category, GuardrailFlag.label
            )
            for category, label, n in session.exec(query):
                counts.setdefault(category, {"positive": 0, "negative": 0})["positive" if label else "negative"] += n
        return counts
