"""Turning one candidate's token ids into text as they arrive, with stop strings.

Both ``generate`` and ``stream`` go through :class:`CandidateText`, so the streamed pieces of a
candidate always add up to the text ``generate`` returns for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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

    def __init__(self, tokenizer: Any, stops: Sequence[str]):
        self.decoder = IncrementalDecoder(tokenizer)
        self.matcher = StopMatcher(stops)
        self.parts: list[str] = []
        self.completion_tokens = 0
        self.finish_reason: str | None = None

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
