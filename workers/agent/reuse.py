"""Verified reuse: a task solved and verified once should not cost a failed generation again.

When a request has `tests`, memory is searched for solutions to a similar task before
any token is spent: curated knowledge items, and past generations that passed their
tests (their code last ran clean) or that a user rated at least 0.8. Nothing rated
below 0.5 is ever a candidate. The similarity floor (`agent_reuse_min_similarity`,
default 0.55) can be generous because the tests decide: measured with MiniLM, a
reworded task scores 0.62 to 0.87 against the knowledge item holding its solution
(title plus code), unrelated items at most 0.49. "Passed" means the generation's own
verification passed (code plus that request's tests), not merely that it once ran.
The best few candidates, by similarity, are run under the same verification as a
generated answer; the first that passes is the answer. Candidates that fail go into
the prompt as context instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.llm.codeblocks import extract_code
from workers.retrieval.embedding_store import GENERATION, KNOWLEDGE
from workers.retrieval.memory import DISLIKED_BELOW
from workers.retrieval.retriever import FeedbackAwareRetriever, SearchHit

LIKED_AT = 0.8
SEARCH_K = 12


@dataclass(frozen=True)
class ReuseCandidate:
    source: str  # "knowledge" | "history"
    item_id: str
    title: str
    code: str
    similarity: float

    def reused_from(self) -> dict[str, str]:
        return {"source": self.source, "id": self.item_id}


def reuse_candidates(
    retriever: FeedbackAwareRetriever,
    query: np.ndarray,
    language: str,
    *,
    workspace: str,
    min_similarity: float,
    limit: int,
) -> list[ReuseCandidate]:
    """The best `limit` solutions in the workspace's memory (and the global knowledge)
    worth verifying for this task, best first."""
    hits = retriever.search_vector(
        query,
        language=language,
        k=SEARCH_K,
        item_types=[KNOWLEDGE, GENERATION],
        workspace=workspace,
    )
    found = [
        _candidate(hit, language)
        for hit in hits
        if hit.similarity >= min_similarity and _eligible(hit)
    ]
    found = [c for c in found if c.code.strip()]
    found.sort(key=lambda c: (-c.similarity, c.item_id))
    unique: list[ReuseCandidate] = []
    for candidate in found:
        if all(candidate.code.strip() != seen.code.strip() for seen in unique):
            unique.append(candidate)
    return unique[:limit]


def _eligible(hit: SearchHit) -> bool:
    details = hit.details
    rated = details.feedback_count > 0 and details.feedback_score is not None
    if rated and details.feedback_score is not None and details.feedback_score < DISLIKED_BELOW:
        return False
    if hit.item_type == KNOWLEDGE:
        return True
    passed = details.verification_status == "passed"
    liked = rated and details.feedback_score is not None and details.feedback_score >= LIKED_AT
    return passed or liked


def _candidate(hit: SearchHit, language: str) -> ReuseCandidate:
    details = hit.details
    if hit.item_type == KNOWLEDGE:
        return ReuseCandidate(
            "knowledge",
            hit.item_id,
            details.title or "snippet",
            extract_code(details.body, language),
            hit.similarity,
        )
    return ReuseCandidate("history", hit.item_id, details.task or "", details.body, hit.similarity)
