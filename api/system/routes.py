"""Liveness, readiness, plugin introspection, metrics."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.plugins.prometheus import PrometheusController

from espalier import __version__
from espalier.api.guards import PUBLIC, CurrentPrincipal, access


@get("/healthz", opt=PUBLIC, tags=["system"], summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    opt=PUBLIC,
    tags=["system"],
    summary="Readiness: database reachable, plugins loaded, the shared rate-limit store (when set) answering",
    sync_to_thread=True,
)
def readyz(request: Request) -> Response[dict[str, Any]]:
    platform = request.app.state.platform
    startup_failures = [f.name for f in platform.plugins.failures if f.hook == "startup"]
    checks = {
        "database": platform.database_ok(),
        "plugins": platform.started and not startup_failures,
        "rate_limit_store": platform.limiter.store_ok(),
    }
    ready = all(checks.values())
    body: dict[str, Any] = {"ready": ready, "checks": checks}
    if startup_failures:
        body["plugins_failed_startup"] = startup_failures
    return Response(body, status_code=200 if ready else 503)


@get("/api/plugins", opt=access("operator"), tags=["system"], summary="Loaded plugins with versions and hooks")
async def list_plugins(request: Request) -> dict[str, Any]:
    host = request.app.state.platform.plugins
    return {
        "espalier_version": __version__,
        "plugins": host.describe(),
        "failures": [vars(failure) for failure in host.failures],
    }


@get("/api/me", opt=access("user"), tags=["system"], summary="The calling key")
async def whoami(principal: CurrentPrincipal) -> dict[str, str]:
    return {"key_id": principal.key_id, "name": principal.name, "role": principal.role}


class MetricsController(PrometheusController):
    """Prometheus exposition; scrape it with an operator key (``bearer_token`` in the scrape config)."""

    path = "/metrics"
    opt = access("operator")
    include_in_schema = False


ROUTES = [healthz, readyz, list_plugins, whoami, MetricsController]
