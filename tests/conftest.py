"""Shared fixtures: real SQLite files, the real PostgreSQL service, the real app."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
POSTGRES_ADMIN_URL = os.environ.get("ESPALIER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


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
    from espalier.core.settings import Settings

    return Settings(home=tmp_path / "home")


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """Converted model weights shared by every test app (the first conversion takes ~15 s)."""
    path = REPO / ".pytest_cache" / "espalier-models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """`espalier serve` as a real process on loopback, with its bootstrap admin key."""

    def __init__(self, home: Path, env: dict[str, str] | None = None, timeout: float = 180):
        import re
        import subprocess
        import sys
        import time

        import httpx

        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "ESPALIER_HOME": str(home), "ESPALIER_PORT": str(self.port),
                       "PYTHONUNBUFFERED": "1", **(env or {})}  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "espalier.api.cli", "serve"], env=environment,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        lines = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Serving on" in line:
                break
        self.output = "".join(lines)
        match = re.search(r"esp_[0-9a-f]{12}_[A-Za-z0-9-]+", self.output)
        self.admin_key = match.group(0) if match else None
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"server did not become ready:\n{self.output}")
        # keep draining the log so the server never blocks on a full pipe
        import threading

        threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True).start()

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    def create_key(self, role: str, name: str | None = None) -> str:
        import httpx

        response = httpx.post(self.base + "/api/keys", json={"name": name or f"test-{role}", "role": role},
                              headers=self.headers())  # fmt: skip
        response.raise_for_status()
        return response.json()["key"]

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except Exception:
                os.killpg(self.process.pid, signal.SIGKILL)
