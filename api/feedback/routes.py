"""Feedback on what was shown, and the preference pairs it becomes.

Every POST needs an ``Idempotency-Key`` header: a retry with the same key and body returns the
stored feedback (``200``, ``Idempotent-Replayed: true``) instead of a duplicate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from espalier.api.guards import CurrentPrincipal, accepts, access
from espalier.api.schema_types import Int64
from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.sources.feedback import describe, export_lines
from espalier.core.sources.feedback.agreement import agreement

IDEMPOTENCY_HEADER = "Idempotency-Key"


class CompletionFeedbackIn(msgspec.Struct, forbid_unknown_fields=True):
    completion_id: Annotated[str, msgspec.Meta(min_length=1, max_length=60)]
    thumbs: Literal["up", "down"] | None = None
    score: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    comment: Annotated[str, msgspec.Meta(max_length=10_000)] | None = None
    correction: Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)] | None = None


class RankedCandidate(msgspec.Struct, forbid_unknown_fields=True):
    completion_id: Annotated[str, msgspec.Meta(min_length=1, max_length=60)]
    rank: Annotated[int, msgspec.Meta(ge=1, le=16)]
    unacceptable: bool = False


class CandidateRanking(msgspec.Struct, forbid_unknown_fields=True):
    # A ranking of one request's candidates; labeling's ItemRankingIn is this as it is (the item
    # names the request), RankingIn adds the request_id.
    candidates: Annotated[list[RankedCandidate], msgspec.Meta(min_length=1, max_length=16)]
    comment: Annotated[str, msgspec.Meta(max_length=10_000)] | None = None


class RankingIn(CandidateRanking, kw_only=True):
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=60)]


class FeedbackOut(msgspec.Struct):
    id: str
    kind: str
    request_id: str
    completion_id: str | None
    payload: dict[str, Any]
    key_id: str
    model: str
    model_version: str | None
    sampling: dict[str, Any]
    sources: list[Any] | None
    tool_traces: list[Any] | None
    idempotency_key: str
    created_at: datetime


def feedback_out(record: Any) -> FeedbackOut:
    return FeedbackOut(**{name: getattr(record, name) for name in FeedbackOut.__struct_fields__})


def _respond(submission: Any) -> Response[FeedbackOut]:
    record = submission.record
    return Response(
        feedback_out(record),
        status_code=200 if submission.replayed else 201,
        headers={"Idempotent-Replayed": "true" if submission.replayed else "false"},
    )


# Async handlers that hop to a thread: litestar wraps a sync_to_thread POST twice when a sync GET
# shares its path (the POST then returns a coroutine and answers 500).
@post(
    "/api/feedback",
    opt=access("user"),
    tags=["feedback"],
    status_code=201,
    summary="Feedback on one completion: thumbs, score (0-1), comment, corrected answer",
)
async def submit_feedback(
    request: Request, data: JSONBody[CompletionFeedbackIn], principal: CurrentPrincipal
) -> Response[FeedbackOut]:
    submission = await anyio.to_thread.run_sync(
        lambda: request.app.state.platform.feedback.submit_completion(
            principal,
            request.headers.get(IDEMPOTENCY_HEADER),
            completion_id=data.completion_id,
            thumbs=data.thumbs,
            score=data.score,
            comment=data.comment,
            correction=data.correction,
        )
    )
    return _respond(submission)


@post(
    "/api/feedback/rankings",
    opt=access("user"),
    tags=["feedback"],
    status_code=201,
    summary="Rank the candidates of one request (n > 1): ranks 1..n, ties allowed, unacceptable flags",
)
async def submit_ranking(
    request: Request, data: JSONBody[RankingIn], principal: CurrentPrincipal
) -> Response[FeedbackOut]:
    submission = await anyio.to_thread.run_sync(
        lambda: request.app.state.platform.feedback.submit_ranking(
            principal,
            request.headers.get(IDEMPOTENCY_HEADER),
            request_id=data.request_id,
            candidates=[msgspec.structs.asdict(c) for c in data.candidates],
            comment=data.comment,
        )
    )
    return _respond(submission)


@get(
    "/api/feedback",
    opt=access("user"),
    tags=["feedback"],
    sync_to_thread=True,
    summary="The calling key's feedback, newest first (operators: ?all=true for everyone's)",
)
def list_feedback(
    request: Request,
    principal: CurrentPrincipal,
    request_id: FromQuery[str | None] = None,
    all: FromQuery[bool] = False,  # noqa: A002 - the public query parameter's name
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    rows = request.app.state.platform.feedback.list(principal, everyone=all, request_id=request_id, limit=limit)
    return {"feedback": [feedback_out(row) for row in rows]}


@get(
    "/api/feedback/{feedback_id:str}",
    opt=access("user"),
    tags=["feedback"],
    sync_to_thread=True,
    summary="One feedback record with its provenance",
)
def get_feedback(request: Request, feedback_id: FromPath[str], principal: CurrentPrincipal) -> FeedbackOut:
    return feedback_out(request.app.state.platform.feedback.get(feedback_id, principal))


@get(
    "/api/feedback/agreement",
    opt=access("operator"),
    tags=["feedback"],
    sync_to_thread=True,
    summary="Agreement between labelers (Kendall's tau-b) per item and per labeler; outliers flagged",
)
def labeler_agreement(request: Request, outlier_gap: Annotated[float, Parameter(ge=0, le=2)] = 0.3) -> dict[str, Any]:
    return agreement(request.app.state.platform.engine, outlier_gap=outlier_gap)


def _labelers(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


@get(
    "/api/pairs",
    opt=access("operator"),
    tags=["pairs"],
    sync_to_thread=True,
    summary="Preference pairs derived from feedback (and imported): counts and a page of pairs",
)
def list_pairs(
    request: Request,
    include_imported: FromQuery[bool] = False,
    exclude_labelers: FromQuery[str | None] = None,
    origin: FromQuery[str | None] = None,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    offset: Annotated[int, Parameter(ge=0)] = 0,
    include_ai: FromQuery[bool] = False,
) -> dict[str, Any]:
    platform = request.app.state.platform
    weight = platform.settings.ai_pair_weight
    pairs = platform.pairs.all(
        include_imported=include_imported,
        exclude_labelers=_labelers(exclude_labelers),
        ai_weight=weight if include_ai else 0.0,
    )
    if include_ai and weight == 0:
        pairs += platform.pairs.ai(weight=0.0)
    if origin:
        pairs = [pair for pair in pairs if pair.origin == origin]
    # AI labels are counted apart from human ones whether or not they are listed.
    ai = {"pairs": platform.pairs.ai_count(), "weight": weight, "listed": include_ai}
    return {**describe(pairs), "ai": ai, "items": [pair.as_dict() for pair in pairs[offset : offset + limit]]}


class AILabelsIn(msgspec.Struct, forbid_unknown_fields=True):
    """A constitutional-AI labelling run (job ``cai:labels``); no prompts: the shipped set."""

    prompts: (
        Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]], msgspec.Meta(max_length=500)]
        | None
    ) = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] | None = None
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=130)] | None = None
    principles: list[str] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=256)] = 64
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.7
    seed: Int64 = 0


@post(
    "/api/pairs/ai",
    opt=access("operator"),
    tags=["pairs"],
    sync_to_thread=True,
    status_code=202,
    summary="Label pairs with constitutional AI (job cai:labels): critique and revise the model's answers",
)
def label_ai_pairs(request: Request, data: JSONBody[AILabelsIn], principal: CurrentPrincipal) -> dict[str, Any]:
    from espalier.core.sources.learning.constitution import JOB_KIND, check_params, constitution_path, load_constitution

    platform = request.app.state.platform
    params = check_params({k: v for k, v in msgspec.structs.asdict(data).items() if v is not None})
    load_constitution(constitution_path(platform.settings)).pick(params.get("principles"))  # fails here, not in the job
    platform.models.resolve(params.get("model") or platform.settings.default_model)
    job = platform.jobs.submit(JOB_KIND, params, created_by=principal.key_id)
    platform.audit.record(principal, "pairs.ai_label", job.id, prompts=len(params["prompts"]))
    return {"job_id": job.id, "prompts": len(params["prompts"])}


@get(
    "/api/pairs/export",
    opt=access("operator"),
    tags=["pairs"],
    sync_to_thread=True,
    media_type="application/x-ndjson",
    summary="Every pair as JSONL in TRL's prompt/chosen/rejected format",
)
def export_pairs(
    request: Request,
    principal: CurrentPrincipal,
    include_imported: FromQuery[bool] = False,
    exclude_labelers: FromQuery[str | None] = None,
) -> Response[str]:
    pairs = request.app.state.platform.pairs.export(
        principal, include_imported=include_imported, exclude_labelers=_labelers(exclude_labelers)
    )
    return Response(
        "".join(export_lines(pairs)),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="pairs.jsonl"'},
    )


@post(
    "/api/pairs/import",
    opt={
        **access("operator"),
        **accepts("application/x-ndjson", "application/jsonl", "application/json", "text/plain", untyped=True),
    },
    tags=["pairs"],
    status_code=200,
    summary="Import a JSONL file of prompt/chosen/rejected pairs (the request body); all or nothing",
)
async def import_pairs(
    request: Request,
    principal: CurrentPrincipal,
    source: FromQuery[str] = "upload",
    skip_invalid: FromQuery[bool] = False,
) -> dict[str, Any]:
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the body must be UTF-8 JSONL: one {prompt, chosen, rejected} object a line") from None
    platform = request.app.state.platform
    result = await anyio.to_thread.run_sync(
        lambda: platform.pairs.import_lines(
            text.splitlines(), source=source, principal=principal, skip_invalid=skip_invalid
        )
    )
    return result


ROUTES = [
    label_ai_pairs,
    submit_feedback,
    submit_ranking,
    list_feedback,
    labeler_agreement,
    get_feedback,
    list_pairs,
    export_pairs,
    import_pairs,
]
