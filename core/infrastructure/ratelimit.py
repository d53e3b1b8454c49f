"""Rate limits that hold however many processes share them.

Counters live in Redis when ``ESPALIER_REDIS_URL`` is set, else in the process, through the
`limits` library: a moving window per key, acquired in one Lua script in Redis (one lock in
memory), so N concurrent requests against a limit of L let exactly L through, not "read, then
write" twice the limit across workers.

While Redis is away the behaviour is a setting (``ESPALIER_RATE_LIMIT_WHEN_STORE_DOWN``):

* ``local`` (the default): each process counts alone (up to workers x limit pass), a warning is
  logged when the store is lost and when it is back, the ``espalier_rate_limit_store_up`` gauge
  reads 0, and ``/readyz`` answers 503 so a load balancer can prefer a worker that still sees it;
* ``refuse``: limited requests answer 503 with ``Retry-After``.

The shared store is tried again every few seconds and used as soon as it answers; requests in
between do not wait on a dead connection.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from espalier.core.infrastructure.errors import RateLimited, Unavailable

log = logging.getLogger("espalier.ratelimit")

RETRY_SHARED_STORE_S = 5.0
STORE_TIMEOUT_S = 0.5  # a Redis that does not answer in this long counts as away

try:  # the gauge appears on /metrics beside litestar's request metrics
    from prometheus_client import Gauge

    STORE_UP = Gauge("espalier_rate_limit_store_up", "1 while the shared rate-limit store answers (1 when none is set)")
except ImportError:  # pragma: no cover - prometheus_client ships with litestar's prometheus extra
    STORE_UP = None
except ValueError:  # registered already (a second import under another name in tests)
    STORE_UP = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int  # seconds until the window frees a request (0 when allowed)
    shared: bool  # counted in the shared store (False: this process alone)


class RateLimiter:
    """``hit(key, per_minute)`` counts one request; ``peek`` only looks."""

    def __init__(self, redis_url: str | None = None, *, when_store_down: str = "local"):
        if when_store_down not in ("local", "refuse"):
            raise ValueError(f"when_store_down must be 'local' or 'refuse' (got {when_store_down!r})")
        self.when_store_down = when_store_down
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        if redis_url:
            storage: Storage = RedisStorage(
                redis_url,
                wrap_exceptions=True,
                socket_timeout=STORE_TIMEOUT_S,
                socket_connect_timeout=STORE_TIMEOUT_S,
                key_prefix="espalier-limits",
            )
            self._shared = MovingWindowRateLimiter(storage)
        self._down_since: float | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()
        self._set_gauge(True)

    @property
    def shared(self) -> bool:
        return self._shared is not None

    def store_ok(self) -> bool:
        """True when there is no shared store or it answers now (what ``/readyz`` reports)."""
        if self._shared is None:
            return True
        try:
            ok = bool(self._shared.storage.check())
        except Exception:
            ok = False
        self._record(ok)
        return ok

    def hit(self, key: str, per_minute: int, *, cost: int = 1) -> Decision:
        item = RateLimitItemPerMinute(per_minute)
        limiter = self._limiter()
        if limiter is not None:
            try:
                allowed = limiter.hit(item, key, cost=cost)
                retry = 0 if allowed else self._retry_after(limiter, item, key)
                self._record(True)
                return Decision(allowed, retry, True)
            except StorageError as exc:
                self._record(False, exc)
        if self._shared is not None and self.when_store_down == "refuse":
            raise Unavailable(
                "the shared rate-limit store is unreachable; retry shortly",
                code="rate_limit_store_unavailable",
                retry_after=int(RETRY_SHARED_STORE_S),
            )
        allowed = self._local.hit(item, key, cost=cost)
        return Decision(allowed, 0 if allowed else self._retry_after(self._local, item, key), False)

    def peek(self, key: str, per_minute: int) -> Decision:
        """Whether one more request would pass, counting nothing."""
        item = RateLimitItemPerMinute(per_minute)
        limiter = self._limiter()
        if limiter is not None:
            try:
                allowed = limiter.test(item, key)
                return Decision(allowed, 0 if allowed else self._retry_after(limiter, item, key), True)
            except StorageError as exc:
                self._record(False, exc)
        allowed = self._local.test(item, key)
        return Decision(allowed, 0 if allowed else self._retry_after(self._local, item, key), False)

    def clear(self, key: str, per_minute: int) -> None:
        item = RateLimitItemPerMinute(per_minute)
        for limiter in (self._shared, self._local):
            if limiter is not None:
                try:
                    limiter.clear(item, key)
                except StorageError as exc:
                    self._record(False, exc)

    # The shared store's health ----------------------------------------------------------------
    def _limiter(self) -> MovingWindowRateLimiter | None:
        """The shared limiter unless it is away and not yet due for another try."""
        if self._shared is None:
            return None
        if self._down_since is not None and time.monotonic() < self._next_try:
            return None
        return self._shared

    def _record(self, ok: bool, exc: Exception | None = None) -> None:
        with self._lock:
            if ok and self._down_since is not None:
                log.warning(
                    "the shared rate-limit store is back after %.0f s: limits are shared again",
                    time.monotonic() - self._down_since,
                )
                self._down_since = None
                self._set_gauge(True)
            elif not ok:
                self._next_try = time.monotonic() + RETRY_SHARED_STORE_S
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning(
                        "the shared rate-limit store is unreachable (%s): %s until it answers",
                        type(exc.__cause__ or exc).__name__ if exc else "no answer",
                        "each process counts alone" if self.when_store_down == "local" else "limited routes answer 503",
                    )
                    self._set_gauge(False)

    @staticmethod
    def _set_gauge(up: bool) -> None:
        if STORE_UP is not None:
            STORE_UP.set(1 if up else 0)

    @staticmethod
    def _retry_after(limiter: MovingWindowRateLimiter, item: RateLimitItemPerMinute, key: str) -> int:
        try:
            reset = limiter.get_window_stats(item, key).reset_time
        except StorageError:
            return 60
        return max(1, math.ceil(reset - time.time()))


__all__ = ["Decision", "RateLimited", "RateLimiter"]
