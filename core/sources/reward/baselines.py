"""Trivial rules a reward model must beat on the same held-out pairs, and accuracy with an interval.

A reward model's held-out accuracy means little alone: on harmless-style data a rule such as
"the shorter answer wins" is right more often than chance, and a model that learned only length
would look good. Every reward model report puts the rules beside the model, on the same pairs,
with a paired bootstrap interval of the model's margin over the best rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from espalier.core.infrastructure.statistics import bootstrap_mean, paired_difference

#: Phrases of a refusal or a caution: the refusal rule prefers the answer with more of them.
REFUSAL = re.compile(
    r"\b(i'?m sorry|sorry|i can(?:no|')t|i cannot|i won'?t|i will not|i'?m not (?:able|comfortable|sure)|"
    r"not (?:appropriate|okay|ok|legal|a good idea)|illegal|harmful|unethical|dangerous|please don'?t|"
    r"i (?:don'?t|do not) (?:think|want|feel comfortable)|instead)\b",
    re.IGNORECASE,
)


def _by(measure: Callable[[str], float], sign: float) -> Callable[[str, str], float]:
    def rule(chosen: str, rejected: str) -> float:
        difference = sign * (measure(chosen) - measure(rejected))
        return 1.0 if difference > 0 else 0.0 if difference < 0 else 0.5

    return rule


#: name -> rule(chosen, rejected) giving 1 (right), 0 (wrong) or 0.5 (a tie).
RULES: dict[str, Callable[[str, str], float]] = {
    "longer wins": _by(len, 1.0),
    "shorter wins": _by(len, -1.0),
    "refusal words win": _by(lambda text: float(len(REFUSAL.findall(text))), 1.0),
}


def correctness(chosen: Sequence[float], rejected: Sequence[float]) -> list[float]:
    """Per pair: 1 when the chosen answer scores higher, 0.5 on a tie, 0 otherwise."""
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]


def compare_with_rules(right: Sequence[float], pairs: Sequence[Any]) -> dict[str, Any]:
    """The model's accuracy interval, each rule's on the same pairs, and the margin over the best rule.

    ``right`` is the model's :func:`correctness` on ``pairs`` (objects with ``chosen`` and
    ``rejected`` texts), in the same order."""
    model = bootstrap_mean(right)
    rules = {}
    for name, rule in RULES.items():
        rule_right = [rule(p.chosen, p.rejected) for p in pairs]
        rules[name] = {"accuracy": bootstrap_mean(rule_right).as_dict(), "right": rule_right}
    best = max(rules, key=lambda name: rules[name]["accuracy"]["mean"])
    margin = paired_difference(right, rules[best]["right"])
    return {
        "accuracy_interval": model.as_dict(),
        "baselines": {name: values["accuracy"] for name, values in rules.items()},
        "best_baseline": best,
        "margin_over_best_baseline": margin.as_dict(),
    }
