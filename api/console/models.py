"""Models: the registry, each model's versions and which one serves."""

from __future__ import annotations

from dataclasses import asdict

from litestar import Request, get
from litestar.response import Template

from .render import NavItem, page
from .session import console

NAV = NavItem("Models", "/console/models")


@get("/console/models", opt=console("operator"), include_in_schema=False, sync_to_thread=True)
def models_page(request: Request) -> Template:
    platform = request.app.state.platform
    return page(request, "models.html", active=NAV.path, models=[asdict(m) for m in platform.models.list()],
                providers=platform.model_providers.names())  # fmt: skip


ROUTES = [models_page]
