"""Background jobs: submit, watch, read logs, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from espalier.api.guards import CurrentPrincipal, access
from espalier.api.paths import PATH_PARAMS, inside_home
from espalier.api.schema_types import INT64_MAX


class JobSubmit(msgspec.Struct, forbid_unknown_fields=True):
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    params: dict[str, Any] = {}


class JobOut(msgspec.Struct):
    id: str
    kind: str
    status: str
    progress: float
    message: str
    params: dict[str, Any]
    result: Any
    error: str | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobLogOut(msgspec.Struct):
    id: int
    at: datetime
    message: str


class JobMetricOut(msgspec.Struct):
    step: int
    at: datetime
    values: dict[str, float]


def job_out(job: Any) -> JobOut:
    return JobOut(**{field: getattr(job, field) for field in JobOut.__struct_fields__})


class JobsController(Controller):
    path = "/api/jobs"
    tags = ["jobs"]
    opt = access("operator")

    @get(sync_to_thread=True, summary="List jobs, newest first")
    def list_jobs(
        self,
        request: Request,
        status: FromQuery[str | None] = None,
        kind: FromQuery[str | None] = None,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        jobs = request.app.state.platform.jobs.list(status=status, kind=kind, limit=limit)
        return {"jobs": [job_out(job) for job in jobs], "kinds": request.app.state.platform.job_kinds.names()}

    @post(sync_to_thread=True, summary="Submit a job")
    def submit_job(self, request: Request, data: JSONBody[JobSubmit], principal: CurrentPrincipal) -> JobOut:
        platform = request.app.state.platform
        params = dict(data.params)
        for key in PATH_PARAMS & set(params):  # files the job reads: over HTTP only under ESPALIER_HOME
            if isinstance(params[key], str):
                params[key] = str(inside_home(platform.settings.home, params[key], key))
        job = platform.jobs.submit(data.kind, params, actor=principal)
        return job_out(job)

    @get("/{job_id:str}", sync_to_thread=True, summary="One job with its progress")
    def get_job(self, request: Request, job_id: FromPath[str]) -> JobOut:
        return job_out(request.app.state.platform.jobs.get(job_id))

    @get("/{job_id:str}/logs", sync_to_thread=True, summary="A job's log lines")
    def get_logs(
        self, request: Request, job_id: FromPath[str], after_id: Annotated[int, Parameter(ge=0, le=INT64_MAX)] = 0
    ) -> dict[str, list[JobLogOut]]:
        logs = request.app.state.platform.jobs.logs(job_id, after_id=after_id)
        return {"logs": [JobLogOut(id=line.id, at=line.at, message=line.message) for line in logs]}

    @get("/{job_id:str}/metrics", sync_to_thread=True, summary="A job's per-step metrics (training curves)")
    def get_metrics(
        self, request: Request, job_id: FromPath[str], after_step: Annotated[int, Parameter(ge=-1, le=INT64_MAX)] = -1
    ) -> dict[str, list[JobMetricOut]]:
        rows = request.app.state.platform.jobs.metrics(job_id, after_step=after_step)
        return {"metrics": [JobMetricOut(step=row.step, at=row.at, values=row.values) for row in rows]}

    @post("/{job_id:str}/cancel", status_code=200, sync_to_thread=True, summary="Cancel a job")
    def cancel_job(self, request: Request, job_id: FromPath[str], principal: CurrentPrincipal) -> JobOut:
        platform = request.app.state.platform
        job = platform.jobs.cancel(job_id, actor=principal)
        return job_out(job)


ROUTES = [JobsController]
