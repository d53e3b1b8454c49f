"""Per-key rate limits; with Redis configured, the limit is shared between workers."""

import uuid

import pytest
import redis

from espalier.api.testing import build_harness


@pytest.fixture
def espalier_settings():
    return {"rate_limit_per_minute": 5}


def test_the_request_after_the_limit_gets_429(espalier):
    headers = espalier.headers("user")
    statuses = [espalier.client.get("/api/me", headers=headers).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    limited = espalier.client.get("/api/me", headers=headers)
    assert limited.json()["code"] == "rate_limited"
    # another key has its own budget
    assert espalier.client.get("/api/me", headers=espalier.headers("operator")).status_code == 200
    # liveness is never rate limited
    assert all(espalier.client.get("/healthz").status_code == 200 for _ in range(10))


def test_redis_store_shares_the_limit_between_two_workers(tmp_path):
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is part of this machine and CI but is not reachable: {exc}")
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    settings = {"rate_limit_per_minute": 4, "redis_url": "redis://127.0.0.1:6379/0", "database_url": db_url}
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
