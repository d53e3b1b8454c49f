"""What every console page shares: the navigation, the page context, form parsing, and the
security headers. A page is one template plus one small controller (see ``routes.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.datastructures import ResponseHeader
from litestar.response import Template

from espalier.api.console.session import CSRF_FIELD
from espalier.core.infrastructure.errors import InvalidInput

T = TypeVar("T")


@dataclass(frozen=True)
class NavItem:
    title: str
    path: str
    min_role: str = "operator"


# Scripts only from the console's own files: model-written text can never run as code.
SECURITY_HEADERS = [
    ResponseHeader(
        name="Content-Security-Policy",
        value=(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
        ),
    ),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
    ResponseHeader(name="Cache-Control", value="no-store"),
]


def page(request: Request, template: str, *, active: str = "", **context: Any) -> Template:
    principal = request.scope["principal"]  # type: ignore[typeddict-item]
    nav = [item for item in request.app.state.console_nav if principal.has_role(item.min_role)]
    return Template(
        template_name=template,
        context={
            "principal": principal,
            "csrf_token": request.scope.get("console_csrf", ""),  # type: ignore[typeddict-item]
            "nav": nav,
            "active": active,
            **context,
        },
    )


async def read_form(request: Request, schema: type[T]) -> T:
    """A url-encoded form as a msgspec Struct (strings coerced to numbers; unknown fields refused)."""
    form = await request.form()
    data = {key: value for key, value in form.items() if key != CSRF_FIELD}
    try:
        return msgspec.convert(data, schema, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid form: {exc}") from None


def ranked_candidates(form: Any) -> list[dict[str, Any]]:
    """A ranking form's candidates: ``rank_<completion id>`` fields and ``unacceptable`` checkboxes,
    as the ranking feedback takes them (the playground's and the labeling queue's forms)."""
    ranks: dict[str, int] = {}
    for key, value in form.items():
        if key.startswith("rank_"):
            try:
                ranks[key.removeprefix("rank_")] = int(value)
            except ValueError:
                raise InvalidInput(f"the rank of candidate {key.removeprefix('rank_')} must be a number") from None
    flagged = set(form.getall("unacceptable")) if "unacceptable" in form else set()
    return [{"completion_id": cid, "rank": rank, "unacceptable": cid in flagged} for cid, rank in ranks.items()]
