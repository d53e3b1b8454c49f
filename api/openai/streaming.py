"""Server-sent events from a blocking token iterator.

A worker thread drains the model's iterator into an asyncio queue. When the client goes away,
litestar cancels the response's generator; its ``finally`` sets the cancel flag the model polls
between tokens, so generation stops within a token and the thread stores what was delivered.
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

from espalier.core.chat import StreamSession
from espalier.core.contracts import TokenDelta
from espalier.core.errors import EspalierError

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


async def stream_events(
    session: StreamSession,
    cancel: threading.Event,
    first: list[dict[str, Any]],
    chunk: Callable[[TokenDelta], dict[str, Any]],
    usage_chunk: Callable[[], dict[str, Any]] | None,
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def produce() -> None:
        try:
            for delta in session.deltas():
                loop.call_soon_threadsafe(queue.put_nowait, delta)
                if cancel.is_set():
                    break
        except BaseException as exc:  # reported to the client as an error event
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            try:
                session.finish()
            except Exception:
                log.exception("could not store streamed request %s", session.request_id)
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    worker = threading.Thread(target=produce, name=f"espalier-stream-{session.request_id[-6:]}", daemon=True)
    worker.start()
    try:
        while True:
            item = await queue.get()
            if first:
                # The opening chunks (role, request ids) go out with the first token, not while
                # the prompt is being read: on a small machine, a client busy with them during
                # prefill delays the very token it waits for.
                yield b"".join(sse(event) for event in first)
                first = []
            if item is _END:
                break
            if isinstance(item, BaseException):
                message = item.message if isinstance(item, EspalierError) else "generation failed"
                if not isinstance(item, EspalierError):
                    log.error("stream %s failed: %r", session.request_id, item)
                yield sse({"error": {"message": message, "type": "server_error", "param": None,
                                     "code": getattr(item, "code", "internal_error")}})  # fmt: skip
                continue
            yield sse(chunk(item))
        if usage_chunk is not None:
            yield sse(usage_chunk())
        yield b"data: [DONE]\n\n"
    finally:
        cancel.set()
        if worker.is_alive():
            # the thread notices the flag within one token; don't hold the event loop meanwhile
            await anyio.to_thread.run_sync(worker.join, 30)
