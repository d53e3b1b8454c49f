"""The app factory. ``create_app()`` builds settings (unless given), the platform, the routes of
every domain and of every plugin, and the cross-cutting pieces: auth guard, rate limits, request
size limit, error mapping, request logging, OpenAPI and Prometheus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from litestar import Litestar
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig

from espalier import __version__
from espalier.api.admin.routes import ROUTES as ADMIN_ROUTES
from espalier.api.agents.routes import ROUTES as AGENT_ROUTES
from espalier.api.chains.routes import ROUTES as CHAIN_ROUTES
from espalier.api.console.routes import NAV as CONSOLE_NAV
from espalier.api.console.routes import ROUTES as CONSOLE_ROUTES
from espalier.api.console.routes import TEMPLATE_CONFIG
from espalier.api.conversations.routes import ROUTES as CONVERSATION_ROUTES
from espalier.api.documents.routes import ROUTES as DOCUMENT_ROUTES
from espalier.api.errors import EXCEPTION_HANDLERS
from espalier.api.feedback.routes import ROUTES as FEEDBACK_ROUTES
from espalier.api.guardrails.routes import ROUTES as GUARDRAIL_ROUTES
from espalier.api.guards import UNLIMITED_PATHS, _is_public, auth_guard, check_route_access, provide_principal
from espalier.api.jobs.routes import ROUTES as JOB_ROUTES
from espalier.api.labeling.routes import ROUTES as LABELING_ROUTES
from espalier.api.mcp import ROUTES as MCP_ROUTES
from espalier.api.mcp import McpEndpoint
from espalier.api.middleware import RequestLogMiddleware
from espalier.api.models.routes import ROUTES as MODEL_ROUTES
from espalier.api.openai.routes import ROUTES as OPENAI_ROUTES
from espalier.api.openapi import install as install_openapi
from espalier.api.policy.routes import ROUTES as POLICY_ROUTES
from espalier.api.reward.routes import ROUTES as REWARD_ROUTES
from espalier.api.system.routes import ROUTES as SYSTEM_ROUTES
from espalier.api.tools.routes import ROUTES as TOOL_ROUTES
from espalier.core.infrastructure.logs import configure_logging
from espalier.core.infrastructure.settings import Settings, load_settings
from espalier.core.platform import Platform

CORE_ROUTES: list[Any] = [
    *SYSTEM_ROUTES,
    *ADMIN_ROUTES,
    *JOB_ROUTES,
    *OPENAI_ROUTES,
    *MODEL_ROUTES,
    *CONVERSATION_ROUTES,
    *DOCUMENT_ROUTES,
    *FEEDBACK_ROUTES,
    *REWARD_ROUTES,
    *LABELING_ROUTES,
    *POLICY_ROUTES,
    *CONSOLE_ROUTES,
    *TOOL_ROUTES,
    *AGENT_ROUTES,
    *CHAIN_ROUTES,
    *GUARDRAIL_ROUTES,
    *MCP_ROUTES,
]


def create_app(settings: Settings | None = None, *, platform: Platform | None = None, **platform_args: Any) -> Litestar:
    settings = settings or (platform.settings if platform else load_settings())
    configure_logging(settings.log_level, json_lines=settings.log_json)
    platform = platform or Platform(settings, **platform_args)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(platform.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(platform.close)

    mcp = McpEndpoint(platform)
    plugin_routes = [item for item, _plugin in platform.routes]
    prometheus = PrometheusConfig(
        app_name="espalier", prefix="espalier", group_path=True, exclude=sorted(UNLIMITED_PATHS)
    )

    app = Litestar(
        route_handlers=[*CORE_ROUTES, *plugin_routes],
        guards=[auth_guard],
        dependencies={"principal": Provide(provide_principal, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[
            DefineMiddleware(RequestLogMiddleware),
            prometheus.middleware,
        ],
        request_max_body_size=settings.max_body_bytes,
        template_config=TEMPLATE_CONFIG,
        openapi_config=OpenAPIConfig(
            title="Espalier",
            version=__version__,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", description="Espalier API key")
                }
            ),
            security=[{"bearer": []}],
        ),
        lifespan=[lifespan, mcp.lifespan],
    )
    app.state.platform = platform
    app.state.mcp = mcp
    app.state.settings = settings
    app.state.console_nav = CONSOLE_NAV
    owners: dict[str, str] = {}
    for item, plugin in platform.routes:
        for handler in getattr(item, "route_handlers", None) or [item]:  # a handler, or a router/controller's
            function = getattr(handler, "fn", None) or getattr(handler, "handler_name", None)
            owners[getattr(function, "__name__", str(function))] = plugin
    check_route_access(app, owners)
    install_openapi(app, UNLIMITED_PATHS, _is_public)
    return app


def app_factory() -> Litestar:
    """For ``uvicorn --factory espalier.api.app:app_factory``."""
    return create_app()


__all__ = ["create_app", "app_factory"]
