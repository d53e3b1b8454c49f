"""The pair store: pairs derived from feedback plus imported pairs, exported as TRL JSONL."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select

from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.contracts import FeedbackEvent
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.identity import Principal
from espalier.core.sources.conversations.tables import ChatRequestRecord, CompletionRecord
from espalier.core.sources.feedback.pairs import (
    Pair,
    pair_sha256,
    parse_pair_lines,
    prompt_text,
    ranking_pairs,
    thumbs_pairs,
)
from espalier.core.sources.feedback.tables import AIPair, FeedbackRecord, ImportedPair
from espalier.core.sources.labeling.exclusions import task_exclusions

IMPORT_BATCH = 1000


class PairStore:
    def __init__(
        self,
        engine: Engine,
        audit: AuditLog | None = None,
        *,
        announce: Callable[[FeedbackEvent], None] | None = None,
        exclude_below_consensus: bool = True,
    ):
        """``exclude_below_consensus``: leave out the rankings of labelers whose agreement with the
        others is far below theirs (``below_consensus`` in the agreement report), unless a caller
        says otherwise (``ESPALIER_EXCLUDE_BELOW_CONSENSUS``)."""
        self.engine = engine
        self.audit = audit
        self.announce = announce or (lambda event: None)
        self.exclude_below_consensus = exclude_below_consensus

    def below_consensus(self) -> list[str]:
        """Labelers the agreement over every stored ranking marks as far below the others."""
        from espalier.core.sources.feedback.agreement import agreement_for

        labelers = agreement_for(self.engine)["labelers"]
        return sorted(key for key, stats in labelers.items() if stats.get("below_consensus"))

    def derived(
        self, *, exclude_labelers: Iterable[str] = (), exclude_below_consensus: bool | None = None
    ) -> list[Pair]:
        """Every pair the stored feedback implies, in a stable order, without the feedback of
        ``exclude_labelers``, of labelers a labeling task excludes, and (by default, see the
        constructor) of labelers below consensus."""
        excluded = set(exclude_labelers)
        if self.exclude_below_consensus if exclude_below_consensus is None else exclude_below_consensus:
            excluded.update(self.below_consensus())
        with session_scope(self.engine) as session:
            rows = list(session.exec(select(FeedbackRecord).order_by(FeedbackRecord.created_at, FeedbackRecord.id)))
            request_ids = {row.request_id for row in rows}
            requests = {
                r.id: r for r in session.exec(select(ChatRequestRecord).where(ChatRequestRecord.id.in_(request_ids)))
            }
            completions = {
                c.id: c
                for c in session.exec(select(CompletionRecord).where(CompletionRecord.request_id.in_(request_ids)))
            }
            per_task = task_exclusions(session, request_ids)  # labelers a labeling task leaves out
        # Latest submission wins per (labeler, item): feedback is append-only.
        rankings: dict[tuple[str, str], FeedbackRecord] = {}
        thumbs: dict[tuple[str, str], str] = {}
        corrections: dict[tuple[str, str], str] = {}
        for row in rows:
            if row.key_id in excluded or row.key_id in per_task.get(row.request_id, ()):
                continue
            if row.kind == "ranking":
                rankings[(row.key_id, row.request_id)] = row
            elif row.completion_id:
                if "thumbs" in row.payload:
                    thumbs[(row.key_id, row.completion_id)] = row.payload["thumbs"]
                if "correction" in row.payload:
                    corrections[(row.key_id, row.completion_id)] = row.payload["correction"]
        pairs: list[Pair] = []
        for (labeler, request_id), row in rankings.items():
            prompt = prompt_text(requests[request_id].messages)
            texts = [completions[c["completion_id"]].text for c in row.payload["candidates"]]
            ranks = [c["rank"] for c in row.payload["candidates"]]
            flags = [c["unacceptable"] for c in row.payload["candidates"]]
            for winner, loser in ranking_pairs(texts, ranks, flags):
                if texts[winner] != texts[loser]:
                    pairs.append(Pair(prompt, texts[winner], texts[loser], "ranking", labeler, request_id))
        by_prompt: dict[tuple[str, str], dict[str, list[str]]] = {}
        for (labeler, completion_id), value in thumbs.items():
            completion = completions[completion_id]
            prompt = prompt_text(requests[completion.request_id].messages)
            by_prompt.setdefault((labeler, prompt), {"up": [], "down": []})[value].append(completion.text)
        for (labeler, prompt), votes in by_prompt.items():
            pairs.extend(thumbs_pairs(prompt, votes["up"], votes["down"], labeler))
        for (labeler, completion_id), corrected in corrections.items():
            completion = completions[completion_id]
            if corrected != completion.text:
                prompt = prompt_text(requests[completion.request_id].messages)
                pairs.append(Pair(prompt, corrected, completion.text, "correction", labeler, completion.request_id))
        return pairs

    def imported(self, *, limit: int | None = None) -> list[Pair]:
        with session_scope(self.engine) as session:
            query = select(ImportedPair).order_by(ImportedPair.id)
            if limit is not None:
                query = query.limit(limit)
            return [Pair(p.prompt, p.chosen, p.rejected, "import", p.source) for p in session.exec(query)]

    def ai(self, *, weight: float = 1.0, limit: int | None = None) -> list[Pair]:
        """Constitutional-AI pairs (revision preferred to original), each with ``weight``."""
        with session_scope(self.engine) as session:
            query = select(AIPair).order_by(AIPair.id)
            if limit is not None:
                query = query.limit(limit)
            return [
                Pair(p.prompt, p.chosen, p.rejected, "ai", p.principle, p.job_id, weight) for p in session.exec(query)
            ]

    def ai_count(self) -> int:
        with session_scope(self.engine) as session:
            return session.exec(select(func.count()).select_from(AIPair)).one()

    def add_ai(
        self, rows: Iterable[dict[str, str]], *, model: str, constitution: str, job_id: str | None
    ) -> dict[str, int]:
        """Store AI pairs in one transaction; a pair already held (same texts) is not added twice."""
        added = seen = 0
        with session_scope(self.engine) as session:
            for row in rows:
                seen += 1
                digest = pair_sha256(row["prompt"], row["chosen"], row["rejected"])
                if session.exec(select(AIPair.id).where(AIPair.sha256 == digest)).first() is not None:
                    continue
                session.add(
                    AIPair(
                        sha256=digest,
                        prompt=row["prompt"],
                        chosen=row["chosen"],
                        rejected=row["rejected"],
                        principle=row.get("principle", "")[:100],
                        critique=row.get("critique", ""),
                        model=model[:200],
                        constitution=constitution[:200],
                        job_id=job_id,
                    )
                )
                session.flush()
                added += 1
        return {"read": seen, "added": added, "already_present": seen - added}

    def export(
        self,
        principal: Principal | None,
        *,
        include_imported: bool = False,
        exclude_labelers: Iterable[str] = (),
        via: str | None = None,
    ) -> list[Pair]:
        """The pairs an export file holds, audited as ``pairs.export`` (API, console or CLI)."""
        pairs = self.all(include_imported=include_imported, exclude_labelers=exclude_labelers)
        if self.audit is not None:
            self.audit.record(principal, "pairs.export", None, pairs=len(pairs), via=via)
        return pairs

    def all(
        self,
        *,
        include_imported: bool = True,
        exclude_labelers: Iterable[str] = (),
        ai_weight: float = 0.0,
        exclude_below_consensus: bool | None = None,
    ) -> list[Pair]:
        """Human pairs (from feedback), imported ones, and AI pairs when ``ai_weight`` > 0."""
        pairs = self.derived(exclude_labelers=exclude_labelers, exclude_below_consensus=exclude_below_consensus)
        if include_imported:
            pairs += self.imported()
        if ai_weight > 0:
            pairs += self.ai(weight=ai_weight)
        return pairs

    def imported_count(self) -> int:
        with session_scope(self.engine) as session:
            return session.exec(select(func.count()).select_from(ImportedPair)).one()

    def count(self, *, include_imported: bool = True) -> int:
        derived = len(self.derived())
        if not include_imported:
            return derived
        with session_scope(self.engine) as session:
            return derived + session.exec(select(func.count()).select_from(ImportedPair)).one()

    def import_lines(
        self,
        lines: Iterable[str],
        *,
        source: str,
        principal: Principal | None = None,
        limit: int | None = None,
        skip_invalid: bool = False,
    ) -> dict[str, Any]:
        """Import TRL-format JSONL in one transaction: a bad line imports nothing (unless skipped).

        ``principal`` is who imports (None: the command line). Once committed, the import is
        audited and announced to ``on_feedback`` as an ``import`` event."""
        imported_by = principal.key_id if principal else None
        rows: dict[str, tuple[str, str, str]] = {}
        skipped: list[str] | None = [] if skip_invalid else None
        for prompt, chosen, rejected in parse_pair_lines(lines, skipped=skipped):
            rows.setdefault(pair_sha256(prompt, chosen, rejected), (prompt, chosen, rejected))
            if limit is not None and len(rows) >= limit:
                break
        added = 0
        with session_scope(self.engine) as session:
            known: set[str] = set()
            hashes = list(rows)
            for start in range(0, len(hashes), IMPORT_BATCH):
                chunk = hashes[start : start + IMPORT_BATCH]
                known.update(session.exec(select(ImportedPair.sha256).where(ImportedPair.sha256.in_(chunk))))
            for digest, (prompt, chosen, rejected) in rows.items():
                if digest in known:
                    continue
                session.add(
                    ImportedPair(
                        sha256=digest,
                        prompt=prompt,
                        chosen=chosen,
                        rejected=rejected,
                        source=source[:200],
                        imported_by=imported_by,
                    )
                )
                added += 1
        if self.audit is not None:
            self.audit.record(principal, "pairs.import", source, read=len(rows), added=added)
        self.announce(FeedbackEvent(source, "import", None, {"added": added, "read": len(rows)}, imported_by))
        result: dict[str, Any] = {"read": len(rows), "added": added, "already_present": len(rows) - added}
        if skipped is not None:
            result["skipped"] = len(skipped)
            result["skipped_reasons"] = skipped[:20]
        return result


def export_lines(pairs: Sequence[Pair]) -> Iterable[str]:
    import json

    for pair in pairs:
        yield json.dumps(pair.trl(), ensure_ascii=False) + "\n"


def describe(pairs: Sequence[Pair]) -> dict[str, Any]:
    origins: dict[str, int] = {}
    for pair in pairs:
        origins[pair.origin] = origins.get(pair.origin, 0) + 1
    return {"pairs": len(pairs), "by_origin": origins}
