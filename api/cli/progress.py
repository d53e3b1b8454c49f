"""Progress bars for commands that wait: on a job they run here, or on work that reports a fraction."""

from __future__ import annotations

import time
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from espalier.api.cli.common import console


def progress_bar() -> Progress:

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
    )


def follow_job(jobs: Any, job: Any) -> Any:
    """Draw ``job``'s progress and message until it is no longer queued or running; returns the
    final record. ``jobs`` is the platform's job service."""
    with progress_bar() as bar:
        task = bar.add_task("queued", total=1.0)
        while True:
            job = jobs.get(job.id)
            bar.update(task, completed=job.progress, description=(job.message or job.status)[:60])
            if job.status not in ("queued", "running"):
                return job
            time.sleep(0.5)
