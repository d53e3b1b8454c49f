"""Hand-written signs of prompt injection: override phrases, chat-template role markers,
jailbreak personas, requests for the system prompt, and operator canary tokens.

Each rule has a weight in [0, 1]; a text's rule score is the largest weight among the rules it
matches. Weights say how rarely the pattern appears in honest text: a ChatML ``<|im_start|>``
or "ignore all previous instructions" almost never does, "from now on you are" often does in
role-play prompts, so it stays under the default 0.5 threshold on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_I = re.IGNORECASE
_M = re.MULTILINE


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    weight: float


def _rule(name: str, pattern: str, weight: float, flags: int = _I) -> Rule:
    return Rule(name, re.compile(pattern, flags), weight)


_EARLIER = (
    r"(?:previous|prior|above|earlier|preceding|foregoing|original|initial|system|all(?:\s+of)?(?:\s+(?:the|your|my))?)"
)
_ORDERS = r"(?:instructions?|prompts?|rules|directions|directives|guidelines|context|commands?|programming|constraints)"

RULES: tuple[Rule, ...] = (
    _rule(
        "override",
        rf"\b(?:ignore|disregard|forget|skip|override|bypass|neglect)\b(?:\W+\w+){{0,3}}?\W+{_EARLIER}\b(?:\W+\w+){{0,2}}?\W+{_ORDERS}\b",
        0.95,
    ),
    _rule("override", rf"\bdo\s+not\s+follow\b(?:\W+\w+){{0,2}}?\W+{_EARLIER}\W+(?:\w+\W+){{0,2}}?{_ORDERS}\b", 0.9),
    _rule("new_instructions", r"\b(?:new|updated|real|actual)\s+(?:instructions?|task|rules)\s*:", 0.8),
    _rule(
        "role_marker", r"<\|\s*(?:system|im_start|im_end|assistant|user|endoftext|start_header_id|eot_id)\s*\|>", 0.9
    ),
    _rule("role_marker", r"\[/?INST\]|<</?SYS>>", 0.85),
    _rule("role_marker", r"^\s*#{2,}\s*(?:instruction|system|response|new instruction)s?\b", 0.8, _I | _M),
    _rule("role_marker", r"^\s*SYSTEM\s*:", 0.8, _M),
    _rule("role_marker", r"^\s*(?:system|developer)\s*(?:prompt|message)?\s*:", 0.6, _I | _M),
    _rule(
        "prompt_extraction",
        r"\b(?:reveal|print|repeat|show|output|display|leak|dump|spell\s+out|tell\s+me|give\s+me|what\s+(?:is|are|were))\b(?:\W+\w+){0,4}?\W+(?:system\s+prompt|(?:initial|original|hidden|secret|system)\s+(?:prompt|instructions|message)|your\s+(?:instructions|prompt|rules|guidelines))\b",
        0.9,
    ),
    _rule(
        "prompt_extraction",
        r"\b(?:repeat|output|print|show|copy)\b(?:\W+\w+){0,3}?\W+(?:above|everything\s+(?:before|above))\b",
        0.8,
    ),
    _rule(
        "prompt_extraction",
        r"\b(?:your|the)\s+(?:system|initial|starting|original|hidden|secret|pre-?prompt)\s+(?:prompt|instructions|message)\b",
        0.75,
    ),
    _rule("jailbreak_persona", r"\bDAN\b|\bdo\s+anything\s+now\b|\bSTAN\b|\bDUDE\b|\bAIM\b", 0.85, 0),
    _rule(
        "jailbreak_persona",
        r"\b(?:developer|god|jailbreak|jailbroken|unrestricted|evil|opposite)\s+mode\b|\bjailbr(?:eak|oken)\b",
        0.85,
    ),
    _rule(
        "no_limits",
        r"\b(?:without|no|free\s+(?:of|from)|not\s+bound\s+by|break(?:ing)?\s+(?:free\s+of|out\s+of)?)\s+(?:any\s+)?(?:\w+\s+)?(?:restrictions|limitations|filters|filtering|censorship|guidelines|ethical|morals|content\s+polic(?:y|ies))\b",
        0.7,
    ),
    _rule("no_limits", r"\b(?:unfiltered|uncensored|amoral|immoral)\b", 0.6),
    _rule(
        "persona_switch", r"\bfrom\s+now\s+on\b[^.\n]{0,40}\byou\s+(?:are|will|must)\b|\bstay\s+in\s+character\b", 0.4
    ),
)


class RuleSet:
    """Rules plus canaries: strings an operator plants in a system prompt to detect its leak."""

    def __init__(self, rules: Iterable[Rule] = RULES, canaries: Sequence[str] = ()):
        self.rules = tuple(rules)
        self.canaries = tuple(c for c in (c.strip() for c in canaries) if c)

    def matches(self, text: str) -> list[tuple[str, float]]:
        """``[(rule name, weight), ...]`` for every rule (and canary) the text trips."""
        found = [(rule.name, rule.weight) for rule in self.rules if rule.pattern.search(text)]
        found.extend(("canary", 1.0) for canary in self.canaries if canary in text)
        return found

    def score(self, text: str) -> float:
        return max((weight for _, weight in self.matches(text)), default=0.0)

    def canary_hit(self, text: str) -> bool:
        return any(canary in text for canary in self.canaries)
