"""The re-ranking score: `combined = w_sim·similarity + w_fb·feedback + w_usage·usage`.

Feedback and usage are read from SQL at query time, never baked into the index, so a
rating changes the next search without re-embedding anything. An item nobody rated yet
sits at the neutral prior (not zero): new items are not buried under rated ones.
Usage saturates (`u / (u + USAGE_HALF)`), so it is in [0, 1) like the other terms and
an item used thousands of times cannot drown similarity.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.config import Settings

# The usage count at which the usage term reaches one half.
USAGE_HALF = 10.0


@dataclass(frozen=True)
class RankingWeights:
    similarity: float = 0.7
    feedback: float = 0.2
    usage: float = 0.1
    neutral_feedback: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> RankingWeights:
        return cls(
            similarity=settings.retrieval_w_sim,
            feedback=settings.retrieval_w_fb,
            usage=settings.retrieval_w_usage,
            neutral_feedback=settings.retrieval_neutral_feedback,
        )


def normalised_usage(usage_count: int) -> float:
    return max(usage_count, 0) / (max(usage_count, 0) + USAGE_HALF)


def effective_feedback(score: float | None, count: int, neutral: float) -> float:
    """The mean rating, or the neutral prior for an item nobody rated."""
    return neutral if score is None or count <= 0 else float(score)


def combined_score(
    similarity: float,
    feedback_score: float | None,
    feedback_count: int,
    usage_count: int,
    weights: RankingWeights,
) -> float:
    feedback = effective_feedback(feedback_score, feedback_count, weights.neutral_feedback)
    return (
        weights.similarity * similarity
        + weights.feedback * feedback
        + weights.usage * normalised_usage(usage_count)
    )
