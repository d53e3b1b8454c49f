"""Jobs: the list and one job's progress and log, refreshed by HTMX polling; its training curves
(loss, reward, KL... whatever the job records with ``job.metrics``), drawn by Chart.js from
``/console/jobs/{id}/metrics`` and extended while the job runs; cancel with confirmation."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get, post
from litestar.params import FromPath, FromQuery, Parameter
from litestar.response import Template

from espalier.api.console.render import NavItem, page
from espalier.api.console.session import console

NAV = NavItem("Jobs", "/console/jobs")
POLL_SECONDS = 2
STOP_POLLING = 286  # htmx stops an `every Ns` poll when the answer has this status
ACTIVE = ("queued", "running")


@get("/console/jobs", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def jobs_page(request: Request, status: FromQuery[str | None] = None) -> Template:
    platform = request.app.state.platform
    fragment = bool(request.headers.get("hx-request"))
    return page(
        request,
        "_jobs_table.html" if fragment else "jobs.html",
        active=NAV.path,
        jobs=platform.jobs.list(status=status or None, limit=100),
        status=status or "",
        kinds=platform.job_kinds.names(),
        poll=POLL_SECONDS,
    )


@get("/console/jobs/{job_id:str}", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def job_page(request: Request, job_id: FromPath[str]) -> Template:
    platform = request.app.state.platform
    job = platform.jobs.get(job_id)
    fragment = bool(request.headers.get("hx-request"))
    response = page(
        request,
        "_job_detail.html" if fragment else "job.html",
        active=NAV.path,
        job=job,
        logs=platform.jobs.logs(job_id),
        poll=POLL_SECONDS,
    )
    if fragment and job.status not in ACTIVE:
        response.status_code = STOP_POLLING  # the job is done: nothing more will change
    return response


@get("/console/jobs/{job_id:str}/metrics", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def job_metrics(
    request: Request, job_id: FromPath[str], after_step: Annotated[int, Parameter(ge=-1)] = -1
) -> dict[str, Any]:
    """The same rows as ``GET /api/jobs/{id}/metrics`` for the signed-in browser, with the job's
    status so the page knows when to stop asking."""
    platform = request.app.state.platform
    job = platform.jobs.get(job_id)
    rows = platform.jobs.metrics(job_id, after_step=after_step)
    return {
        "status": job.status,
        "active": job.status in ACTIVE,
        "metrics": [{"step": row.step, "values": row.values} for row in rows],
    }


@post(
    "/console/jobs/{job_id:str}/cancel",
    opt=console("operator"),
    include_in_schema=False,
    sync_to_thread=True,
    status_code=200,
)
def cancel_job(request: Request, job_id: FromPath[str]) -> Template:
    platform = request.app.state.platform
    job = platform.jobs.cancel(job_id, actor=request.scope["principal"], via="console")  # type: ignore[typeddict-item]
    return page(
        request, "_job_detail.html", active=NAV.path, job=job, logs=platform.jobs.logs(job_id), poll=POLL_SECONDS
    )


ROUTES = [jobs_page, job_page, job_metrics, cancel_job]
