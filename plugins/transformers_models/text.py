"""Turning one candidate's token ids into text as they arrive, with stop strings.

Both ``generate`` and ``stream`` go through :class:`CandidateText`, so the streamed pieces of a
candidate always add up to the text ``generate`` returns for it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

from espalier.core.infrastructure.contracts import TokenLogprob

MAX_TOP_LOGPROBS = 20


class IncrementalDecoder:
    """Decodes a growing list of token ids into new text only.

    A byte-level tokenizer may need several tokens for one character; until the bytes complete,
    the decoded tail is U+FFFD and nothing is released. Only a short window of recent tokens is
    decoded each time, so the cost per token does not grow with the length of the output.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end (an incomplete character, decoded as is)."""
        if self.read_offset == len(self.ids):
            return ""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :]


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character a byte-level BPE vocabulary writes for
    each byte (``Ġ`` for a space...), to that byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _is_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer writes bytes in GPT-2's byte-level alphabet (its decoder says so)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


class TokenPieces:
    """Token ids to the text and bytes of each token on its own, as logprobs report them. A
    byte-level vocabulary (GPT-2's, SmolLM2's) gives each token's exact bytes, also of one that
    holds part of a character; others give the token's decoded text in UTF-8."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._pieces: dict[int, tuple[str, tuple[int, ...]]] = {}
        self._lock = threading.Lock()
        self.byte_level = _is_byte_level(tokenizer)

    def piece(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        with self._lock:
            known = self._pieces.get(token_id)
        if known is not None:
            return known
        raw = self.tokenizer.convert_ids_to_tokens(token_id)
        decoder = _byte_level_decoder()
        if self.byte_level and isinstance(raw, str) and raw and all(char in decoder for char in raw):
            data = bytes(decoder[char] for char in raw)
            text = data.decode("utf-8", errors="replace")
        elif isinstance(raw, str) and len(raw) == 6 and raw.startswith("<0x") and raw.endswith(">"):
            data = bytes([int(raw[3:5], 16)])  # SentencePiece's byte fallback: one raw byte
            text = data.decode("utf-8", errors="replace")
        else:
            text = self.tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            data = text.encode("utf-8")
        entry = (text, tuple(data))
        with self._lock:
            self._pieces[token_id] = entry
        return entry

    def logprob(self, token_id: int, value: float, top: Sequence[tuple[int, float]] = ()) -> TokenLogprob:
        alternatives = tuple(self.logprob(other, other_value) for other, other_value in top)
        text, data = self.piece(token_id)
        return TokenLogprob(text, value, data, alternatives)


class StopMatcher:
    """Releases text up to the first stop string, holding back any tail that could begin one.

    A stop string may arrive split over several tokens; text that could be its start is kept
    until the next piece shows whether it is. Released text therefore never contains a stop
    string or the start of one that later completes.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [stop for stop in stops if stop]
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buffer = self.pending + text
        found = [index for index in (buffer.find(stop) for stop in self.stops) if index >= 0]
        if found:
            self.stopped = True
            self.pending = ""
            return buffer[: min(found)]
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), hold, -1):
                if buffer.endswith(stop[:size]):
                    hold = size
                    break
        cut = len(buffer) - hold
        self.pending = buffer[cut:]
        return buffer[:cut]

    def flush(self) -> str:
        held, self.pending = self.pending, ""
        return "" if self.stopped else held


class CandidateText:
    """The text of one candidate so far: decoded, cut at stop strings, counted."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], pieces: TokenPieces | None = None):
        self.decoder = IncrementalDecoder(tokenizer)
        self.matcher = StopMatcher(stops)
        self.parts: list[str] = []
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.pieces = pieces  # set when the request asked for logprobs
        self.logprobs: list[TokenLogprob] = []  # scored tokens not yet handed out with a piece

    def score(self, token_id: int, value: float, top: Sequence[tuple[int, float]]) -> None:
        """Record a generated token's log-probability (and its alternatives) for the next piece."""
        if self.pieces is not None and not self.done:
            self.logprobs.append(self.pieces.logprob(token_id, value, top))

    def take_logprobs(self) -> list[TokenLogprob] | None:
        if self.pieces is None:
            return None
        taken, self.logprobs = self.logprobs, []
        return taken

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def push(self, token_id: int) -> str:
        """Add a generated token (not end-of-sequence); returns the text it releases."""
        self.completion_tokens += 1
        released = self.matcher.push(self.decoder.push(token_id))
        if self.matcher.stopped:
            self.finish_reason = "stop"
        self.parts.append(released)
        return released

    def finish(self, reason: str) -> str:
        """End the candidate (unless a stop string already did); returns the held-back text."""
        if self.finish_reason is not None:
            return ""
        tail = self.matcher.push(self.decoder.flush()) + self.matcher.flush()
        self.finish_reason = "stop" if self.matcher.stopped else reason
        self.parts.append(tail)
        return tail
