"""The operator console under ``/console``: server-rendered Jinja2 pages with HTMX, and Chart.js
for charts, both vendored under ``static/`` (no CDN, works offline).

Adding a page: a module with a ``NavItem`` and its handlers (``opt=console(role)``), a
template extending ``base.html``, and one line in ``PAGES`` below.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from espalier.api.console import admin, agents, auth, documents, feedback, jobs, labeling, models, overview, playground
from espalier.api.console.render import SECURITY_HEADERS
from espalier.api.console.session import ConsoleSignInRequired
from espalier.api.guards import PUBLIC

HERE = Path(__file__).parent

# (navigation entry, its handlers), in the order the navigation shows them
PAGES = [
    (overview.NAV, overview.ROUTES),
    (playground.NAV, playground.ROUTES),
    (feedback.NAV, feedback.ROUTES),
    (models.NAV, models.ROUTES),
    (documents.NAV, documents.ROUTES),
    (jobs.NAV, jobs.ROUTES),
    (agents.NAV, agents.ROUTES),
    (labeling.NAV, labeling.ROUTES),
    (admin.PLUGINS_NAV, []),
    (admin.KEYS_NAV, []),
    (admin.AUDIT_NAV, admin.ROUTES),
]
NAV = [item for item, _ in PAGES]

TEMPLATE_CONFIG = TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine)

console_router = Router(
    path="/",
    route_handlers=[*auth.ROUTES, *(handler for _, handlers in PAGES for handler in handlers)],
    response_headers=SECURITY_HEADERS,
    exception_handlers={ConsoleSignInRequired: auth.sign_in_required},  # type: ignore[dict-item]
    include_in_schema=False,
)

static_files = create_static_files_router(
    path="/console/static",
    directories=[HERE / "static"],
    opt=PUBLIC,
    include_in_schema=False,
    name="console-static",
    send_as_attachment=False,
)

ROUTES = [console_router, static_files]
