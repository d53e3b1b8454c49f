"""Feedback capture and the preference pairs it becomes."""

from espalier.core.sources.feedback.pairs import Pair, check_ranking, prompt_text, ranking_pairs
from espalier.core.sources.feedback.service import FeedbackService, RateLimited, Submission
from espalier.core.sources.feedback.store import PairStore, describe, export_lines

__all__ = [
    "FeedbackService",
    "Pair",
    "PairStore",
    "RateLimited",
    "Submission",
    "check_ranking",
    "describe",
    "export_lines",
    "prompt_text",
    "ranking_pairs",
]
