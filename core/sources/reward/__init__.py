"""Reward models: versions, promotion, and trainings queued from the pairs held (scoring is a
plugin's: ``register_reward_scorers``; the built-in artifact format is the reward_models plugin's)."""

from espalier.core.sources.reward.service import RewardModelService

__all__ = ["RewardModelService"]
