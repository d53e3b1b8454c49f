"""Shared fixtures: real SQLite files, the real PostgreSQL service, the real app."""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
POSTGRES_ADMIN_URL = os.environ.get("ESPALIER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# The fast tier (`make test-fast`): tests that need no model, no app and no server ---------------
#: Fixtures that start the real platform, an app, a server, or sandboxed processes.
PLATFORM_FIXTURES = frozenset(
    {"espalier", "rag_app", "server", "client", "user_key", "app", "two_platforms", "model_cache_dir", "small_model"}
    | {"sandbox", "shared_sandbox", "sandbox_cache", "backend"}
)
#: Calls that do the same, in a test's body or in a helper of its module it calls.
PLATFORM_CALLS = ("build_harness(", "Platform(", "RunningServer(", "subprocess", "CliRunner", "Sandbox(")


def _source(obj: object) -> str:
    try:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""


def _heavy_helpers(module: object) -> frozenset[str]:
    """Module-level functions of a test module that start the platform, a server or a process."""
    cached = getattr(module, "__espalier_heavy__", None)
    if cached is None:
        cached = frozenset(
            name
            for name, value in vars(module).items()
            if inspect.isfunction(value)
            and not name.startswith("test_")
            and value.__module__ == getattr(module, "__name__", None)
            and any(call in _source(value) for call in PLATFORM_CALLS)
        )
        module.__espalier_heavy__ = cached  # type: ignore[attr-defined]
    return cached


def _needs_the_platform(item: pytest.Item) -> bool:
    if PLATFORM_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    function = getattr(item, "function", None)
    source = _source(function) if function is not None else ""
    if not source or any(call in source for call in PLATFORM_CALLS):
        return True
    module = getattr(item, "module", None)
    return module is not None and any(f"{name}(" in source for name in _heavy_helpers(module))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark what starts the platform ``platform``; ``make test-fast`` leaves those out (and the
    ``slow``, ``browser`` and ``postgres`` ones), ``make test`` runs everything."""
    for item in items:
        if _needs_the_platform(item):
            item.add_marker(pytest.mark.platform)
        callspec = getattr(item, "callspec", None)
        if "postgres_url" in getattr(item, "fixturenames", ()) and (callspec is None or "postgres" in callspec.id):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Tests never read the developer's own settings or data folder.
    for name in list(os.environ):
        if name.startswith("ESPALIER_") and name != "ESPALIER_TEST_POSTGRES":
            monkeypatch.delenv(name)
    monkeypatch.setenv("ESPALIER_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="session")
def postgres_server() -> str:
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # the service is part of this machine and of CI: its absence is a failure
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    finally:
        engine.dispose()
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"espalier_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_server.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each persistence test runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'espalier.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def settings(tmp_path: Path):
    from espalier.core.infrastructure.settings import Settings

    return Settings(home=tmp_path / "home")


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """Converted model weights shared by every test app (the first conversion takes ~15 s)."""
    path = REPO / ".pytest_cache" / "espalier-models"
    path.mkdir(parents=True, exist_ok=True)
    return path


# The official SDK against one real `espalier serve` (test_openai_api.py, test_tool_calls.py) ------
@pytest.fixture(scope="session")
def server(tmp_path_factory, model_cache_dir):
    """A real server process on loopback with the shipped models. A module that needs other
    settings defines its own ``server``."""
    from espalier.api.testing import RunningServer

    running = RunningServer(tmp_path_factory.mktemp("sdk-home"), env={"ESPALIER_MODEL_CACHE_DIR": str(model_cache_dir)})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def user_key(server, request):
    """A fresh user key per test module, so ownership checks see only that module's requests."""
    return server.create_key("user", f"sdk-{request.module.__name__.rpartition('.')[2]}")


@pytest.fixture(scope="module")
def client(server, user_key):
    import openai

    return openai.OpenAI(base_url=server.base + "/v1", api_key=user_key, max_retries=0, timeout=600)
