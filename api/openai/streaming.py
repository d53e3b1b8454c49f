"""Server-sent events from a blocking token iterator.

A worker thread drains the model's iterator into an asyncio queue. The response starts once the
first piece is there: a failure before any token is an ordinary HTTP error, and neither the
server nor the client is busy with headers while the prompt is being read (on a small machine
that work slows the prompt pass itself). When the client goes away, litestar cancels the
response's generator; its ``finally`` sets the cancel flag the model polls between tokens, so
generation stops within a token and the thread stores what was delivered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from litestar.response import Stream

from espalier.core.infrastructure.contracts import TokenDelta
from espalier.core.infrastructure.errors import EspalierError
from espalier.core.interface.chat.service import StreamSession

log = logging.getLogger("espalier.api.streaming")
_END = object()


class EventStream(Stream):
    """A ``Stream`` whose own media type wins: litestar otherwise applies the handler's (JSON)
    default, and server-sent events would go out as ``application/json``."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["media_type"] = self.media_type
        return super().to_asgi_response(*args, **kwargs)


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class _Producer:
    """Drains ``session.deltas()`` in a worker thread into an asyncio queue; stores the request
    (``session.finish()``) when the deltas end, whatever ended them."""

    def __init__(self, session: StreamSession, cancel: threading.Event):
        self.session, self.cancel = session, cancel
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.worker = threading.Thread(
            target=self._produce, name=f"espalier-stream-{session.request_id[-6:]}", daemon=True
        )
        self.worker.start()

    def _put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _produce(self) -> None:
        try:
            for delta in self.session.deltas():
                self._put(delta)
                if self.cancel.is_set():
                    break
        except BaseException as exc:  # reported to the client: an HTTP error before the first token, else an event
            self._put(exc)
        finally:
            try:
                self.session.finish()
            except Exception:
                log.exception("could not store streamed request %s", self.session.request_id)
            self._put(_END)

    async def close(self) -> None:
        self.cancel.set()
        if self.worker.is_alive():
            # the thread notices the flag within one token; don't hold the event loop meanwhile
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.worker.join, 30)


Events = dict[str, Any] | list[dict[str, Any]]


def _sse_all(events: Events) -> bytes:
    return b"".join(sse(e) for e in events) if isinstance(events, list) else sse(events)


async def open_events(
    session: StreamSession,
    cancel: threading.Event,
    first: list[dict[str, Any]],
    chunk: Callable[[TokenDelta], Events],
    usage_chunk: Callable[[], Events] | None,
    *,
    done_marker: bool = True,
    error_events: Callable[[str, str], Events] | None = None,
) -> AsyncIterator[bytes]:
    """Start generating and wait for the first piece; then the events, opening chunks first.
    ``chunk`` and ``usage_chunk`` (the closing events) give one event or a list; ``done_marker``
    ends the stream with ``data: [DONE]`` (chat completions do; the Responses API does not);
    ``error_events(message, code)`` gives the events of a failure after the first piece (default:
    chat completions' ``{"error": ...}`` chunk).

    :raises EspalierError: generation failed before its first token (the caller answers with
        the error's status instead of a stream).
    """
    producer = _Producer(session, cancel)
    try:
        item = await producer.queue.get()
    except BaseException:  # the client went away while the prompt was being read
        await producer.close()
        raise
    if isinstance(item, BaseException):
        await producer.close()
        if isinstance(item, EspalierError):
            raise item
        log.error("stream %s failed: %r", session.request_id, item)
        raise EspalierError("generation failed") from item
    return _events(producer, item, first, chunk, usage_chunk, done_marker, error_events)


def _error_chunk(message: str, code: str) -> Events:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


async def _events(
    producer: _Producer,
    item: Any,
    first: list[dict[str, Any]],
    chunk: Callable[[TokenDelta], Events],
    usage_chunk: Callable[[], Events] | None,
    done_marker: bool,
    error_events: Callable[[str, str], Events] | None,
) -> AsyncIterator[bytes]:
    try:
        opening = b"".join(sse(event) for event in first)
        while True:
            if item is _END:
                break
            if isinstance(item, BaseException):
                message = item.message if isinstance(item, EspalierError) else "generation failed"
                if not isinstance(item, EspalierError):
                    log.error("stream %s failed: %r", producer.session.request_id, item)
                code = getattr(item, "code", "internal_error")
                yield opening + _sse_all((error_events or _error_chunk)(message, code))
            else:
                yield opening + _sse_all(chunk(item))
            opening = b""
            item = await producer.queue.get()
        if opening:
            yield opening
        if usage_chunk is not None:
            yield _sse_all(usage_chunk())
        if done_marker:
            yield b"data: [DONE]\n\n"
    finally:
        await producer.close()
