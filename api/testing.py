"""A pytest plugin for plugin authors (loaded through the ``pytest11`` entry point).

Override ``espalier_plugins`` in your ``conftest.py`` with the plugin objects (modules or
instances, or ``(name, plugin)`` pairs) to register; a module your distribution declares as an
``espalier`` entry point is named by its entry-point name, as in production. Then use the
``espalier`` fixture: a real app on a temporary SQLite file,
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

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from espalier import hookimpl


@dataclass
class EspalierHarness:
    """A running app: ``client`` (litestar TestClient), ``platform``, and one key per role."""

    client: Any
    platform: Any
    keys: dict[str, str] = field(default_factory=dict)

    def headers(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


def plugin_entry(plugin: Any) -> tuple[str, Any]:
    """(name, plugin) as production names it: a ``(name, plugin)`` pair as given; a module that an
    installed distribution declares as an ``espalier`` entry point by its entry-point name (what
    ``espalier plugins``, ``ESPALIER_DISABLE_PLUGINS`` and the logs call it); otherwise the module's
    last name or the object's class name."""
    if isinstance(plugin, tuple) and len(plugin) == 2 and isinstance(plugin[0], str):
        return plugin
    module = getattr(plugin, "__name__", None)
    if isinstance(module, str):
        from importlib.metadata import entry_points

        for entry in entry_points(group="espalier"):
            if entry.value == module or entry.module == module and not entry.attr:
                return entry.name, plugin
        return module.rsplit(".", 1)[-1], plugin
    return type(plugin).__name__, plugin


def build_harness(
    home: Path, plugins: list[Any], *, load_entry_points: bool = False, **settings: Any
) -> Iterator[EspalierHarness]:
    from litestar.testing import TestClient

    from espalier.api.app import create_app
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform

    config = Settings(home=home, **settings)
    extra = [plugin_entry(p) for p in plugins]
    platform = Platform(config, extra_plugins=extra, load_entry_points=load_entry_points)
    app = create_app(config, platform=platform)
    with TestClient(app) as client:
        harness = EspalierHarness(client=client, platform=platform)
        for role in ("admin", "operator", "user"):
            harness.keys[role] = platform.keys.create(name=f"test-{role}", role=role).key
        yield harness


def wait_job(platform: Any, job_id: str, timeout: float = 600) -> Any:
    """Poll a background job until it succeeds, fails or is cancelled; returns the job record.

    Fails the test (``AssertionError`` with the job's last message) after ``timeout`` seconds.
    """
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = platform.jobs.get(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout:.0f}s: {platform.jobs.get(job_id).message}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """``espalier serve`` as a real process on loopback, with its bootstrap admin key.

    ``RunningServer(home, env={...})`` starts it and waits until ``/readyz`` answers; ``stop()``
    ends it. Use it where a test needs a real HTTP server (SDK clients, streaming, kill -9).
    """

    def __init__(self, home: Path, env: dict[str, str] | None = None, timeout: float = 180):
        import subprocess
        import sys
        import time

        import httpx

        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        environment = {
            **os.environ,
            "ESPALIER_HOME": str(home),
            "ESPALIER_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "espalier.api.cli", "serve"],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
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
        # with no terminal, the first start writes its admin key to a private file, never the log
        key_file = home / "bootstrap-admin.key"
        self.admin_key = key_file.read_text().strip() if key_file.is_file() else None
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

        response = httpx.post(
            self.base + "/api/keys", json={"name": name or f"test-{role}", "role": role}, headers=self.headers()
        )
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


@pytest.fixture
def espalier_plugins() -> list[Any]:
    """Override to list the plugin objects your tests register (default: none)."""
    return []


@pytest.fixture
def espalier_settings() -> dict[str, Any]:
    """Override to pass extra settings (``Settings`` field names) to the test app."""
    return {}


@pytest.fixture
def espalier(
    tmp_path: Path, espalier_plugins: list[Any], espalier_settings: dict[str, Any]
) -> Iterator[EspalierHarness]:
    """A real Espalier app with your plugins registered; torn down after the test."""
    yield from build_harness(tmp_path / "espalier-home", espalier_plugins, **espalier_settings)


# A module-scoped app, for a test module whose tests can share one ----------------------------------
@pytest.fixture(scope="module")
def espalier_module_plugins() -> list[Any]:
    """Override (module scope) with the plugins the module-scoped app registers."""
    return []


@pytest.fixture(scope="module")
def espalier_module_settings() -> dict[str, Any]:
    """Override (module scope) to pass settings to the module-scoped app."""
    return {}


@pytest.fixture(scope="module")
def espalier_module(
    tmp_path_factory: pytest.TempPathFactory,
    espalier_module_plugins: list[Any],
    espalier_module_settings: dict[str, Any],
) -> Iterator[EspalierHarness]:
    """Like ``espalier``, built once for the whole test module (start-up costs seconds; a module
    of many small tests shares it). Tests then share its database: give each its own names."""
    home = tmp_path_factory.mktemp("espalier-module") / "espalier-home"
    yield from build_harness(home, espalier_module_plugins, **espalier_module_settings)


# A scripted chat model, for the control flow of a plugin that calls a model -------------------------
class ScriptedChatModel:
    """Answers with the next text of ``script`` (or ``script(messages)`` when it is a function), cut
    at the request's stop strings, as a real model would; ``prompts`` keeps every prompt it saw.
    For control flow only (a plugin's retries, parsing, routing): never the proof that a feature
    works with a real model."""

    context_window = 4096

    def __init__(self, script: Any = None):
        self.script: Any = list(script or [])
        self.prompts: list[list[Any]] = []

    def count_tokens(self, messages: Any) -> int:
        return sum(len(str(m.content).split()) for m in messages)

    def _next(self, messages: Any) -> str:
        self.prompts.append(list(messages))
        if callable(self.script):
            return str(self.script(messages))
        if not self.script:
            raise AssertionError("the scripted model ran out of answers (give it more in `script`)")
        return str(self.script.pop(0))

    def generate(self, messages: Any, params: Any, cancel: Any = None) -> list[Any]:
        from espalier.core.infrastructure.contracts import Generation

        out = []
        for _ in range(params.n):
            text = self._next(messages)
            for stop in params.stop:
                if stop in text:
                    text = text[: text.index(stop)]
            out.append(Generation(text, "stop", self.count_tokens(messages), len(text.split())))
        return out

    def stream(self, messages: Any, params: Any, cancel: Any = None) -> Iterator[Any]:
        from espalier.core.infrastructure.contracts import TokenDelta

        for index, generation in enumerate(self.generate(messages, params, cancel)):
            yield TokenDelta(index, generation.text, "stop", generation.completion_tokens)


class _ScriptedProvider:
    name = "scripted"

    def __init__(self, model: ScriptedChatModel):
        self.model = model

    def load(self, spec: Any, *, cache_dir: str) -> ScriptedChatModel:
        return self.model


class ScriptedModels:
    """A plugin registering one :class:`ScriptedChatModel` as the chat model ``name`` (provider
    ``scripted``); ``from espalier import ScriptedModels``. Register it beside your own::

        scripted = ScriptedModels(["Thought: I add.\nAction: calculator[2 + 3]", "Action: finish[5]"])

        @pytest.fixture
        def espalier_plugins():
            return [my_plugin, scripted]

    then ask for ``"model": "scripted"``; ``scripted.model.prompts`` holds what it was shown."""

    def __init__(self, script: Any = None, *, name: str = "scripted"):
        self.model = ScriptedChatModel(script)
        self.name = name

    @hookimpl
    def register_model_providers(self, register: Any) -> None:
        register(_ScriptedProvider(self.model))

    @hookimpl
    def register_models(self, register: Any) -> None:
        from espalier.core.infrastructure.contracts import ModelSpec

        register(ModelSpec(name=self.name, provider="scripted", source="memory"))
