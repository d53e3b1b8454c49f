"""Labeling: operators see every task's progress and agreement (a Chart.js chart per task) and
exclude labelers far below consensus; a signed-in key that is a labeler of a task works through
its queue here (instructions, candidates side by side, ranks with ties, the unacceptable flag,
keyboard shortcuts). Console sign-in stays operator/admin only: user-role labelers use the API
(``/api/labeling/...``), operators who label add their own key id to a task.
"""

from __future__ import annotations

import secrets

import anyio
from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Template

from espalier.api.console.render import NavItem, page, ranked_candidates
from espalier.api.console.session import console
from espalier.core.infrastructure.errors import InvalidInput

NAV = NavItem("Labeling", "/console/labeling")


def _service(request: Request):
    return request.app.state.platform.labeling


def _principal(request: Request):
    return request.scope["principal"]  # type: ignore[typeddict-item]


@get("/console/labeling", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def labeling_page(request: Request) -> Template:
    service = _service(request)
    me = _principal(request).key_id
    tasks = [
        (task, service.progress(task.id), me in service.labelers(task.id)) for task in service.list(_principal(request))
    ]
    return page(request, "labeling.html", active=NAV.path, tasks=tasks)


def _task_context(request: Request, task_id: str) -> dict:
    service = _service(request)
    task = service.get(task_id)
    agreement = service.agreement(task_id)
    progress = service.progress(task_id)
    labelers = sorted(set(progress["labelers"]) | set(agreement["labelers"]) | set(task.excluded_labelers))
    chart = {
        "labels": labelers,
        "mean_tau": [agreement["labelers"].get(k, {}).get("mean_tau") for k in labelers],
        "alpha_without": [agreement["labelers"].get(k, {}).get("alpha_without") for k in labelers],
        "done": [progress["labelers"].get(k, {}).get("done", 0) for k in labelers],
    }
    return {
        "task": task,
        "progress": progress,
        "agreement": agreement,
        "labelers": labelers,
        "chart": chart,
        "is_labeler": _principal(request).key_id in service.labelers(task_id),
    }


@get("/console/labeling/{task_id:str}", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def labeling_task_page(request: Request, task_id: FromPath[str]) -> Template:
    return page(request, "labeling_task.html", active=NAV.path, **_task_context(request, task_id))


@post("/console/labeling/{task_id:str}/exclude", opt=console("operator"), include_in_schema=False, status_code=200)
async def labeling_exclude(request: Request, task_id: FromPath[str]) -> Template:
    """Toggle one labeler's exclusion from training data (the form names the key id)."""
    form = await request.form()
    key_id = str(form.get("key_id") or "")
    if not key_id:
        raise InvalidInput("name the labeler's key id")
    service = _service(request)
    task = await anyio.to_thread.run_sync(service.get, task_id)
    excluded = [k for k in task.excluded_labelers if k != key_id]
    if key_id not in task.excluded_labelers:
        excluded.append(key_id)
    await anyio.to_thread.run_sync(lambda: service.set_excluded(task_id, excluded, _principal(request), via="console"))
    context = await anyio.to_thread.run_sync(_task_context, request, task_id)
    return page(request, "_labeling_labelers.html", active=NAV.path, **context)


def _queue_context(request: Request, task_id: str, saved: str | None = None) -> dict:
    service = _service(request)
    item = service.next_item(task_id, _principal(request))
    return {
        "task": service.get(task_id),
        "item": item,
        "saved": saved,
        "progress": service.progress(task_id),
        "idempotency_key": f"console-{secrets.token_hex(12)}",
    }  # a fresh key per form: a double submit stores once


def _queue(request: Request, task_id: str, saved: str | None = None) -> Template:
    return page(request, "_labeling_item.html", active=NAV.path, **_queue_context(request, task_id, saved))


@get("/console/labeling/{task_id:str}/label", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def labeling_queue_page(request: Request, task_id: FromPath[str]) -> Template:
    return page(request, "labeling_queue.html", active=NAV.path, **_queue_context(request, task_id))


@post(
    "/console/labeling/{task_id:str}/items/{item_id:str}/rank",
    opt=console("operator"),
    include_in_schema=False,
    status_code=200,
)
async def labeling_rank(request: Request, task_id: FromPath[str], item_id: FromPath[str]) -> Template:
    """Stores the ranking through the labeling service (ranking feedback, idempotent), then shows the
    next item."""
    form = await request.form()
    candidates = ranked_candidates(form)
    comment = str(form.get("comment") or "").strip() or None
    service = _service(request)
    submission = await anyio.to_thread.run_sync(
        lambda: service.submit(
            task_id,
            item_id,
            _principal(request),
            form.get("idempotency_key") or None,
            candidates=candidates,
            comment=comment,
        )
    )
    return await anyio.to_thread.run_sync(_queue, request, task_id, submission.record.id)


ROUTES = [labeling_page, labeling_task_page, labeling_exclude, labeling_queue_page, labeling_rank]
