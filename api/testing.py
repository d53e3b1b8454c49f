"""A pytest plugin for plugin authors (loaded through the ``pytest11`` entry point).

Override ``espalier_plugins`` in your ``conftest.py`` with the plugin objects (modules or
instances) to register, then use the ``espalier`` fixture: a real app on a temporary SQLite file,
with a real HTTP client and keys for each role.

Example::

    import pytest
    import my_plugin

    @pytest.fixture
    def espalier_plugins():
        return [my_plugin]

    def test_my_route(espalier):
        response = espalier.client.get("/api/hello", headers=espalier.headers("user"))
        assert response.status_code == 200
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class EspalierHarness:
    """A running app: ``client`` (litestar TestClient), ``platform``, and one key per role."""

    client: Any
    platform: Any
    keys: dict[str, str] = field(default_factory=dict)

    def headers(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


def build_harness(home: Path, plugins: list[Any], *, load_entry_points: bool = False, **settings: Any) -> Iterator[EspalierHarness]:
    from litestar.testing import TestClient

    from espalier.api.app import create_app
    from espalier.core.platform import Platform
    from espalier.core.settings import Settings

    config = Settings(home=home, **settings)
    extra = [(getattr(p, "__name__", type(p).__name__).rsplit(".", 1)[-1], p) for p in plugins]
    platform = Platform(config, extra_plugins=extra, load_entry_points=load_entry_points)
    app = create_app(config, platform=platform)
    with TestClient(app) as client:
        harness = EspalierHarness(client=client, platform=platform)
        for role in ("admin", "operator", "user"):
            harness.keys[role] = platform.keys.create(name=f"test-{role}", role=role).key
        yield harness


@pytest.fixture
def espalier_plugins() -> list[Any]:
    """Override to list the plugin objects your tests register (default: none)."""
    return []


@pytest.fixture
def espalier_settings() -> dict[str, Any]:
    """Override to pass extra settings (``Settings`` field names) to the test app."""
    return {}


@pytest.fixture
def espalier(tmp_path: Path, espalier_plugins: list[Any], espalier_settings: dict[str, Any]) -> Iterator[EspalierHarness]:
    """A real Espalier app with your plugins registered; torn down after the test."""
    yield from build_harness(tmp_path / "espalier-home", espalier_plugins, **espalier_settings)
