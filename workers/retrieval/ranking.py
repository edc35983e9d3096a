"""The re-ranking score: `combined = w_sim·similarity + w_fb·feedback + w_usage·usage`.

Feedback and usage are read from SQL at query time, never baked into the index, so a
rating changes the next search without re-embedding anything. An item nobody rated yet
sits at the neutral prior (not zero): new items are not buried under rated ones.
Usage saturates (`u / (u + USAGE_HALF)`), so it is in [0, 1) like the other terms and
an item used thousands of times cannot drown similarity.

How the item's code last ran is feedback too, weighed below a user's rating: a pass
(1.0) or a failure (0.0) counts as `exec_weight` ratings (default 0.5) in the feedback
mean; for an item nobody rated, the neutral prior stands in as one rating. So a
failed unrated generation drops from 0.5 to 0.33, a passed one rises to 0.67, and one
user's 1.0 still outranks any execution result.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.config import Settings

# The usage count at which the usage term reaches one half.
USAGE_HALF = 10.0

EXEC_PASSED = frozenset({"ok"})
EXEC_FAILED = frozenset(
    {
        "runtime_error",
        "compilation_error",
        "time_limit_exceeded",
        "memory_limit_exceeded",
        "output_limit_exceeded",
    }
)


@dataclass(frozen=True)
class RankingWeights:
    similarity: float = 0.7
    feedback: float = 0.2
    usage: float = 0.1
    neutral_feedback: float = 0.5
    exec_weight: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> RankingWeights:
        return cls(
            similarity=settings.retrieval_w_sim,
            feedback=settings.retrieval_w_fb,
            usage=settings.retrieval_w_usage,
            neutral_feedback=settings.retrieval_neutral_feedback,
            exec_weight=settings.retrieval_exec_weight,
        )


def normalised_usage(usage_count: int) -> float:
    return max(usage_count, 0) / (max(usage_count, 0) + USAGE_HALF)


def execution_outcome(status: str | None) -> float | None:
    """1.0 for code that ran clean, 0.0 for code that failed, None for no signal."""
    if status in EXEC_PASSED:
        return 1.0
    if status in EXEC_FAILED:
        return 0.0
    return None


def effective_feedback(
    score: float | None,
    count: int,
    neutral: float,
    exec_status: str | None = None,
    exec_weight: float = 0.0,
) -> float:
    """The mean rating (the neutral prior for an item nobody rated), with the last
    execution's outcome folded in as `exec_weight` ratings."""
    if score is not None and count > 0:
        mean, weight = float(score), float(count)
    else:
        mean, weight = neutral, 1.0
    outcome = execution_outcome(exec_status)
    if outcome is None or exec_weight <= 0:
        return mean
    return (mean * weight + outcome * exec_weight) / (weight + exec_weight)


def combined_score(
    similarity: float,
    feedback_score: float | None,
    feedback_count: int,
    usage_count: int,
    weights: RankingWeights,
    exec_status: str | None = None,
) -> float:
    feedback = effective_feedback(
        feedback_score, feedback_count, weights.neutral_feedback, exec_status, weights.exec_weight
    )
    return (
        weights.similarity * similarity
        + weights.feedback * feedback
        + weights.usage * normalised_usage(usage_count)
    )
