"""Background jobs, embedded: a jobs table and an in-process worker pool.

The interface a distributed backend would implement is :class:`JobService` (submit, get, list,
cancel, logs); the worker is one way to execute what it queues. A job whose worker died (a
restart, a crash) stops sending heartbeats and is marked failed, never silently lost.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import select

from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.contracts import JobEvent, JobKind
from espalier.core.infrastructure.db.base import new_id, utcnow
from espalier.core.infrastructure.db.engine import lock_transaction, session_scope
from espalier.core.infrastructure.errors import Conflict, InvalidInput, NotFound, RateLimited
from espalier.core.infrastructure.identity import Principal
from espalier.core.infrastructure.jobs.tables import Job, JobLog, JobMetric
from espalier.core.infrastructure.registry import Registry

log = logging.getLogger("espalier.jobs")

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
HEARTBEAT_SECONDS = 5.0
STALE_AFTER = timedelta(seconds=30)
MAX_PARAMS_BYTES = 64 * 1024


def throttled(check: Callable[[], bool], seconds: float = 1.0) -> Callable[[], bool]:
    """``check`` asked at most once per ``seconds`` (a job's cancellation is a database read; a
    decoding loop polls it between tokens). Once true, it stays true."""
    state = {"at": 0.0, "value": False}

    def ask() -> bool:
        now = time.monotonic()
        if not state["value"] and now - state["at"] >= seconds:
            state["at"], state["value"] = now, bool(check())
        return state["value"]

    return ask


class JobCancelled(Exception):
    """Raise from a job (or let :meth:`RunningJob.check_cancelled` raise) to stop it cleanly."""


class JobService:
    def __init__(
        self,
        engine: Engine,
        kinds: Registry[JobKind],
        artifacts_dir: Path,
        audit: AuditLog | None = None,
        *,
        max_queued_per_kind: int = 8,
        max_queued_per_key: int = 4,
        announce: Callable[[str, object], None] | None = None,
    ):
        self.engine = engine
        self.announce = announce or (lambda hook, event: None)  # on_job_finished
        self.kinds = kinds
        self.artifacts_dir = artifacts_dir
        self.audit = audit
        self.max_queued_per_kind = max_queued_per_kind
        self.max_queued_per_key = max_queued_per_key
        self.wakeup = threading.Event()

    def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        created_by: str | None = None,
        actor: Principal | None = None,
        via: str | None = None,
    ) -> Job:
        """Queue a job. ``actor``: the key that asked for it directly (audited as ``job.submit``);
        jobs the platform submits for its own reasons pass ``created_by`` alone."""
        self.kinds.get(kind)  # NotFound names the kinds there are
        if actor is not None:
            created_by = actor.key_id
        params = dict(params or {})
        try:
            encoded = json.dumps(params)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"job parameters must be JSON: {exc}") from exc
        if len(encoded) > MAX_PARAMS_BYTES:
            raise InvalidInput(f"job parameters are larger than {MAX_PARAMS_BYTES} bytes")
        job_id = new_id("job")
        job = Job(
            id=job_id,
            kind=kind,
            params=params,
            created_by=created_by,
            artifact_dir=str(self.artifacts_dir / "jobs" / job_id),
        )
        with session_scope(self.engine) as session:
            # the counts and the insert under one database lock, so concurrent submissions (any
            # process) cannot pass the bounds together
            lock_transaction(session, "jobs:queue")
            self._check_queue(session, kind, created_by)
            session.add(job)
        if actor is not None and self.audit is not None:
            self.audit.record(actor, "job.submit", job.id, kind=kind, via=via)
        self.wakeup.set()
        return job

    def _check_queue(self, session: Any, kind: str, created_by: str | None) -> None:
        """A bounded queue: at most ``max_queued_per_kind`` jobs of one kind and
        ``max_queued_per_key`` jobs of one key wait at once (running ones do not count)."""
        queued = Job.status == "queued"
        of_kind = session.exec(select(func.count()).select_from(Job).where(queued, Job.kind == kind)).one()
        if of_kind >= self.max_queued_per_kind:
            raise RateLimited(
                f"{of_kind} '{kind}' jobs are already waiting (ESPALIER_MAX_QUEUED_JOBS_PER_KIND="
                f"{self.max_queued_per_kind}); wait for one to start or cancel one",
                code="job_queue_full",
                retry_after=30,
            )
        if created_by is not None:
            mine = session.exec(select(func.count()).select_from(Job).where(queued, Job.created_by == created_by)).one()
            if mine >= self.max_queued_per_key:
                raise RateLimited(
                    f"this key has {mine} jobs waiting (ESPALIER_MAX_QUEUED_JOBS_PER_KEY={self.max_queued_per_key}); "
                    "wait for one to start or cancel one",
                    code="job_queue_full",
                    retry_after=30,
                )

    def submit_exclusive(
        self, kind: str, params: Mapping[str, Any] | None = None, *, created_by: str | None = None
    ) -> Job | None:
        """Submit unless a job of this kind is already queued or running, in any process.

        The check and the insert are one transaction under a database lock, so two servers on
        one database never both submit. Returns None when one was already active.
        """
        self.kinds.get(kind)
        params = dict(params or {})
        job_id = new_id("job")
        job = Job(
            id=job_id,
            kind=kind,
            params=params,
            created_by=created_by,
            artifact_dir=str(self.artifacts_dir / "jobs" / job_id),
        )
        with session_scope(self.engine) as session:
            lock_transaction(session, f"jobs:{kind}")
            active = session.exec(select(Job.id).where(Job.kind == kind, Job.status.in_(("queued", "running")))).first()
            if active is not None:
                return None
            session.add(job)
        self.wakeup.set()
        return job

    def get(self, job_id: str) -> Job:
        with session_scope(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job with id '{job_id}'")
            return job

    def list(self, *, status: str | None = None, kind: str | None = None, limit: int = 50) -> list[Job]:
        with session_scope(self.engine) as session:
            query = select(Job).order_by(Job.created_at.desc()).limit(limit)
            if status:
                query = query.where(Job.status == status)
            if kind:
                query = query.where(Job.kind == kind)
            return list(session.exec(query))

    def logs(self, job_id: str, *, after_id: int = 0, limit: int = 500) -> list[JobLog]:
        self.get(job_id)
        with session_scope(self.engine) as session:
            query = select(JobLog).where(JobLog.job_id == job_id, JobLog.id > after_id).order_by(JobLog.id).limit(limit)
            return list(session.exec(query))

    def metrics(self, job_id: str, *, after_step: int = -1, limit: int = 5000) -> list[JobMetric]:
        """A job's per-step numbers in step order (the curves of a training run)."""
        self.get(job_id)
        with session_scope(self.engine) as session:
            query = (
                select(JobMetric)
                .where(JobMetric.job_id == job_id, JobMetric.step > after_step)
                .order_by(JobMetric.step, JobMetric.id)
                .limit(limit)
            )
            return list(session.exec(query))

    def cancel(self, job_id: str, *, actor: Principal | None = None, via: str | None = None) -> Job:
        """Queued jobs stop at once; running ones are asked to stop at their next check (audited
        as ``job.cancel`` when ``actor`` asked)."""
        with session_scope(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job with id '{job_id}'")
            if job.status in TERMINAL:
                raise Conflict(f"job '{job_id}' already {job.status}")
            if job.status == "queued":
                job.status = "cancelled"
                job.finished_at = utcnow()
                job.message = "cancelled before it started"
            job.cancel_requested = True
            session.add(job)
        if actor is not None and self.audit is not None:
            self.audit.record(actor, "job.cancel", job_id, via=via)
        return job

    def fail_stale(self) -> int:
        """Mark running jobs whose worker stopped sending heartbeats as failed."""
        cutoff = utcnow() - STALE_AFTER
        with session_scope(self.engine) as session:
            stale = list(session.exec(select(Job).where(Job.status == "running", Job.heartbeat_at < cutoff)))
            for job in stale:
                job.status = "failed"
                job.error = "interrupted: its worker stopped (server restart or crash); submit it again"
                job.finished_at = utcnow()
                session.add(job)
                session.add(JobLog(job_id=job.id, message=job.error))
        for job in stale:
            log.warning("job %s (%s) was interrupted and is marked failed", job.id, job.kind)
        return len(stale)


class RunningJob:
    """The :class:`~espalier.core.infrastructure.contracts.JobContext` a job's code receives."""

    PROGRESS_INTERVAL = 0.5

    def __init__(self, service: JobService, job: Job):
        self.service = service
        self.job_id = job.id
        self.params = dict(job.params)
        self.artifact_dir = job.artifact_dir or str(service.artifacts_dir / "jobs" / job.id)
        Path(self.artifact_dir).mkdir(parents=True, exist_ok=True)
        self._last_progress = 0.0
        self._cancelled = False

    def progress(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        if fraction < 1.0 and now - self._last_progress < self.PROGRESS_INTERVAL:
            return
        self._last_progress = now
        with session_scope(self.service.engine) as session:
            session.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(progress=fraction, message=message[:2000], heartbeat_at=utcnow())
            )

    def log(self, message: str) -> None:
        with session_scope(self.service.engine) as session:
            session.add(JobLog(job_id=self.job_id, message=str(message)[:10_000]))

    def metrics(self, step: int, **values: float) -> None:
        clean = {}
        for name, value in values.items():
            value = float(value)
            if value == value and abs(value) != float("inf"):  # JSON has no NaN or infinity
                clean[name] = value
        with session_scope(self.service.engine) as session:
            session.add(JobMetric(job_id=self.job_id, step=int(step), values=clean))

    def cancelled(self) -> bool:
        if not self._cancelled:
            with session_scope(self.service.engine) as session:
                job = session.get(Job, self.job_id)
                self._cancelled = bool(job and job.cancel_requested)
        return self._cancelled

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled()


class JobWorker:
    """Threads that claim queued jobs, run them and keep their heartbeats going."""

    def __init__(self, service: JobService, *, threads: int = 1, poll_seconds: float = 1.0):
        self.service = service
        self.threads = threads
        self.poll_seconds = poll_seconds
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._pool: list[threading.Thread] = []

    def start(self) -> None:
        self.service.fail_stale()
        for index in range(self.threads):
            thread = threading.Thread(target=self._loop, name=f"espalier-job-{index}", daemon=True)
            thread.start()
            self._pool.append(thread)
        beat = threading.Thread(target=self._heartbeat, name="espalier-job-heartbeat", daemon=True)
        beat.start()
        self._pool.append(beat)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.service.wakeup.set()
        for thread in self._pool:
            thread.join(timeout)
        self._pool.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self._claim()
            if job is None:
                self.service.wakeup.wait(self.poll_seconds)
                self.service.wakeup.clear()
                continue
            self._run(job)

    def _claim(self) -> Job | None:
        engine = self.service.engine
        with session_scope(engine) as session:
            candidate = session.exec(
                select(Job.id).where(Job.status == "queued").order_by(Job.created_at).limit(1)
            ).first()
            if candidate is None:
                return None
            now = utcnow()
            claimed = session.execute(
                update(Job)
                .where(Job.id == candidate, Job.status == "queued")
                .values(status="running", started_at=now, heartbeat_at=now, worker_id=self.worker_id)
            )
            if claimed.rowcount != 1:
                return None
        return self.service.get(candidate)

    def _run(self, job: Job) -> None:
        context = RunningJob(self.service, job)
        with self._lock:
            self._running.add(job.id)
        status, result, error = "succeeded", None, None
        kind = None
        try:
            kind = self.service.kinds.get(job.kind)
            context.log(f"started on {self.worker_id}")
            result = kind.run(context)
            json.dumps(result)
            if context.cancelled():
                status = "cancelled"
        except JobCancelled:
            status = "cancelled"
        except Exception as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("job %s (%s) failed", job.id, job.kind)
        finally:
            with self._lock:
                self._running.discard(job.id)
        if error:
            context.log(error)
        with session_scope(self.service.engine) as session:
            row = session.get(Job, job.id)
            if row is not None:
                row.status = status
                row.result = result if status == "succeeded" else None
                row.error = error
                row.finished_at = utcnow()
                if status == "succeeded":
                    row.progress = 1.0
                elif status == "cancelled":
                    row.message = "cancelled"
                session.add(row)
        if kind is not None and kind.finished is not None:
            try:
                kind.finished(self.service.get(job.id))
            except Exception:
                log.exception("job %s (%s): its 'finished' step failed", job.id, job.kind)
        self.service.announce(
            "on_job_finished",
            JobEvent(
                job_id=job.id,
                kind=job.kind,
                status=status,
                created_by=job.created_by,
                result=result if status == "succeeded" else None,
                error=error,
            ),
        )

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._lock:
                running = list(self._running)
            try:
                if running:
                    with session_scope(self.service.engine) as session:
                        session.execute(update(Job).where(Job.id.in_(running)).values(heartbeat_at=utcnow()))
                self.service.fail_stale()
            except Exception:  # the database may be briefly unavailable; try again next beat
                log.exception("job heartbeat failed")
