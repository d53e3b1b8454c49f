"""Jobs: the list and one job's progress and log, refreshed by HTMX polling; cancel."""

from __future__ import annotations

from litestar import Request, get, post
from litestar.response import Template

from .render import NavItem, page
from .session import console

NAV = NavItem("Jobs", "/console/jobs")
POLL_SECONDS = 2
STOP_POLLING = 286  # htmx stops an `every Ns` poll when the answer has this status
ACTIVE = ("queued", "running")


@get("/console/jobs", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def jobs_page(request: Request, status: str | None = None) -> Template:
    platform = request.app.state.platform
    fragment = bool(request.headers.get("hx-request"))
    return page(request, "_jobs_table.html" if fragment else "jobs.html", active=NAV.path,
                jobs=platform.jobs.list(status=status or None, limit=100), status=status or "",
                kinds=platform.job_kinds.names(), poll=POLL_SECONDS)  # fmt: skip


@get("/console/jobs/{job_id:str}", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def job_page(request: Request, job_id: str) -> Template:
    platform = request.app.state.platform
    job = platform.jobs.get(job_id)
    fragment = bool(request.headers.get("hx-request"))
    response = page(request, "_job_detail.html" if fragment else "job.html", active=NAV.path, job=job,
                    logs=platform.jobs.logs(job_id), poll=POLL_SECONDS)  # fmt: skip
    if fragment and job.status not in ACTIVE:
        response.status_code = STOP_POLLING  # the job is done: nothing more will change
    return response


@post("/console/jobs/{job_id:str}/cancel", opt=console("operator"), include_in_schema=False, sync_to_thread=True,
      status_code=200)  # fmt: skip
def cancel_job(request: Request, job_id: str) -> Template:
    platform = request.app.state.platform
    job = platform.jobs.cancel(job_id)
    platform.audit.record(request.scope["principal"], "job.cancel", job_id, via="console")  # type: ignore[typeddict-item]
    return page(request, "_job_detail.html", active=NAV.path, job=job, logs=platform.jobs.logs(job_id), poll=POLL_SECONDS)


ROUTES = [jobs_page, job_page, cancel_job]
