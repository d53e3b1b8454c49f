"""Labeling tasks: operators build tasks and watch progress and agreement; labelers (any key an
operator adds to a task, user role included) take items and rank their candidates.

A ranking is stored as ranking feedback, so it needs an ``Idempotency-Key`` header like every
feedback POST, and a retry with the same key returns the stored feedback.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.params import FromPath, JSONBody, Parameter

from espalier.api.feedback.routes import IDEMPOTENCY_HEADER, CandidateRanking, FeedbackOut, _respond
from espalier.api.guards import CurrentPrincipal, access
from espalier.api.schema_types import Count, Int64

KeyId = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class TaskIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    prompts: Annotated[list[Annotated[str, msgspec.Meta(max_length=20_000)]], msgspec.Meta(max_length=2000)] = []
    conversation_ids: Annotated[list[Annotated[str, msgspec.Meta(max_length=80)]], msgspec.Meta(max_length=500)] = []
    instructions: Annotated[str, msgspec.Meta(max_length=20_000)] | None = None
    n: Annotated[int, msgspec.Meta(ge=2, le=16)] = 3
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    rankings_required: Annotated[int, msgspec.Meta(ge=1, le=50)] = 2
    labelers: Annotated[list[KeyId], msgspec.Meta(max_length=200)] = []
    temperature: Annotated[float, msgspec.Meta(gt=0, le=2)] = 1.0
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=2048)] = 128
    seed: Int64 | None = None
    lease_seconds: Annotated[int, msgspec.Meta(ge=30, le=604_800)] = 900


class KeyIdsIn(msgspec.Struct, forbid_unknown_fields=True):
    key_ids: Annotated[list[KeyId], msgspec.Meta(max_length=200)]


class ItemRankingIn(CandidateRanking):
    pass  # its own name in the OpenAPI document


class TaskOut(msgspec.Struct):
    id: str
    name: str
    instructions: str
    model: str
    n: Count
    rankings_required: Count
    sampling: dict[str, Any]
    lease_seconds: Count
    status: str
    job_id: str | None
    excluded_labelers: list[str]
    created_by: str | None
    created_at: datetime


def task_out(task: Any) -> TaskOut:
    return TaskOut(**{name: getattr(task, name) for name in TaskOut.__struct_fields__})


def _service(request: Request) -> Any:
    return request.app.state.platform.labeling


@post(
    "/api/labeling/tasks",
    opt=access("operator"),
    tags=["labeling"],
    status_code=202,
    sync_to_thread=True,
    summary="Build a labeling task from prompts or logged conversations; candidates are generated as a job",
)
def create_task(request: Request, data: JSONBody[TaskIn], principal: CurrentPrincipal) -> dict[str, Any]:
    task = _service(request).create(
        principal,
        name=data.name,
        prompts=data.prompts,
        conversation_ids=data.conversation_ids,
        instructions=data.instructions,
        n=data.n,
        model=data.model,
        rankings_required=data.rankings_required,
        labelers=data.labelers,
        temperature=data.temperature,
        max_tokens=data.max_tokens,
        seed=data.seed,
        lease_seconds=data.lease_seconds,
    )
    return {"task": task_out(task), "job_id": task.job_id, "progress": _service(request).progress(task.id)}


@post(
    "/api/labeling/tasks/{task_id:str}/generate",
    opt=access("operator"),
    tags=["labeling"],
    status_code=202,
    sync_to_thread=True,
    summary="Generate candidates again for items that have none (after a failed or cancelled job)",
)
def regenerate(request: Request, task_id: FromPath[str], principal: CurrentPrincipal) -> dict[str, Any]:
    job = _service(request).regenerate(task_id, principal)
    return {"job_id": job.id}


@get(
    "/api/labeling/tasks",
    opt=access("user"),
    tags=["labeling"],
    sync_to_thread=True,
    summary="Labeling tasks: all of them for operators, the ones the key labels for everyone else",
)
def list_tasks(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    return {"tasks": [task_out(task) for task in _service(request).list(principal)]}


@get(
    "/api/labeling/tasks/{task_id:str}",
    opt=access("user"),
    tags=["labeling"],
    sync_to_thread=True,
    summary="One task with its progress (operators: with its labelers)",
)
def get_task(request: Request, task_id: FromPath[str], principal: CurrentPrincipal) -> dict[str, Any]:
    service = _service(request)
    task = service.get(task_id, principal)
    body: dict[str, Any] = {"task": task_out(task)}
    if principal.has_role("operator"):
        body["progress"] = service.progress(task_id)
        body["labelers"] = service.labelers(task_id)
    return body


@post(
    "/api/labeling/tasks/{task_id:str}/labelers",
    opt=access("operator"),
    tags=["labeling"],
    status_code=200,
    sync_to_thread=True,
    summary="Make API keys (by id) labelers of the task",
)
def add_labelers(
    request: Request, task_id: FromPath[str], data: JSONBody[KeyIdsIn], principal: CurrentPrincipal
) -> dict[str, Any]:
    labelers = _service(request).add_labelers(task_id, data.key_ids, principal)
    return {"labelers": labelers}


@delete(
    "/api/labeling/tasks/{task_id:str}/labelers/{key_id:str}",
    opt=access("operator"),
    tags=["labeling"],
    status_code=200,
    sync_to_thread=True,
    summary="Stop giving items to a labeler (their rankings stay)",
)
def remove_labeler(
    request: Request, task_id: FromPath[str], key_id: FromPath[str], principal: CurrentPrincipal
) -> dict[str, Any]:
    labelers = _service(request).remove_labeler(task_id, key_id, principal)
    return {"labelers": labelers}


@put(
    "/api/labeling/tasks/{task_id:str}/excluded-labelers",
    opt=access("operator"),
    tags=["labeling"],
    sync_to_thread=True,
    summary="Leave these labelers' rankings of this task out of pairs and reward training",
)
def exclude_labelers(
    request: Request, task_id: FromPath[str], data: JSONBody[KeyIdsIn], principal: CurrentPrincipal
) -> dict[str, Any]:
    excluded = _service(request).set_excluded(task_id, data.key_ids, principal)
    return {"excluded_labelers": excluded}


@get(
    "/api/labeling/tasks/{task_id:str}/agreement",
    opt=access("operator"),
    tags=["labeling"],
    sync_to_thread=True,
    summary="Agreement in the task: Kendall's tau-b and Krippendorff's alpha, per item and per labeler",
)
def task_agreement(
    request: Request, task_id: FromPath[str], outlier_gap: Annotated[float, Parameter(ge=0, le=2)] = 0.3
) -> dict[str, Any]:
    return _service(request).agreement(task_id, outlier_gap=outlier_gap)


@get(
    "/api/labeling/tasks/{task_id:str}/next",
    opt=access("user"),
    tags=["labeling"],
    sync_to_thread=True,
    summary="The calling labeler's next item (leased to it until lease_expires_at); item is null when done",
)
def next_item(request: Request, task_id: FromPath[str], principal: CurrentPrincipal) -> dict[str, Any]:
    service = _service(request)
    item = service.next_item(task_id, principal)
    return {"item": item, "progress": service.progress(task_id) if item is None else None}


# Async with a hop to a thread, as the feedback POSTs are (see api/feedback/routes.py).
@post(
    "/api/labeling/tasks/{task_id:str}/items/{item_id:str}/ranking",
    opt=access("user"),
    tags=["labeling"],
    status_code=201,
    summary="Rank a leased item's candidates (ties allowed, unacceptable flags); needs Idempotency-Key",
)
async def rank_item(
    request: Request,
    task_id: FromPath[str],
    item_id: FromPath[str],
    data: JSONBody[ItemRankingIn],
    principal: CurrentPrincipal,
) -> Response[FeedbackOut]:
    submission = await anyio.to_thread.run_sync(
        lambda: _service(request).submit(
            task_id,
            item_id,
            principal,
            request.headers.get(IDEMPOTENCY_HEADER),
            candidates=[msgspec.structs.asdict(c) for c in data.candidates],
            comment=data.comment,
        )
    )
    return _respond(submission)


ROUTES = [
    create_task,
    regenerate,
    list_tasks,
    get_task,
    add_labelers,
    remove_labeler,
    exclude_labelers,
    task_agreement,
    next_item,
    rank_item,
]
