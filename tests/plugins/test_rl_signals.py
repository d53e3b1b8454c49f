"""RL's two signals in units of their running spread: the toxicity weight means the same whatever
the reward model's scale."""

from __future__ import annotations

import statistics

import pytest

from espalier.plugins.policy_training.rl import RunningScale, reward_functions


class Signals:
    """Scripted scores (the control flow under test is the scaling, not the models)."""

    def __init__(self, rewards: list[float], toxicity: list[float]):
        self._rewards, self._toxicity = rewards, toxicity

    def rewards(self, prompts, texts):
        return self._rewards[: len(texts)]

    def toxicities(self, texts):
        return self._toxicity[: len(texts)]


def test_running_scale_divides_by_the_spread_of_everything_seen():
    scale = RunningScale(floor=1e-3)
    first = scale.scaled([0.0, 10.0])
    assert first == pytest.approx([0.0, 2.0])  # spread 5
    second = scale.scaled([0.0, 10.0, 5.0, 5.0])
    spread = statistics.pstdev([0.0, 10.0, 0.0, 10.0, 5.0, 5.0])
    assert second == pytest.approx([0.0, 10.0 / spread, 5.0 / spread, 5.0 / spread])
    assert scale.last_mean == pytest.approx(5.0)


def test_the_floor_keeps_alike_samples_from_magnifying_noise():
    scale = RunningScale(floor=0.05)
    assert scale.scaled([0.01, 0.011]) == pytest.approx([0.2, 0.22])  # spread 0.0005, floored at 0.05
    assert RunningScale(floor=0.05).scaled([0.3]) == pytest.approx([6.0])  # one value: no spread yet


@pytest.mark.parametrize("reward_scale", [1.0, 50.0])
def test_the_toxicity_weight_means_the_same_whatever_the_reward_models_scale(reward_scale):
    # A toxic answer the reward model likes a little more: the weighted sum prefers the clean one
    # under weight 2 whether the reward model's scores spread over 1 unit or 50.
    rewards = [reward_scale * r for r in (1.0, 0.8, 0.0, 0.2)]
    toxicity = [0.9, 0.0, 0.1, 0.0]
    (reward_model, penalty), scales = reward_functions(Signals(rewards, toxicity))
    texts = ["toxic", "clean", "dull", "ok"]
    r, t = reward_model(texts, texts), penalty(texts, texts)
    objective = [a + 2.0 * b for a, b in zip(r, t, strict=True)]
    assert objective[1] > objective[0]
    assert scales["toxicity"].last_mean == pytest.approx(0.25)
    assert scales["reward_model"].last_mean == pytest.approx(reward_scale * 0.5)
