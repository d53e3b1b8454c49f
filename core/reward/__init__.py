"""Reward models: the artifact format, versions, promotion and scoring."""

from .scoring import CARD_NAME, RewardScorer, encode, rewards
from .service import RewardModelService

__all__ = ["CARD_NAME", "RewardModelService", "RewardScorer", "encode", "rewards"]
