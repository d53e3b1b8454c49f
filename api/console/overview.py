"""Overview: traffic, latency, tokens, guardrail decisions and feedback per hour as charts (all
aggregated in the database, see ``core/interface/usage.py``), models loaded, jobs by status."""

from __future__ import annotations

from dataclasses import asdict

from litestar import Request, get
from litestar.params import FromQuery
from litestar.response import Template

from espalier.api.console.render import NavItem, page
from espalier.api.console.session import console

NAV = NavItem("Overview", "/console")


@get("/console", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def overview(request: Request, hours: FromQuery[int] = 24) -> Template:
    platform = request.app.state.platform
    hourly = platform.usage.hourly(hours)
    chart = {
        "labels": [bucket.hour.strftime("%d %H:00") for bucket in hourly],
        "requests": [bucket.requests for bucket in hourly],
        "failed": [bucket.failed for bucket in hourly],
        "prompt_tokens": [bucket.prompt_tokens for bucket in hourly],
        "completion_tokens": [bucket.completion_tokens for bucket in hourly],
        "p50": [bucket.latency_p50_ms for bucket in hourly],
        "p95": [bucket.latency_p95_ms for bucket in hourly],
        "guardrail_blocks": [bucket.guardrail_blocks for bucket in hourly],
        "guardrail_flags": [bucket.guardrail_flags for bucket in hourly],
        "feedback": [bucket.feedback for bucket in hourly],
    }
    models = platform.models.list()
    return page(
        request,
        "overview.html",
        active=NAV.path,
        chart=chart,
        hours=len(hourly),
        totals={
            "requests": sum(chart["requests"]),
            "tokens": sum(chart["prompt_tokens"]) + sum(chart["completion_tokens"]),
            "blocks": sum(chart["guardrail_blocks"]),
            "feedback": sum(chart["feedback"]),
        },
        models=[asdict(m) for m in models],
        loaded=[m.name for m in models if m.loaded],
        jobs=platform.usage.jobs_by_status(),
    )


ROUTES = [overview]
