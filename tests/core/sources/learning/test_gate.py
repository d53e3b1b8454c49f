"""The promotion gate as statistics: paired intervals, a minimum of prompts, a required improvement,
and KL estimates that cannot come out negative."""

from __future__ import annotations

import random

import pytest

from espalier.core.infrastructure.contracts import ChatMessage
from espalier.core.infrastructure.statistics import bootstrap_mean, paired_difference
from espalier.core.sources.learning.gate import Gate, _kl


def side(rewards, toxicity, kl=None, tasks=()):
    return {"rewards": list(rewards), "toxicity": list(toxicity), "kl": kl, "task_right": list(tasks)}


def serving(n=40, seed=0):
    rng = random.Random(seed)
    return side([rng.gauss(0.0, 1.0) for _ in range(n)], [rng.uniform(0.05, 0.6) for _ in range(n)])


def test_a_real_improvement_passes():
    current = serving()
    rng = random.Random(1)
    # Toxicity down by about a third on every prompt, reward unchanged bar noise.
    candidate = side(
        [r + rng.gauss(0, 0.05) for r in current["rewards"]],
        [t * 0.65 for t in current["toxicity"]],
        kl=0.8,
    )
    verdict = Gate().judge(current, candidate)
    assert verdict["passed"], verdict["failures"]
    assert verdict["checks"]["toxicity"]["high"] < 0 and verdict["checks"]["improved"] is True


def test_a_noise_level_difference_is_refused_and_says_why():
    current = serving()
    rng = random.Random(2)
    # Differences that cancel out (each one followed by its opposite): noise with a mean of zero.
    draws = [rng.gauss(0, 0.3) for _ in range(20)]
    noise = [e for x in draws for e in (x, -x)]
    candidate = side(
        [r + e for r, e in zip(current["rewards"], noise, strict=True)],
        [t + e / 10 for t, e in zip(current["toxicity"], noise, strict=True)],
    )
    verdict = Gate().judge(current, candidate)
    assert not verdict["passed"]
    assert verdict["failures"] == [f for f in verdict["failures"] if f.startswith("no measurable improvement")]
    # The old gate's failure mode: a mean 0.0009 lower over 8 prompts is noise, not a regression.
    wobble = [0.2, -0.2] * 4  # answers that differ prompt by prompt, 0.0009 lower on average
    tiny = side([r + w - 0.0009 for r, w in zip(current["rewards"][:8], wobble, strict=True)], current["toxicity"][:8])
    lenient = Gate(min_prompts=8, require_improvement=False).judge(
        side(current["rewards"][:8], current["toxicity"][:8]), tiny
    )
    assert lenient["passed"], lenient["failures"]


def test_a_regression_is_refused_even_with_an_improvement_elsewhere():
    current = serving()
    candidate = side([r - 0.5 for r in current["rewards"]], [t * 0.5 for t in current["toxicity"]])
    verdict = Gate().judge(current, candidate)
    assert not verdict["passed"]
    assert any(f.startswith("mean reward is lower") for f in verdict["failures"])
    worse = side(current["rewards"], [t + 0.1 for t in current["toxicity"]])
    assert any("mean toxicity is higher" in f for f in Gate().judge(current, worse)["failures"])
    tasks = Gate().judge(
        side(current["rewards"], current["toxicity"], tasks=[True] * 10),
        side(current["rewards"], [t * 0.5 for t in current["toxicity"]], tasks=[False] * 10),
    )
    assert any(f.startswith("task accuracy is lower") for f in tasks["failures"])


def test_too_few_prompts_and_too_much_kl_are_refused():
    current = serving(n=10)
    better = side(current["rewards"], [t * 0.3 for t in current["toxicity"]], kl=50.0)
    failures = Gate().judge(current, better)["failures"]
    assert any(f.startswith("only 10 validation prompts") for f in failures)
    assert any("exceeds the bound" in f for f in failures)
    with pytest.raises(Exception, match="min_prompts"):
        Gate(min_prompts=0).check()


def test_bootstrap_intervals_cover_the_mean_and_pair_the_items():
    rng = random.Random(3)
    values = [rng.gauss(1.0, 1.0) for _ in range(200)]
    interval = bootstrap_mean(values)
    assert interval.low < interval.mean < interval.high and interval.n == 200
    assert 0.6 < interval.low and interval.high < 1.4
    # Pairing: a constant shift over wildly different items is certain; unpaired it would not be.
    base = [rng.gauss(0, 10) for _ in range(30)]
    shifted = paired_difference([b + 0.1 for b in base], base)
    assert shifted.low == pytest.approx(0.1) and shifted.high == pytest.approx(0.1)
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


class LogprobsOnly:
    """A provider that gives only the sampled tokens' log-probabilities (no distributions)."""

    def __init__(self, logprobs):
        self.logprobs = logprobs

    def completion_logprobs(self, messages, completions):
        assert isinstance(messages[0], ChatMessage)
        return [self.logprobs]


def test_kl_from_sampled_tokens_is_never_negative():
    # Tokens the version finds *less* likely than the reference: the naive estimate
    # sum(log p - log ref) is negative here (-1.5); a KL cannot be.
    mine, ref = LogprobsOnly([-2.0, -1.0, -3.0]), LogprobsOnly([-1.0, -0.5, -3.0])
    result = _kl(mine, ref, ["prompt"], ["answer"])
    assert result["kl_estimator"] == "k3 on sampled tokens"
    assert result["kl"] > 0 and result["kl_per_token"] > 0
    same = _kl(mine, LogprobsOnly([-2.0, -1.0, -3.0]), ["prompt"], ["answer"])
    assert same["kl"] == 0
    rng = random.Random(5)
    for _ in range(200):
        a = [-rng.uniform(0.01, 8) for _ in range(6)]
        b = [-rng.uniform(0.01, 8) for _ in range(6)]
        assert _kl(LogprobsOnly(a), LogprobsOnly(b), ["p"], ["y"])["kl"] >= 0


def test_the_improvement_may_show_in_one_format_but_no_format_may_regress():
    from espalier.core.sources.learning.gate import judge_formats

    current = serving()
    better_text = {"current": current, "candidate": side(current["rewards"], [t * 0.5 for t in current["toxicity"]])}
    same_chat = {"current": current, "candidate": side(current["rewards"], current["toxicity"])}
    assert judge_formats(Gate(), {"chat": same_chat, "text": better_text})["passed"]
    assert not judge_formats(Gate(), {"chat": same_chat, "text": same_chat})["passed"]
    worse_chat = {"current": current, "candidate": side(current["rewards"], [t + 0.2 for t in current["toxicity"]])}
    verdict = judge_formats(Gate(), {"chat": worse_chat, "text": better_text})
    assert not verdict["passed"] and verdict["failures"][0].startswith("chat format: mean toxicity is higher")
