"""The embedded job runner: submit, progress, logs, cancel, failure, interrupted jobs."""

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from espalier import hookimpl
from espalier.core.infrastructure.contracts import JobKind
from espalier.core.infrastructure.db import session_scope
from espalier.core.infrastructure.db.base import utcnow
from espalier.core.infrastructure.errors import Conflict, InvalidInput, NotFound
from espalier.core.infrastructure.jobs.tables import Job
from espalier.core.infrastructure.settings import Settings
from espalier.core.platform import Platform

release = threading.Event()


def count_to(job):
    steps = int(job.params.get("steps", 3))
    for step in range(steps):
        job.progress((step + 1) / steps, f"step {step + 1} of {steps}")
        job.log(f"did step {step + 1}")
        job.metrics(step, loss=1.0 / (step + 1), reward=float("nan") if step == 0 else step)
    (__import__("pathlib").Path(job.artifact_dir) / "result.txt").write_text("done")
    return {"counted": steps}


def wait_for_cancel(job):
    job.progress(0.1, "waiting")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if job.cancelled():
            return None
        time.sleep(0.05)
    raise RuntimeError("never cancelled")


def explode(job):
    raise ValueError("bad parameter 'x'")


class JobsPlugin:
    @hookimpl
    def register_job_kinds(self, register):
        register(JobKind("count", run=count_to, description="count"))
        register(JobKind("wait", run=wait_for_cancel))
        register(JobKind("explode", run=explode))


def wait_until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def platform(database_url, tmp_path):
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    instance = Platform(settings, extra_plugins=[("jobs-test", JobsPlugin())], load_entry_points=False)
    instance.start()
    yield instance
    instance.close()


def test_job_runs_with_progress_logs_and_artifacts(platform):
    job = platform.jobs.submit("count", {"steps": 4}, created_by="k1")
    done = wait_until(lambda: (j := platform.jobs.get(job.id)).status in ("succeeded", "failed") and j)
    assert done.status == "succeeded", done.error
    assert done.result == {"counted": 4}
    assert done.progress == 1.0
    assert done.started_at and done.finished_at and done.finished_at >= done.started_at
    messages = [line.message for line in platform.jobs.logs(job.id)]
    assert messages[1:] == [f"did step {n}" for n in range(1, 5)]
    assert (platform.settings.artifacts_dir / "jobs" / job.id / "result.txt").read_text() == "done"
    curves = platform.jobs.metrics(job.id)
    assert [row.step for row in curves] == [0, 1, 2, 3]
    assert curves[0].values == {"loss": 1.0}  # NaN is dropped, not stored
    assert curves[3].values == {"loss": 0.25, "reward": 3.0}
    assert [row.step for row in platform.jobs.metrics(job.id, after_step=1)] == [2, 3]


def test_running_job_can_be_cancelled(platform):
    job = platform.jobs.submit("wait")
    wait_until(lambda: platform.jobs.get(job.id).status == "running")
    platform.jobs.cancel(job.id)
    final = wait_until(lambda: (j := platform.jobs.get(job.id)).status != "running" and j)
    assert final.status == "cancelled"
    with pytest.raises(Conflict, match="already cancelled"):
        platform.jobs.cancel(job.id)


def test_failed_job_keeps_its_error(platform):
    job = platform.jobs.submit("explode")
    final = wait_until(lambda: (j := platform.jobs.get(job.id)).status == "failed" and j)
    assert "bad parameter 'x'" in final.error
    assert any("bad parameter" in line.message for line in platform.jobs.logs(job.id))


def test_bad_submissions_are_refused(platform):
    with pytest.raises(NotFound, match="count"):
        platform.jobs.submit("no-such-kind")
    with pytest.raises(InvalidInput, match="JSON"):
        platform.jobs.submit("count", {"when": object()})
    with pytest.raises(NotFound):
        platform.jobs.get("job_missing")


def test_job_interrupted_by_a_restart_is_marked_failed(database_url, tmp_path):
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    first = Platform(settings, extra_plugins=[("jobs-test", JobsPlugin())], load_entry_points=False)
    first.start(run_jobs=False)
    job = first.jobs.submit("wait")
    # a worker claimed it, then the process died: its heartbeat stopped long ago
    with session_scope(first.engine) as session:
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(status="running", worker_id="dead:1", heartbeat_at=utcnow() - timedelta(minutes=5))
        )
    first.close()
    second = Platform(settings, extra_plugins=[("jobs-test", JobsPlugin())], load_entry_points=False)
    second.start()
    try:
        row = second.jobs.get(job.id)
        assert row.status == "failed"
        assert "interrupted" in row.error
    finally:
        second.close()


def test_queued_job_cancelled_before_it_starts(database_url, tmp_path):
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    platform = Platform(settings, extra_plugins=[("jobs-test", JobsPlugin())], load_entry_points=False)
    platform.start(run_jobs=False)
    try:
        job = platform.jobs.submit("count")
        assert platform.jobs.cancel(job.id).status == "cancelled"
        assert platform.jobs.list(status="cancelled")[0].id == job.id
    finally:
        platform.close()


def test_the_queue_is_bounded_per_kind_and_per_key(database_url, tmp_path):
    """On SQLite and PostgreSQL: 40 concurrent submissions never pass the bounds together."""
    from concurrent.futures import ThreadPoolExecutor

    from espalier.core.infrastructure.errors import RateLimited

    settings = Settings(
        home=tmp_path / "home", database_url=database_url, max_queued_jobs_per_kind=6, max_queued_jobs_per_key=4
    )
    platform = Platform(settings, extra_plugins=[("jobs-test", JobsPlugin())], load_entry_points=False)
    platform.start(run_jobs=False)  # nothing starts: every job stays queued

    def submit(created_by):
        try:
            return platform.jobs.submit("count", created_by=created_by).id
        except RateLimited as exc:
            return exc

    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(submit, ["key-a"] * 20 + ["key-b"] * 20))
        queued = [o for o in outcomes if isinstance(o, str)]
        refused = [o for o in outcomes if isinstance(o, RateLimited)]
        assert len(queued) == 6 and len(refused) == 34
        assert all(r.code == "job_queue_full" and r.retry_after for r in refused)
        jobs = platform.jobs.list(kind="count")
        per_key = {k: sum(j.created_by == k for j in jobs) for k in ("key-a", "key-b")}
        assert max(per_key.values()) <= 4 and sum(per_key.values()) == 6
        # another kind has its own bound; a cancelled job frees its place
        assert platform.jobs.submit("wait").status == "queued"
        platform.jobs.cancel(queued[0])
        assert isinstance(submit("key-c"), str)
    finally:
        platform.close()
