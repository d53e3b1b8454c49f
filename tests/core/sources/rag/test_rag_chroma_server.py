"""Collections on a real Chroma server (``chroma run`` on loopback), and what happens when it goes down:
a 503 that names the server, and nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from espalier.api.testing import build_harness, free_port

pytestmark = pytest.mark.slow


class ChromaServer:
    def __init__(self, path: Path, port: int):
        chroma = Path(sys.executable).parent / "chroma"
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/api/v2/heartbeat", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("chroma run did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)


def test_collections_on_a_chroma_server_and_503_when_it_is_down(tmp_path, model_cache_dir):
    port = free_port()
    server = ChromaServer(tmp_path / "chroma-server", port)
    try:
        harness = build_harness(tmp_path / "home", [], model_cache_dir=model_cache_dir, chroma_url=server.url)
        app = next(harness)
        user = app.headers("user")
        assert app.client.post("/api/collections", json={"name": "remote"}, headers=user).status_code == 201
        first = app.client.post(
            "/api/collections/remote/documents",
            headers=user,
            json={"filename": "a.txt", "text": "Lake Baikal is the deepest lake on Earth."},
        )
        assert first.status_code == 201, first.text
        found = app.client.post(
            "/api/collections/remote/search", json={"query": "deepest lake", "mode": "vector"}, headers=user
        )
        assert found.json()["results"][0]["source"] == "a.txt"
        assert not (tmp_path / "home" / "chroma").exists()  # the vectors went to the server

        server.stop()
        down = app.client.post(
            "/api/collections/remote/search", json={"query": "deepest lake", "mode": "vector"}, headers=user
        )
        assert down.status_code == 503
        assert server.url in down.json()["detail"] and "ESPALIER_CHROMA_URL" in down.json()["detail"]
        refused = app.client.post(
            "/api/collections/remote/documents",
            headers=user,
            json={"filename": "b.txt", "text": "Mount Everest is the highest mountain."},
        )
        assert refused.status_code == 503
        removal = app.client.delete(f"/api/collections/remote/documents/{first.json()['id']}", headers=user)
        assert removal.status_code == 503
        documents = app.client.get("/api/collections/remote/documents", headers=user).json()["documents"]
        assert [d["source"] for d in documents] == ["a.txt"]  # nothing half-written, nothing half-deleted

        server = ChromaServer(tmp_path / "chroma-server", port)  # back: the store reconnects
        found = app.client.post(
            "/api/collections/remote/search", json={"query": "highest mountain", "mode": "vector"}, headers=user
        )
        assert found.status_code == 200 and [r["source"] for r in found.json()["results"]] == ["a.txt"]
        next(harness, None)
    finally:
        server.stop()
