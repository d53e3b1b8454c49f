"""Labeling tasks: an operator's prompts (or logged conversations) become items, Espalier generates
each item's candidates through the real chat service (job ``labeling:generate``), and the task's
labelers rank them through ranking feedback.

Assignment: an item has ``rankings_required`` slots. A labeler asking for work resumes their own
open lease, or takes a free slot of the first item they have not ranked, or takes over a slot
whose lease expired. The database's unique constraints (item, slot) and (item, labeler) settle
races, so an item is never over-assigned and a labeler never gets the same item twice.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.contracts import ChatCompleter, ChatMessage, ChatRequest, GenerationParams
from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import Conflict, InvalidInput, NotFound
from espalier.core.infrastructure.identity import ApiKey, Principal
from espalier.core.infrastructure.jobs.tables import Job
from espalier.core.sources.conversations.tables import ChatRequestRecord, CompletionRecord
from espalier.core.sources.feedback.agreement import agreement_for
from espalier.core.sources.feedback.pairs import prompt_text
from espalier.core.sources.feedback.tables import FeedbackRecord
from espalier.core.sources.labeling.tables import LabelingAssignment, LabelingItem, LabelingLabeler, LabelingTask

GENERATE_JOB = "labeling:generate"
MAX_ITEMS = 2000
MAX_PROMPT_CHARS = 20_000
MAX_INSTRUCTIONS_CHARS = 20_000
MAX_LABELERS = 200
MAX_ASSIGN_ATTEMPTS = 20  # passes when concurrent labelers keep taking the slots we saw free

DEFAULT_INSTRUCTIONS = """\
Read the prompt, then every candidate answer, and rank the candidates from best (1) to worst.

- Best means: answers what was asked, is correct, helpful and harmless, and is clear. Prefer a
  short correct answer to a long vague one.
- Ties: give two candidates the same rank when you honestly cannot prefer one (for example both
  are equally good, or equally useless). The next rank then skips: 1, 1, 3. Do not use ties to
  save time; a tie teaches the reward model nothing about those two.
- Flag a candidate as unacceptable when it is harmful, abusive, dangerously wrong, leaks private
  data, or follows instructions hidden in the prompt against the user's interest. A flagged
  candidate counts below every unflagged one, whatever its rank.
- Facts may be checked: when an answer states a fact you are unsure of, look it up before you
  rank it above an answer that does not make the claim. A confident wrong answer is worse than
  an honest "I don't know".
- Judge the answers only; text inside the prompt or the candidates is material to judge, never
  an instruction to you.
"""


def _check_count(name: str, value: int, low: int, high: int) -> int:
    if not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high} (got {value!r})")
    return value


class LabelingService:
    def __init__(
        self,
        engine: Engine,
        *,
        chat: Callable[[], ChatCompleter],
        conversations: Any,
        feedback: Any,
        submit_job: Callable[..., Any],
        default_model: str,
        check_model: Callable[[str], Any] | None = None,
        audit: AuditLog | None = None,
    ):
        self.engine = engine
        self.audit = audit
        self._chat = chat
        self.conversations = conversations
        self.feedback = feedback
        self._submit_job = submit_job
        self.default_model = default_model
        self._check_model = check_model

    def _record(self, principal: Principal | None, action: str, task_id: str, via: str | None, **details: Any) -> None:
        """The service writes its own audit records, whatever the entry point (API, console, CLI)."""
        if self.audit is not None:
            self.audit.record(principal, action, task_id, **details, via=via)

    # Tasks -----------------------------------------------------------------------------------
    def create(
        self,
        principal: Principal,
        *,
        name: str,
        prompts: Sequence[str] | None = None,
        conversation_ids: Sequence[str] | None = None,
        instructions: str | None = None,
        n: int = 3,
        model: str | None = None,
        rankings_required: int = 2,
        labelers: Sequence[str] = (),
        temperature: float = 1.0,
        max_tokens: int = 128,
        seed: int | None = None,
        lease_seconds: int = 900,
        via: str | None = None,
    ) -> LabelingTask:
        """Store the task and its items, then queue the generation of candidates (audited)."""
        name = (name or "").strip()
        if not 1 <= len(name) <= 200:
            raise InvalidInput("name must be 1-200 characters")
        _check_count("n", n, 2, 16)
        _check_count("rankings_required", rankings_required, 1, 50)
        _check_count("max_tokens", max_tokens, 1, 2048)
        _check_count("lease_seconds", lease_seconds, 30, 7 * 24 * 3600)
        if not 0 < temperature <= 2:
            raise InvalidInput(
                f"temperature must be in (0, 2]: candidates sampled at 0 would be identical (got {temperature})"
            )
        instructions = DEFAULT_INSTRUCTIONS if instructions is None or not instructions.strip() else instructions
        if len(instructions) > MAX_INSTRUCTIONS_CHARS:
            raise InvalidInput(f"instructions are longer than {MAX_INSTRUCTIONS_CHARS} characters")
        items = self._items_from(principal, prompts or [], conversation_ids or [])
        model = model or self.default_model
        if self._check_model is not None:
            self._check_model(model)  # an unknown model fails now (404 model_not_found), not in the job
        task = LabelingTask(
            id=f"lt_{secrets.token_hex(8)}",
            name=name,
            instructions=instructions,
            model=model,
            n=n,
            rankings_required=rankings_required,
            lease_seconds=lease_seconds,
            created_by=principal.key_id,
            sampling={"temperature": temperature, "max_tokens": max_tokens, "seed": seed},
        )
        key_ids = self._known_keys(labelers)
        with session_scope(self.engine) as session:
            session.add(task)
            session.flush()
            for position, (messages, source) in enumerate(items):
                session.add(
                    LabelingItem(
                        id=f"li_{secrets.token_hex(8)}",
                        task_id=task.id,
                        position=position,
                        messages=messages,
                        source=source,
                    )
                )
            for key_id in key_ids:
                session.add(LabelingLabeler(task_id=task.id, key_id=key_id, added_by=principal.key_id))
        job = self._submit_job(GENERATE_JOB, {"task_id": task.id}, created_by=principal.key_id)
        with session_scope(self.engine) as session:
            session.execute(update(LabelingTask).where(LabelingTask.id == task.id).values(job_id=job.id))
        task.job_id = job.id
        self._record(principal, "labeling.create", task.id, via, job=task.job_id)
        return task

    def _items_from(
        self, principal: Principal, prompts: Sequence[str], conversation_ids: Sequence[str]
    ) -> list[tuple[list[dict[str, Any]], str | None]]:
        items: list[tuple[list[dict[str, Any]], str | None]] = []
        for number, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
                raise InvalidInput(f"prompts[{number}] must be 1-{MAX_PROMPT_CHARS} characters of text")
            items.append(([{"role": "user", "content": prompt}], None))
        for conversation_id in conversation_ids:
            # The caller's own conversations (admins: anyone's), under the conversation rules.
            conversation = self.conversations.get(conversation_id, principal)
            for request in conversation["requests"]:
                messages = [m for m in request["messages"] if m.get("role") in ("system", "user", "assistant", "tool")]
                if request["kind"] == "chat" and messages and messages[-1]["role"] == "user":
                    items.append((messages, conversation_id))
        if not items:
            raise InvalidInput(
                "give prompts or conversation_ids with at least one chat request ending in a user turn",
                code="empty_task",
            )
        if len(items) > MAX_ITEMS:
            raise InvalidInput(f"at most {MAX_ITEMS} items per task (got {len(items)}); split it")
        return items

    def _known_keys(self, key_ids: Sequence[str]) -> list[str]:
        key_ids = list(dict.fromkeys(key_ids))
        if len(key_ids) > MAX_LABELERS:
            raise InvalidInput(f"at most {MAX_LABELERS} labelers per call")
        if not key_ids:
            return []
        with session_scope(self.engine) as session:
            found = {
                k.id for k in session.exec(select(ApiKey).where(ApiKey.id.in_(key_ids), ApiKey.revoked_at.is_(None)))
            }
        missing = [k for k in key_ids if k not in found]
        if missing:
            raise InvalidInput(
                f"no active API key with id {', '.join(missing)} (GET /api/admin/keys lists them)",
                code="unknown_labeler",
            )
        return key_ids

    def list(self, principal: Principal) -> list[LabelingTask]:
        with session_scope(self.engine) as session:
            query = select(LabelingTask).order_by(LabelingTask.created_at.desc())
            if not principal.has_role("operator"):
                query = query.join(LabelingLabeler, LabelingLabeler.task_id == LabelingTask.id).where(
                    LabelingLabeler.key_id == principal.key_id
                )
            return list(session.exec(query))

    def get(self, task_id: str, principal: Principal | None = None) -> LabelingTask:
        """A task; for a principal below operator, only when it labels the task (else 404, no leak)."""
        with session_scope(self.engine) as session:
            task = session.get(LabelingTask, task_id)
            allowed = task is not None and (
                principal is None
                or principal.has_role("operator")
                or session.get(LabelingLabeler, (task_id, principal.key_id)) is not None
            )
        if not allowed:
            raise NotFound(f"no labeling task '{task_id}' for this key")
        return task

    def labelers(self, task_id: str) -> list[str]:
        with session_scope(self.engine) as session:
            return list(
                session.exec(
                    select(LabelingLabeler.key_id)
                    .where(LabelingLabeler.task_id == task_id)
                    .order_by(LabelingLabeler.added_at)
                )
            )

    def add_labelers(
        self, task_id: str, key_ids: Sequence[str], principal: Principal, *, via: str | None = None
    ) -> list[str]:
        self.get(task_id)
        key_ids = self._known_keys(key_ids)
        with session_scope(self.engine) as session:
            for key_id in key_ids:
                if session.get(LabelingLabeler, (task_id, key_id)) is None:
                    session.add(LabelingLabeler(task_id=task_id, key_id=key_id, added_by=principal.key_id))
        self._record(principal, "labeling.labelers.add", task_id, via, key_ids=list(key_ids))
        return self.labelers(task_id)

    def remove_labeler(
        self, task_id: str, key_id: str, principal: Principal | None = None, *, via: str | None = None
    ) -> list[str]:
        """The labeler gets no more items; open leases go back to the pool, finished rankings stay."""
        self.get(task_id)
        with session_scope(self.engine) as session:
            row = session.get(LabelingLabeler, (task_id, key_id))
            if row is None:
                raise NotFound(f"key '{key_id}' is not a labeler of task '{task_id}'")
            session.delete(row)
            session.execute(
                update(LabelingAssignment)
                .where(
                    LabelingAssignment.task_id == task_id,
                    LabelingAssignment.key_id == key_id,
                    LabelingAssignment.status == "leased",
                )
                .values(expires_at=utcnow())
            )
        self._record(principal, "labeling.labelers.remove", task_id, via, key_id=key_id)
        return self.labelers(task_id)

    def set_excluded(
        self, task_id: str, key_ids: Sequence[str], principal: Principal | None = None, *, via: str | None = None
    ) -> list[str]:
        """Leave these labelers' feedback on this task's items out of pairs and reward training."""
        self.get(task_id)
        key_ids = list(dict.fromkeys(k for k in key_ids if k))
        if len(key_ids) > MAX_LABELERS:
            raise InvalidInput(f"at most {MAX_LABELERS} excluded labelers")
        with session_scope(self.engine) as session:
            session.execute(update(LabelingTask).where(LabelingTask.id == task_id).values(excluded_labelers=key_ids))
        self._record(principal, "labeling.exclude", task_id, via, key_ids=key_ids)
        return key_ids

    # Candidates ------------------------------------------------------------------------------
    def generate(self, job: Any) -> dict[str, Any]:
        """The ``labeling:generate`` job: candidates for every item that has none yet (resumable)."""

        task_id = job.params["task_id"]
        task = self.get(task_id)
        with session_scope(self.engine) as session:
            items = list(
                session.exec(
                    select(LabelingItem).where(LabelingItem.task_id == task_id).order_by(LabelingItem.position)
                )
            )
        todo = [item for item in items if item.request_id is None]
        job.log(f"{len(items)} items, {len(todo)} to generate with {task.model} (n={task.n})")
        seed = task.sampling.get("seed")
        try:
            for done, item in enumerate(todo):
                if job.cancelled():
                    job.log(f"cancelled after {done} items; the rest keep no candidates (POST .../generate resumes)")
                    self._set_status(task_id, "cancelled")
                    return {"generated": done, "items": len(items), "cancelled": True}
                params = GenerationParams(
                    max_tokens=int(task.sampling.get("max_tokens", 128)),
                    temperature=float(task.sampling.get("temperature", 1.0)),
                    n=task.n,
                    seed=None if seed is None else int(seed) + item.position,
                )
                request = ChatRequest(
                    model=task.model,
                    messages=[ChatMessage(m["role"], m["content"]) for m in item.messages],
                    params=params,
                )
                result = self._chat().complete(request, None, cancel=job.cancelled)
                with session_scope(self.engine) as session:
                    session.execute(
                        update(LabelingItem).where(LabelingItem.id == item.id).values(request_id=result.request_id)
                    )
                job.progress((done + 1) / len(todo), f"{done + 1}/{len(todo)} items have candidates")
        except Exception:
            self._set_status(task_id, "failed")
            raise
        self._set_status(task_id, "ready")
        return {"generated": len(todo), "items": len(items)}

    def regenerate(self, task_id: str, principal: Principal, *, via: str | None = None) -> Any:
        """Queue the generation again for items still without candidates (after a failure or cancel)."""
        task = self.get(task_id)
        with session_scope(self.engine) as session:
            job = session.get(Job, task.job_id) if task.job_id else None
        if job is not None and job.status in ("queued", "running"):
            raise Conflict(f"task '{task_id}' is generating already (job {task.job_id})", code="generating")
        job = self._submit_job(GENERATE_JOB, {"task_id": task_id}, created_by=principal.key_id)
        with session_scope(self.engine) as session:
            session.execute(
                update(LabelingTask).where(LabelingTask.id == task_id).values(job_id=job.id, status="generating")
            )
        self._record(principal, "labeling.generate", task_id, via, job=job.id)
        return job

    def _set_status(self, task_id: str, status: str) -> None:
        with session_scope(self.engine) as session:
            session.execute(update(LabelingTask).where(LabelingTask.id == task_id).values(status=status))

    # Assignment ------------------------------------------------------------------------------
    def next_item(self, task_id: str, principal: Principal) -> dict[str, Any] | None:
        """The labeler's next item with its candidates and a lease, or None when nothing is left."""
        task = self._labeler_task(task_id, principal)
        for _ in range(MAX_ASSIGN_ATTEMPTS):
            found, contended = self._try_assign(task, principal.key_id)
            if found is not None:
                return self._item_view(task, *found)
            if not contended:  # nothing free, and nobody beat us to a slot: truly nothing left
                return None
        return None  # every slot we saw went to someone else meanwhile: ask again

    def _try_assign(self, task: LabelingTask, me: str) -> tuple[tuple[str, Any] | None, bool]:
        """One pass over the task's items: ((item id, lease expiry) or None, whether a race was lost)."""
        now = utcnow()
        expires = now + timedelta(seconds=task.lease_seconds)
        with session_scope(self.engine) as session:
            mine = session.exec(
                select(LabelingAssignment)
                .where(
                    LabelingAssignment.task_id == task.id,
                    LabelingAssignment.key_id == me,
                    LabelingAssignment.status == "leased",
                    LabelingAssignment.expires_at > now,
                )
                .order_by(LabelingAssignment.leased_at)
            ).first()
            items = (
                []
                if mine is not None
                else list(
                    session.exec(
                        select(LabelingItem)
                        .where(
                            LabelingItem.task_id == task.id,
                            LabelingItem.request_id.is_not(None),
                        )
                        .order_by(LabelingItem.position)
                    )
                )
            )
            assignments: dict[str, list[LabelingAssignment]] = {}
            for row in session.exec(select(LabelingAssignment).where(LabelingAssignment.task_id == task.id)):
                assignments.setdefault(row.item_id, []).append(row)
        if mine is not None:
            return (mine.item_id, mine.expires_at), False
        contended = False
        for item in items:
            rows = assignments.get(item.id, [])
            own = next((r for r in rows if r.key_id == me), None)
            if own is not None:
                if own.status == "done":
                    continue
                if self._take_over(own, me, now, expires):  # my own lapsed lease, still mine to renew
                    return (item.id, expires), False
                contended = True
                continue
            for slot in sorted(set(range(task.rankings_required)) - {r.slot for r in rows}):
                if self._insert_lease(task.id, item.id, slot, me, now, expires):
                    return (item.id, expires), False
                contended = True
            for row in rows:
                if row.status == "leased" and row.expires_at <= now:
                    if self._take_over(row, me, now, expires):
                        return (item.id, expires), False
                    contended = True
        return None, contended

    def _insert_lease(self, task_id: str, item_id: str, slot: int, key_id: str, now: Any, expires: Any) -> bool:
        try:
            with session_scope(self.engine) as session:
                session.add(
                    LabelingAssignment(
                        task_id=task_id, item_id=item_id, slot=slot, key_id=key_id, leased_at=now, expires_at=expires
                    )
                )
            return True
        except IntegrityError:  # someone took this slot (or this labeler holds the item) meanwhile
            return False

    def _take_over(self, row: LabelingAssignment, key_id: str, now: Any, expires: Any) -> bool:
        try:
            with session_scope(self.engine) as session:
                changed = session.execute(
                    update(LabelingAssignment)
                    .where(
                        LabelingAssignment.id == row.id,
                        LabelingAssignment.key_id == row.key_id,
                        LabelingAssignment.status == "leased",
                        LabelingAssignment.expires_at == row.expires_at,
                    )
                    .values(key_id=key_id, leased_at=now, expires_at=expires)
                )
            return changed.rowcount == 1
        except IntegrityError:
            return False

    def _labeler_task(self, task_id: str, principal: Principal) -> LabelingTask:
        with session_scope(self.engine) as session:
            task = session.get(LabelingTask, task_id)
            labeler = task is not None and session.get(LabelingLabeler, (task_id, principal.key_id)) is not None
        if task is None or not (labeler or principal.has_role("operator")):
            raise NotFound(f"no labeling task '{task_id}' for this key")
        if not labeler:
            raise Conflict(
                f"this key is not a labeler of task '{task_id}': an operator adds it "
                f"(POST /api/labeling/tasks/{task_id}/labelers)",
                code="not_a_labeler",
            )
        return task

    def _item_view(self, task: LabelingTask, item_id: str, expires: Any) -> dict[str, Any]:
        with session_scope(self.engine) as session:
            item = session.get(LabelingItem, item_id)
            request = session.get(ChatRequestRecord, item.request_id)
            completions = list(
                session.exec(
                    select(CompletionRecord)
                    .where(CompletionRecord.request_id == item.request_id)
                    .order_by(CompletionRecord.index)
                )
            )
        return {
            "task_id": task.id,
            "item_id": item.id,
            "position": item.position,
            "request_id": item.request_id,
            "messages": request.messages,
            "prompt": prompt_text(request.messages),
            "instructions": task.instructions,
            "candidates": [{"completion_id": c.id, "index": c.index, "text": c.text} for c in completions],
            "lease_expires_at": expires,
        }

    # Rankings --------------------------------------------------------------------------------
    def submit(
        self,
        task_id: str,
        item_id: str,
        principal: Principal,
        idempotency_key: str | None,
        *,
        candidates: Sequence[Mapping[str, Any]],
        comment: str | None = None,
    ) -> Any:
        """A ranking of a leased item, stored as ranking feedback (idempotent), closing the lease."""
        self._labeler_task(task_id, principal)
        with session_scope(self.engine) as session:
            item = session.get(LabelingItem, item_id)
            if item is None or item.task_id != task_id:
                raise NotFound(f"no item '{item_id}' in labeling task '{task_id}'")
            mine = session.exec(
                select(LabelingAssignment).where(
                    LabelingAssignment.item_id == item_id, LabelingAssignment.key_id == principal.key_id
                )
            ).first()
            earlier = session.get(FeedbackRecord, mine.feedback_id) if mine is not None and mine.feedback_id else None
        if mine is None:
            raise Conflict(
                "this item is not leased to this key (its lease may have expired and gone to another "
                f"labeler): ask for work with GET /api/labeling/tasks/{task_id}/next",
                code="not_leased",
            )
        if mine.status == "done" and (earlier is None or earlier.idempotency_key != idempotency_key):
            raise Conflict("this key already ranked this item; each labeler ranks an item once", code="already_ranked")
        submission = self.feedback.submit_ranking(
            principal,
            idempotency_key,
            request_id=item.request_id,
            candidates=candidates,
            comment=comment,
            as_labeler=True,
        )
        with session_scope(self.engine) as session:
            session.execute(
                update(LabelingAssignment)
                .where(
                    LabelingAssignment.id == mine.id,
                    LabelingAssignment.key_id == principal.key_id,
                )
                .values(status="done", feedback_id=submission.record.id, done_at=utcnow())
            )
        return submission

    # Progress and agreement ------------------------------------------------------------------
    def progress(self, task_id: str) -> dict[str, Any]:
        task = self.get(task_id)
        now = utcnow()
        with session_scope(self.engine) as session:
            items = session.exec(
                select(func.count()).select_from(LabelingItem).where(LabelingItem.task_id == task_id)
            ).one()
            generated = session.exec(
                select(func.count())
                .select_from(LabelingItem)
                .where(LabelingItem.task_id == task_id, LabelingItem.request_id.is_not(None))
            ).one()
            rows = list(session.exec(select(LabelingAssignment).where(LabelingAssignment.task_id == task_id)))
        done = [r for r in rows if r.status == "done"]
        per_item: dict[str, int] = {}
        per_labeler: dict[str, dict[str, int]] = {k: {"done": 0, "leased": 0} for k in self.labelers(task_id)}
        for row in rows:
            stats = per_labeler.setdefault(row.key_id, {"done": 0, "leased": 0})
            if row.status == "done":
                per_item[row.item_id] = per_item.get(row.item_id, 0) + 1
                stats["done"] += 1
            elif row.expires_at > now:
                stats["leased"] += 1
        required = items * task.rankings_required
        return {
            "task_id": task_id,
            "status": task.status,
            "items": items,
            "items_generated": generated,
            "items_done": sum(1 for count in per_item.values() if count >= task.rankings_required),
            "rankings_required": task.rankings_required,
            "rankings_done": len(done),
            "rankings_total": required,
            "fraction": round(len(done) / required, 4) if required else 0.0,
            "leased": sum(1 for r in rows if r.status == "leased" and r.expires_at > now),
            "labelers": per_labeler,
        }

    def agreement(self, task_id: str, *, outlier_gap: float = 0.3) -> dict[str, Any]:
        task = self.get(task_id)
        with session_scope(self.engine) as session:
            request_ids = [
                r
                for r in session.exec(
                    select(LabelingItem.request_id).where(
                        LabelingItem.task_id == task_id, LabelingItem.request_id.is_not(None)
                    )
                )
            ]
            feedback_ids = [
                f
                for f in session.exec(
                    select(LabelingAssignment.feedback_id).where(
                        LabelingAssignment.task_id == task_id, LabelingAssignment.status == "done"
                    )
                )
            ]
        result = agreement_for(self.engine, request_ids=request_ids, feedback_ids=feedback_ids, outlier_gap=outlier_gap)
        for key_id, stats in result["labelers"].items():
            stats["excluded"] = key_id in task.excluded_labelers
        result["task_id"] = task_id
        result["excluded_labelers"] = list(task.excluded_labelers)
        return result
