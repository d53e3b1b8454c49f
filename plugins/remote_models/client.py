"""The remote provider: chat and text completions over HTTP, streamed or not, with timeouts,
retries on connection errors, and errors that say which server failed and how."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import httpx

from espalier.core.infrastructure.contracts import ChatMessage, Generation, GenerationParams, ModelSpec, TokenDelta
from espalier.core.infrastructure.errors import InvalidInput, Unavailable

CONNECT_RETRIES = 3
DEFAULT_CONTEXT_WINDOW = 4096


class RemoteProvider:
    name = "remote"

    def validate(self, spec: ModelSpec) -> None:
        url = urlparse(spec.source)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise InvalidInput(
                f"remote models need an http(s) base URL as source, e.g. http://host:8000/v1 (got {spec.source!r})"
            )
        key_env = spec.options.get("api_key_env")
        if key_env and key_env not in os.environ:
            raise InvalidInput(f"environment variable {key_env} (api_key_env) is not set in the server's environment")
        if "api_key" in spec.options:
            raise InvalidInput(
                "do not store keys in the registry: put it in an environment variable and pass api_key_env"
            )

    def load(self, spec: ModelSpec, *, cache_dir: str) -> RemoteChatModel:
        self.validate(spec)
        return RemoteChatModel(spec)


class RemoteChatModel:
    def __init__(self, spec: ModelSpec):
        options = dict(spec.options)
        self.base_url = spec.source.rstrip("/")
        self.remote_model = options.get("model", spec.name)
        self.context_window = int(spec.context_window or options.get("context_window", DEFAULT_CONTEXT_WINDOW))
        key_env = options.get("api_key_env")
        headers = {"Authorization": f"Bearer {os.environ[key_env]}"} if key_env else {}
        timeout = float(options.get("timeout", 120))
        self.client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=float(options.get("connect_timeout", 5))),
        )

    # Tokens: the remote tokenizer is unknown here, so this is an estimate (about 4 characters a
    # token); the remote server enforces its real context window and its error is passed on.
    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content) // 4 + 4 for m in messages)

    def count_text_tokens(self, prompt: str) -> int:
        return len(prompt) // 4 + 1

    # Chat ------------------------------------------------------------------------------------
    def _body(self, params: GenerationParams, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.remote_model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": params.n,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        body.update(extra)
        return body

    def generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> list[Generation]:
        data = self._post("/chat/completions", self._body(params, messages=_wire(messages)))
        return _generations(data, lambda choice: (choice.get("message") or {}).get("content") or "")

    def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> Iterator[TokenDelta]:
        body = self._body(params, messages=_wire(messages), stream=True)
        return self._stream(
            "/chat/completions", body, cancel, lambda choice: (choice.get("delta") or {}).get("content")
        )

    # Plain prompts ------------------------------------------------------------------------------
    def generate_text(
        self, prompt: str, params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> list[Generation]:
        data = self._post("/completions", self._body(params, prompt=prompt))
        return _generations(data, lambda choice: choice.get("text") or "")

    def stream_text(
        self, prompt: str, params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> Iterator[TokenDelta]:
        return self._stream(
            "/completions", self._body(params, prompt=prompt, stream=True), cancel, lambda choice: choice.get("text")
        )

    # HTTP ---------------------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._send(lambda: self.client.post(path, json=body))
        return response.json()

    def _send(self, call: Callable[[], httpx.Response]) -> httpx.Response:
        for attempt in range(CONNECT_RETRIES):
            try:
                response = call()
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt == CONNECT_RETRIES - 1:
                    raise Unavailable(f"cannot reach the remote model server at {self.base_url}: {exc}") from exc
                time.sleep(0.5 * 2**attempt)
            except httpx.TimeoutException as exc:
                raise Unavailable(f"the remote model server at {self.base_url} timed out: {exc}") from exc
        self._raise_for_status(response)
        return response

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            response.read()
            payload = response.json()
            message = (payload.get("error") or {}).get("message") or payload.get("detail") or response.text
        except Exception:
            message = response.text[:500]
        where = f"remote model server {self.base_url}"
        if response.status_code in (401, 403):
            raise Unavailable(f"{where} refused Espalier's key ({response.status_code}): {message}")
        if response.status_code < 500 and response.status_code != 429:
            raise InvalidInput(f"{where} rejected the request: {message}", code="remote_rejected")
        raise Unavailable(f"{where} failed ({response.status_code}): {message}")

    def _stream(
        self,
        path: str,
        body: dict[str, Any],
        cancel: Callable[[], bool] | None,
        text_of: Callable[[dict[str, Any]], str | None],
    ) -> Iterator[TokenDelta]:
        request = self.client.build_request("POST", path, json=body)
        response = self._send(lambda: self.client.send(request, stream=True))
        return self._deltas(response, cancel, text_of)

    @staticmethod
    def _deltas(
        response: httpx.Response, cancel: Callable[[], bool] | None, text_of: Callable[[dict[str, Any]], str | None]
    ) -> Iterator[TokenDelta]:
        try:
            for line in response.iter_lines():
                if cancel is not None and cancel():
                    return
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                event = json.loads(payload)
                if "error" in event:
                    raise Unavailable(f"remote model server failed mid-stream: {event['error'].get('message')}")
                for choice in event.get("choices") or []:
                    text = text_of(choice) or ""
                    reason = choice.get("finish_reason")
                    if text or reason:
                        yield TokenDelta(int(choice.get("index", 0)), text, reason)
        finally:
            response.close()


def _wire(messages: Sequence[ChatMessage]) -> list[Mapping[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _generations(data: dict[str, Any], text_of: Callable[[dict[str, Any]], str]) -> list[Generation]:
    usage = data.get("usage") or {}
    choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
    if not choices:
        raise Unavailable("the remote model server answered without choices")
    per_choice = max(1, int(usage.get("completion_tokens", 0)) // len(choices))
    return [
        Generation(
            text_of(choice), choice.get("finish_reason") or "stop", int(usage.get("prompt_tokens", 0)), per_choice
        )
        for choice in choices
    ]
