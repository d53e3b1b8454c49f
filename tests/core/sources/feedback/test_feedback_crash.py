"""kill -9 during a burst of feedback POSTs: nothing acknowledged is lost, retries never duplicate."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from espalier.api.testing import RunningServer

BURST = 100
KILL_AFTER_ACKS = 30


@pytest.mark.slow
def test_kill_9_mid_burst_loses_no_acknowledged_feedback_and_retries_never_duplicate(tmp_path, model_cache_dir):
    home = tmp_path / "home"
    env = {
        "ESPALIER_MODEL_CACHE_DIR": str(model_cache_dir),
        "ESPALIER_RATE_LIMIT_PER_MINUTE": "100000",
        "ESPALIER_FEEDBACK_RATE_LIMIT_PER_MINUTE": "100000",
        "ESPALIER_REWARD_RETRAIN_AFTER_PAIRS": "0",
    }
    server = RunningServer(home, env=env)
    try:
        user = server.create_key("user", "burst-user")
        headers = {"Authorization": f"Bearer {user}"}
        chat = httpx.post(
            server.base + "/v1/chat/completions",
            headers=headers,
            timeout=120,
            json={
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": "Say hi"}],
                "max_tokens": 4,
                "temperature": 0,
            },
        )
        chat.raise_for_status()
        completion_id = chat.json()["espalier"]["completion_ids"][0]

        acknowledged: dict[str, str] = {}
        lock = threading.Lock()
        killed = threading.Event()

        def send(number: int) -> None:
            key = f"burst-{number}"
            try:
                response = httpx.post(
                    server.base + "/api/feedback",
                    timeout=30,
                    headers={**headers, "Idempotency-Key": key},
                    json={"completion_id": completion_id, "score": (number % 10) / 10},
                )
            except httpx.HTTPError:
                return
            if response.status_code in (200, 201):
                with lock:
                    acknowledged[key] = response.json()["id"]
                    if len(acknowledged) >= KILL_AFTER_ACKS and not killed.is_set():
                        killed.set()
                        os.killpg(server.process.pid, signal.SIGKILL)  # a real crash, mid-burst

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(BURST)))
        assert killed.is_set()
        server.process.wait(timeout=30)
        assert server.process.returncode == -signal.SIGKILL
        assert KILL_AFTER_ACKS <= len(acknowledged) < BURST, "the kill should land mid-burst"
    finally:
        server.stop()

    restarted = RunningServer(home, env=env)
    try:
        # every acknowledged submission is there, and its retry returns the same record
        for key, feedback_id in acknowledged.items():
            retry = httpx.post(
                restarted.base + "/api/feedback",
                headers={**headers, "Idempotency-Key": key},
                timeout=30,
                json={"completion_id": completion_id, "score": (int(key.split("-")[1]) % 10) / 10},
            )
            assert retry.status_code == 200 and retry.json()["id"] == feedback_id
        # the client retries everything it never heard back about; then retries everything once more
        for _round in range(2):
            for number in range(BURST):
                retry = httpx.post(
                    restarted.base + "/api/feedback",
                    headers={**headers, "Idempotency-Key": f"burst-{number}"},
                    json={"completion_id": completion_id, "score": (number % 10) / 10},
                    timeout=30,
                )
                assert retry.status_code in (200, 201), retry.text
        stored = httpx.get(restarted.base + "/api/feedback?limit=1000", headers=headers, timeout=30).json()["feedback"]
        per_key = Counter(row["idempotency_key"] for row in stored)
        assert len(stored) == BURST and set(per_key.values()) == {1}
        assert {acknowledged[k] for k in acknowledged} <= {row["id"] for row in stored}
    finally:
        restarted.stop()
