"""Rate limits: per key after the key is checked, failed authentications per address, atomic across
processes sharing a real Redis, and a deliberate behaviour while that Redis is away."""

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from espalier.api.testing import RunningServer, build_harness, free_port
from espalier.core.infrastructure.errors import Unauthenticated, Unavailable
from espalier.core.interface import keys as keys_module

SHARED_REDIS = "redis://127.0.0.1:6379/0"


def shared_redis() -> redis.Redis:
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is part of this machine and CI but is not reachable: {exc}")
    return client


@pytest.fixture
def espalier_settings():
    return {"rate_limit_per_minute": 5, "auth_failures_per_minute": 5}


class CountingHasher:
    """The real argon2 hasher, counting verifications (and how many ran at once)."""

    def __init__(self, real, delay: float = 0.0):
        self.real, self.delay = real, delay
        self.calls = self.running = self.most_at_once = 0
        self.lock = threading.Lock()

    def verify(self, secret_hash, secret):
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.delay)
            return self.real.verify(secret_hash, secret)
        finally:
            with self.lock:
                self.running -= 1

    def hash(self, secret):
        return self.real.hash(secret)


def test_the_request_after_the_limit_gets_429(espalier):
    headers = espalier.headers("user")
    statuses = [espalier.client.get("/api/me", headers=headers).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    limited = espalier.client.get("/api/me", headers=headers)
    assert limited.json()["code"] == "rate_limited" and 1 <= int(limited.headers["retry-after"]) <= 60
    # another key has its own budget
    assert espalier.client.get("/api/me", headers=espalier.headers("operator")).status_code == 200
    # liveness and readiness are never rate limited
    assert all(espalier.client.get("/healthz").status_code == 200 for _ in range(10))
    assert all(espalier.client.get("/readyz").status_code == 200 for _ in range(10))


def test_forged_secrets_spend_the_address_budget_never_the_keys(espalier, monkeypatch):
    hasher = CountingHasher(keys_module._hasher)
    monkeypatch.setattr(keys_module, "_hasher", hasher)
    real = espalier.keys["user"]
    key_id = real.split("_")[1]
    assert espalier.client.get("/api/me", headers={"Authorization": f"Bearer {real}"}).status_code == 200
    assert hasher.calls == 1
    forged = [
        espalier.client.get("/api/me", headers={"Authorization": f"Bearer esp_{key_id}_forged{n}"}) for n in range(20)
    ]
    statuses = [r.status_code for r in forged]
    assert statuses == [401] * 5 + [429] * 15, statuses
    assert forged[-1].json()["code"] == "auth_failures_rate_limited"
    # Past the address's limit no forged secret reaches argon2.
    assert hasher.calls == 6
    # The real key, verified a moment ago, still has its whole budget less the one request it made.
    real_headers = {"Authorization": f"Bearer {real}"}
    assert [espalier.client.get("/api/me", headers=real_headers).status_code for _ in range(5)] == [200] * 4 + [429]
    assert hasher.calls == 6
    # A key this address has not used lately would need argon2: it waits for the window to pass.
    other = espalier.client.get("/api/me", headers=espalier.headers("operator"))
    assert other.status_code == 429 and other.json()["code"] == "auth_failures_rate_limited"
    assert hasher.calls == 6


def test_verified_keys_are_cached_by_keyed_hash_and_forgotten_on_revoke(espalier, monkeypatch):
    hasher = CountingHasher(keys_module._hasher)
    monkeypatch.setattr(keys_module, "_hasher", hasher)
    service = espalier.platform.keys
    created = service.create(name="cached", role="user")
    for _ in range(3):
        assert service.authenticate(created.key).key_id == created.record.id
    assert hasher.calls == 1
    # Nothing in the cache is the key or its plain hash.
    assert all(len(digest) == 32 and created.key.encode() not in digest for digest in service._verified)
    # Expired entries verify again.
    monkeypatch.setattr(keys_module, "VERIFIED_TTL", -1.0)
    service._verified.clear()
    service.authenticate(created.key)
    service.authenticate(created.key)
    assert hasher.calls == 3
    monkeypatch.setattr(keys_module, "VERIFIED_TTL", 300.0)
    service.authenticate(created.key)
    service.revoke(created.record.id)
    with pytest.raises(Unauthenticated):
        service.authenticate(created.key)


def test_concurrent_verifications_are_bounded(espalier, monkeypatch):
    hasher = CountingHasher(keys_module._hasher, delay=0.3)
    monkeypatch.setattr(keys_module, "_hasher", hasher)
    service = espalier.platform.keys
    created = [service.create(name=f"k{n}", role="user").key for n in range(8)]
    with ThreadPoolExecutor(8) as pool:
        principals = list(pool.map(service.authenticate, created))
    assert len(principals) == 8 and hasher.calls == 8
    assert hasher.most_at_once == keys_module.MAX_CONCURRENT_VERIFICATIONS
    # One that cannot start in time answers 503 with Retry-After instead of queueing forever.
    monkeypatch.setattr(keys_module, "VERIFY_WAIT_S", 0.05)
    service._verified.clear()
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda key: _outcome(service, key), created))
    busy = [o for o in outcomes if isinstance(o, Unavailable)]
    assert busy and all(o.retry_after == 1 and o.code == "authentication_busy" for o in busy)


def _outcome(service, key):
    try:
        return service.authenticate(key)
    except Exception as exc:
        return exc


def test_redis_store_shares_the_limit_between_two_workers(tmp_path):
    shared_redis()
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    settings = {"rate_limit_per_minute": 4, "redis_url": SHARED_REDIS, "database_url": db_url}
    first = build_harness(tmp_path / "a", [], **settings)
    one = next(first)
    second = build_harness(tmp_path / "b", [], **settings)
    two = next(second)
    try:
        # a fresh key so earlier runs' counters in Redis cannot interfere
        key = one.platform.keys.create(name=f"shared-{uuid.uuid4().hex[:6]}", role="user").key
        headers = {"Authorization": f"Bearer {key}"}
        statuses = [(one if n % 2 else two).client.get("/api/me", headers=headers).status_code for n in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
    finally:
        for generator in (first, second):
            generator.close()


@pytest.mark.slow
def test_two_server_processes_let_exactly_the_limit_through_concurrently(tmp_path):
    """100 concurrent requests over two real `espalier serve` processes sharing Redis and a
    database: a limit of 20 lets 20 through, and the feedback limit holds the same way."""
    shared_redis()
    env = {
        "ESPALIER_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
        "ESPALIER_REDIS_URL": SHARED_REDIS,
        "ESPALIER_RATE_LIMIT_PER_MINUTE": "20",
        "ESPALIER_FEEDBACK_RATE_LIMIT_PER_MINUTE": "10",
        "ESPALIER_REWARD_RETRAIN_AFTER_PAIRS": "0",
    }
    first = RunningServer(tmp_path / "a", env=env)
    second = None
    try:
        second = RunningServer(tmp_path / "b", env=env)
        keys = [first.create_key("user", f"burst-{uuid.uuid4().hex[:6]}") for _ in range(2)]
        bases = [first.base, second.base]

        def call(n: int) -> int:
            headers = {"Authorization": f"Bearer {keys[0]}"}
            return httpx.get(bases[n % 2] + "/api/me", headers=headers, timeout=60).status_code

        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(call, range(100)))
        assert statuses.count(200) == 20 and statuses.count(429) == 80, statuses

        # Feedback: the limit is counted before the completion is looked up, so submissions about
        # completions that do not exist show which ones the limit let through (404) and which not.
        def feedback(n: int) -> int:
            headers = {"Authorization": f"Bearer {keys[1]}", "Idempotency-Key": f"burst-{n}"}
            body = {"completion_id": f"cmpl-missing-{n}", "score": 0.5}
            return httpx.post(bases[n % 2] + "/api/feedback", json=body, headers=headers, timeout=60).status_code

        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(feedback, range(60)))
        assert statuses.count(404) == 10 and statuses.count(429) == 50, statuses
    finally:
        first.stop()
        if second is not None:
            second.stop()


def start_redis(port: int) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is part of this machine and CI (Debian package redis-server)"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.1)
    process.kill()
    pytest.fail("the test's own redis-server did not start")


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_for(check, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_losing_redis_counts_locally_says_not_ready_and_recovers(tmp_path):
    """Two real server processes share a Redis the test starts, kills and starts again."""
    port = free_port()
    server = start_redis(port)
    env = {
        "ESPALIER_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
        "ESPALIER_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "ESPALIER_RATE_LIMIT_PER_MINUTE": "50",
    }
    first = RunningServer(tmp_path / "a", env=env)
    second = None
    try:
        second = RunningServer(tmp_path / "b", env=env)
        headers = {"Authorization": f"Bearer {first.create_key('user', 'during-outage')}"}
        workers = (first.base, second.base)
        for base in workers:
            assert httpx.get(base + "/api/me", headers=headers).status_code == 200
            assert httpx.get(base + "/readyz").json()["checks"]["rate_limit_store"] is True
        assert redis.Redis(port=port).keys("espalier-limits*")
        kill(server)
        # No 500: each process counts alone, and readiness says the shared store is away.
        for base in workers:
            assert [httpx.get(base + "/api/me", headers=headers).status_code for _ in range(5)] == [200] * 5
            ready = httpx.get(base + "/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["rate_limit_store"] is False
            assert httpx.get(base + "/healthz").status_code == 200
        # Back: limits are shared again, without a restart.
        server = start_redis(port)
        for base in workers:
            assert wait_for(lambda base=base: httpx.get(base + "/readyz").status_code == 200)
        redis.Redis(port=port).flushall()
        assert wait_for(
            lambda: (
                httpx.get(second.base + "/api/me", headers=headers).status_code == 200
                and bool(redis.Redis(port=port).keys("espalier-limits*"))
            )
        )
    finally:
        first.stop()
        if second is not None:
            second.stop()
        kill(server)


def test_with_refuse_a_lost_redis_answers_503_with_retry_after(tmp_path):
    port = free_port()
    server = start_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    harness = build_harness(tmp_path / "home", [], redis_url=url, rate_limit_when_store_down="refuse")
    espalier = next(harness)
    try:
        headers = espalier.headers("user")
        assert espalier.client.get("/api/me", headers=headers).status_code == 200
        kill(server)
        refused = espalier.client.get("/api/me", headers=headers)
        assert refused.status_code == 503 and refused.json()["code"] == "rate_limit_store_unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        openai_shape = espalier.client.get("/v1/models", headers=headers)
        assert openai_shape.status_code == 503 and "retry-after" in openai_shape.headers
        assert espalier.client.get("/readyz").status_code == 503
    finally:
        harness.close()
        kill(server)
