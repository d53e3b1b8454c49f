"""Reward models: the artifact format, versions, promotion and scoring."""

from espalier.core.sources.reward.scoring import CARD_NAME, RewardScorer, encode, rewards
from espalier.core.sources.reward.service import RewardModelService

__all__ = ["CARD_NAME", "RewardModelService", "RewardScorer", "encode", "rewards"]
