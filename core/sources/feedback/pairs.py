"""Preference pairs: derived from feedback, imported from files, exported in TRL's format.

Derivation rules (the ones the design notes promise):

* a ranking gives every pair of differently ranked candidates (n choose 2); a candidate flagged
  unacceptable loses to every unflagged one whatever its rank; ties give no pair;
* thumbs give pairs where one prompt has both an up and a down (every up against every down);
* a corrected answer is preferred to the completion it corrects.

Only the latest submission of each kind per (key, item) counts: feedback is append-only, so a
changed mind is a new row that supersedes the old one here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from espalier.core.infrastructure.errors import InvalidInput

MAX_FIELD_CHARS = 100_000


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    origin: str  # ranking, thumbs, correction, import, ai (constitutional AI: kept apart, weighted)
    labeler: str | None = None  # for ai pairs: the principle
    request_id: str | None = None
    weight: float = 1.0  # in the reward model's loss; human and imported pairs weigh 1

    def trl(self) -> dict[str, str]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pair_sha256(prompt: str, chosen: str, rejected: str) -> str:
    return hashlib.sha256(json.dumps([prompt, chosen, rejected], ensure_ascii=False).encode()).hexdigest()


def prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """A request's messages as one prompt string, in the Human/Assistant layout of the HH data."""
    if len(messages) == 1 and messages[0].get("role") == "prompt":
        return str(messages[0].get("content", ""))
    names = {"user": "Human", "assistant": "Assistant", "system": "System", "tool": "Tool"}
    parts = [f"\n\n{names.get(m.get('role', ''), 'Human')}: {m.get('content', '')}" for m in messages]
    return "".join(parts) + "\n\nAssistant:"


def ranking_pairs(texts: Sequence[str], ranks: Sequence[int], unacceptable: Sequence[bool]) -> list[tuple[int, int]]:
    """(winner, loser) candidate indexes for one ranking."""
    pairs = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if unacceptable[i] != unacceptable[j]:
                pairs.append((j, i) if unacceptable[i] else (i, j))
            elif ranks[i] != ranks[j]:
                pairs.append((i, j) if ranks[i] < ranks[j] else (j, i))
    return pairs


def check_ranking(ranks: Sequence[int], n: int) -> None:
    """Ranks are standard competition ranks: a candidate's rank is 1 + how many rank strictly better.

    So ``[1, 1, 3]`` is a tie for first and ``[1, 2, 2]`` a tie for second, while ``[1, 1, 2]`` or
    ``[1, 3, 3]`` is not a consistent ranking.
    """
    if len(ranks) != n:
        raise InvalidInput(
            f"this request has {n} candidates; rank each exactly once (got {len(ranks)})", code="wrong_candidate_count"
        )
    for rank in ranks:
        if not 1 <= rank <= n:
            raise InvalidInput(f"ranks go from 1 to {n} (got {rank})", code="invalid_rank")
        better = sum(1 for other in ranks if other < rank)
        if rank != better + 1:
            raise InvalidInput(
                f"ranks {list(ranks)} are inconsistent: rank {rank} needs exactly {rank - 1} candidates ranked "
                f"better, but {better} are. Equal ranks mean a tie, and the next rank skips (1, 1, 3).",
                code="invalid_ranking",
            )


def thumbs_pairs(prompt: str, ups: Iterable[str], downs: Iterable[str], labeler: str | None = None) -> list[Pair]:
    downs = list(downs)
    return [Pair(prompt, up, down, "thumbs", labeler) for up in ups for down in downs if up != down]


def parse_pair_lines(
    lines: Iterable[str], *, limit: int = 200_000, skipped: list[str] | None = None
) -> Iterator[tuple[str, str, str]]:
    """Read TRL-format JSONL (``prompt``, ``chosen``, ``rejected``; other fields ignored).

    A bad line raises, unless ``skipped`` is a list: then the reason is appended and the line passed
    over (public data sets hold a few pairs with an empty answer).
    """
    count = 0
    for number, line in enumerate(lines, start=1):
        try:
            fields = _parse_line(number, line)
        except InvalidInput as exc:
            if skipped is None:
                raise
            skipped.append(exc.message)
            continue
        if fields is None:
            continue
        count += 1
        if count > limit:
            raise InvalidInput(f"at most {limit} pairs per import; split the file", code="too_many_pairs")
        yield fields


def _parse_line(number: int, line: str) -> tuple[str, str, str] | None:
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"line {number} is not JSON: {exc.msg}", code="invalid_pairs") from None
    if not isinstance(row, dict):
        raise InvalidInput(f"line {number} must be a JSON object", code="invalid_pairs")
    fields = []
    for name in ("prompt", "chosen", "rejected"):
        value = row.get(name)
        if not isinstance(value, str) or (name != "prompt" and not value.strip()):
            raise InvalidInput(
                f"line {number}: '{name}' must be a {'non-empty ' if name != 'prompt' else ''}string",
                code="invalid_pairs",
            )
        if len(value) > MAX_FIELD_CHARS:
            raise InvalidInput(
                f"line {number}: '{name}' is longer than {MAX_FIELD_CHARS} characters", code="invalid_pairs"
            )
        fields.append(value)
    if fields[1] == fields[2]:
        raise InvalidInput(f"line {number}: chosen and rejected are the same text", code="invalid_pairs")
    return fields[0], fields[1], fields[2]


def snapshot_sha256(pairs: Sequence[Pair]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(pair_sha256(pair.prompt, pair.chosen, pair.rejected).encode())
    return digest.hexdigest()
