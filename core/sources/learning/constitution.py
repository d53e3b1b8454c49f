"""Constitutional AI: a written constitution of principles drives critique-and-revise on the model's
own answers, and each revision preferred to its original becomes an AI preference pair.

For every prompt the model answers; then, for one principle (in turn, so a set of prompts covers
them all), it is asked to critique its answer by the principle's critique request and to rewrite
it by the revision request. The pair (prompt, revision preferred to original) is stored in the
``ai_pairs`` table, apart from human feedback and imports, and enters reward training with its
own weight (``ESPALIER_AI_PAIR_WEIGHT``). A small model's revisions are weak; the pairs are only as
good as the model that wrote them, which is why they weigh less than human ones by default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from espalier.core.infrastructure.contracts import ChatMessage, ChatModel, GenerationParams
from espalier.core.infrastructure.errors import InvalidInput
from espalier.core.infrastructure.registry import NAME_PATTERN

if TYPE_CHECKING:
    from espalier.core.infrastructure.settings import Settings

JOB_KIND = "cai:labels"
DEFAULT_CONSTITUTION = Path(__file__).with_name("constitution_default.toml")
PARAMS = {"prompts", "limit", "model", "principles", "max_tokens", "temperature", "seed"}
MAX_PRINCIPLES = 64
MAX_REQUEST_CHARS = 2000


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    revision: str


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]
    path: str = ""

    def pick(self, names: Sequence[str] | None) -> list[Principle]:
        if not names:
            return list(self.principles)
        known = {p.name: p for p in self.principles}
        missing = [n for n in names if n not in known]
        if missing:
            raise InvalidInput(f"the constitution '{self.name}' has no principle {missing}; it has {sorted(known)}")
        return [known[n] for n in names]


def load_constitution(path: str | Path) -> Constitution:
    """Read and check a TOML constitution (see the shipped default for the layout)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInput(f"constitution file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"constitution {path} is not valid TOML: {exc}") from None
    rows = data.get("principles")
    if not isinstance(rows, list) or not rows:
        raise InvalidInput(f"constitution {path} has no [[principles]]")
    if len(rows) > MAX_PRINCIPLES:
        raise InvalidInput(f"at most {MAX_PRINCIPLES} principles per constitution")
    principles, seen = [], set()
    for number, row in enumerate(rows, start=1):
        fields = {key: row.get(key) if isinstance(row, dict) else None for key in ("name", "critique", "revision")}
        if not all(isinstance(value, str) and value.strip() for value in fields.values()):
            raise InvalidInput(f"constitution {path}: principle {number} needs non-empty name, critique and revision")
        if not NAME_PATTERN.match(fields["name"]) or fields["name"] in seen:
            raise InvalidInput(
                f"constitution {path}: principle {number} needs a unique name of letters, digits, '.', '_', '-'"
            )
        if max(len(fields["critique"]), len(fields["revision"])) > MAX_REQUEST_CHARS:
            raise InvalidInput(
                f"constitution {path}: principle '{fields['name']}' requests are over {MAX_REQUEST_CHARS} characters"
            )
        seen.add(fields["name"])
        principles.append(Principle(fields["name"], fields["critique"].strip(), fields["revision"].strip()))
    return Constitution(str(data.get("name") or path.stem), tuple(principles), str(path))


@dataclass
class Labelled:
    prompt: str
    original: str
    critique: str
    revision: str
    principle: str

    @property
    def usable(self) -> bool:
        """A pair teaches something only when the revision is a different, non-empty text."""
        return bool(self.revision.strip()) and self.revision.strip() != self.original.strip()


def critique_and_revise(
    model: ChatModel,
    prompts: Sequence[str],
    principles: Sequence[Principle],
    *,
    max_tokens: int = 64,
    temperature: float = 0.7,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> list[Labelled]:
    """Answer each prompt, critique the answer by a principle (taken in turn), revise it."""
    if not prompts:
        raise InvalidInput("give at least one prompt to label", code="empty_prompt_set")
    if not principles:
        raise InvalidInput("the constitution has no principles to apply")
    from espalier.core.infrastructure.jobs.service import throttled

    report = progress or (lambda fraction, message="": None)
    stop = throttled(cancelled or (lambda: False))
    out: list[Labelled] = []
    for index, prompt in enumerate(prompts):
        if stop():
            from espalier.core.infrastructure.jobs.service import JobCancelled

            raise JobCancelled("constitutional labelling cancelled; nothing stored")
        principle = principles[index % len(principles)]
        params = GenerationParams(max_tokens=max_tokens, temperature=temperature, top_p=0.9, n=1, seed=seed + index)
        focused = GenerationParams(max_tokens=max_tokens, temperature=0.0, n=1)
        chat = [ChatMessage("user", prompt)]
        original = model.generate(chat, params, stop)[0].text
        chat += [ChatMessage("assistant", original), ChatMessage("user", principle.critique)]
        critique = model.generate(chat, focused, stop)[0].text
        chat += [ChatMessage("assistant", critique), ChatMessage("user", principle.revision)]
        revision = model.generate(chat, focused, stop)[0].text
        out.append(Labelled(prompt, original, critique, revision, principle.name))
        report((index + 1) / len(prompts) * 0.95, f"{index + 1}/{len(prompts)} prompts critiqued and revised")
    return out


def summary(items: Sequence[Labelled]) -> dict[str, Any]:
    by_principle: dict[str, int] = {}
    for item in items:
        if item.usable:
            by_principle[item.principle] = by_principle.get(item.principle, 0) + 1
    return {"prompts": len(items), "usable": sum(by_principle.values()), "by_principle": by_principle}


def constitution_path(settings: Settings) -> Path:
    """The operator's constitution (``ESPALIER_CONSTITUTION_PATH``) or the shipped default."""
    return Path(settings.constitution_path) if settings.constitution_path else DEFAULT_CONSTITUTION


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Check a ``cai:labels`` request; without ``prompts``, the shipped evaluation prompts."""
    from espalier.core.sources.learning.gate import check_prompts, default_set

    unknown = set(params) - PARAMS
    if unknown:
        raise InvalidInput(f"unknown cai:labels settings {sorted(unknown)}; known: {sorted(PARAMS)}")
    params = dict(params)
    limit = params.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InvalidInput("limit must be a positive integer")
    prompts = params.get("prompts")
    if prompts is None:
        prompts = default_set()["prompts"]
    if not isinstance(prompts, list):
        raise InvalidInput("prompts must be a list of strings")
    params["prompts"] = check_prompts(prompts[:limit] if limit else prompts)
    if not 1 <= int(params.get("max_tokens", 64)) <= 256:
        raise InvalidInput("max_tokens must be 1-256")
    return params
