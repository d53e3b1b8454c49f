"""Feedback and data: browse and filter feedback, read one request with its candidates and the
feedback on each, flag a text as toxic or as a prompt injection for the guardrail trainers,
pair counts and the pairs export."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

import anyio
import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery, Parameter
from litestar.response import Template

from espalier.api.console.render import NavItem, page, read_form
from espalier.api.console.session import console
from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.interface.feedback_browse import KINDS, FeedbackFilter, browse, labelers_and_models, request_view
from espalier.core.sources.feedback import export_lines

NAV = NavItem("Feedback", "/console/feedback")
PAGE_SIZE = 50


class FlagForm(msgspec.Struct, forbid_unknown_fields=True):
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
    category: Literal["toxicity", "injection"]
    label: Annotated[int, msgspec.Meta(ge=0, le=1)] = 1
    completion_id: Annotated[str, msgspec.Meta(max_length=80)] = ""


def _day(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"'{name}' must be a date such as 2026-11-27 (got {value!r})") from None


@get("/console/feedback", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def feedback_page(
    request: Request,
    kind: FromQuery[str | None] = None,
    labeler: FromQuery[str | None] = None,
    model: FromQuery[str | None] = None,
    request_id: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
    offset: Annotated[int, Parameter(ge=0)] = 0,
) -> Template:
    platform = request.app.state.platform
    filters = FeedbackFilter(
        kind=kind or None,
        labeler=labeler or None,
        model=model or None,
        request_id=request_id or None,
        since=_day(since, "from"),
        until=_day(until, "to"),
    )
    rows, total = browse(platform.engine, filters, limit=PAGE_SIZE, offset=offset)
    labelers, models = labelers_and_models(platform.engine)
    human = platform.pairs.derived()
    origins: dict[str, int] = {}
    for pair in human:
        origins[pair.origin] = origins.get(pair.origin, 0) + 1
    query = {
        "kind": kind or "",
        "labeler": labeler or "",
        "model": model or "",
        "request_id": request_id or "",
        "since": since or "",
        "until": until or "",
    }
    return page(
        request,
        "feedback.html",
        active=NAV.path,
        rows=rows,
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
        kinds=KINDS,
        labelers=labelers,
        models=models,
        query=query,
        pairs={"human": len(human), "by_origin": origins, "imported": platform.pairs.imported_count()},
        flag_counts=platform.guardrail_flags.counts(),
        flags=platform.guardrail_flags.list(limit=20),
    )


@get(
    "/console/feedback/requests/{request_id:str}", opt=console("operator"), include_in_schema=False, sync_to_thread=True
)
def request_page(request: Request, request_id: FromPath[str]) -> Template:
    view = request_view(request.app.state.platform.engine, request_id)
    view["chat_request"] = view.pop("request")  # ``request`` is litestar's own in a template
    return page(request, "feedback_request.html", active=NAV.path, request_id=request_id, **view)


@post("/console/feedback/flags", opt=console("operator"), include_in_schema=False, status_code=200)
async def flag_text(request: Request) -> Template:
    """Flags a prompt (no ``completion_id``: the request's last message) or one candidate."""
    form = await read_form(request, FlagForm)
    platform = request.app.state.platform
    principal = request.scope["principal"]  # type: ignore[typeddict-item]
    flag = await anyio.to_thread.run_sync(
        lambda: platform.guardrail_flags.flag(
            principal,
            category=form.category,
            label=form.label,
            request_id=form.request_id,
            completion_id=form.completion_id or None,
            via="console",
        )
    )
    return page(
        request,
        "_flag.html",
        flag=flag,
        request_id=form.request_id,
        completion_id=form.completion_id,
        category=form.category,
    )


@get("/console/feedback/pairs.jsonl", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def export_pairs(request: Request, include_imported: FromQuery[bool] = False) -> Response[str]:
    """The same file as ``GET /api/pairs/export``, for a signed-in browser (no API key in it)."""
    platform = request.app.state.platform
    principal = request.scope["principal"]  # type: ignore[typeddict-item]
    pairs = platform.pairs.export(principal, include_imported=include_imported, via="console")
    return Response(
        "".join(export_lines(pairs)),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="pairs.jsonl"'},
    )


ROUTES = [feedback_page, request_page, flag_text, export_pairs]
