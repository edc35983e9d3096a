"""The agent's view of memory: one embedding of the task, the context window, reuse.

Built on the retriever of this process (`workers.retrieval.service`) and a
`CodeMemory` that counts tokens with the model's own tokenizer, so the budget the
agent sets is the budget the prompt gets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from workers.agent.engine import Engine, Messages
from workers.agent.reuse import ReuseCandidate, reuse_candidates
from workers.retrieval.memory import CodeMemory, ContextItem, ContextWindow
from workers.retrieval.retriever import FeedbackAwareRetriever

# Section headings between items, and tokens merging differently at item boundaries.
CONTEXT_MARGIN_TOKENS = 64

_lock = threading.Lock()
_memory: CodeMemory | None = None


def _code_memory(
    retriever: FeedbackAwareRetriever, count_tokens: Callable[[str], int]
) -> CodeMemory:
    """One CodeMemory per process (it caches project-file embeddings)."""
    global _memory
    with _lock:
        if (
            _memory is None
            or _memory.retriever is not retriever
            or _memory.count_tokens != count_tokens
        ):
            _memory = CodeMemory(retriever, count_tokens=count_tokens)
        return _memory


class AgentMemory:
    def __init__(self, engine: Engine) -> None:
        from workers.retrieval.service import get_retriever

        self.retriever = get_retriever()
        self.memory = _code_memory(self.retriever, engine.count_tokens)

    def embed(self, text: str) -> np.ndarray:
        """The task's embedding; first, anything added to memory since the last scan
        (a knowledge item posted a moment ago) is embedded, so this task can find it."""
        self.retriever.embed_new()
        return self.retriever.embedder.encode_one(text)

    def context_window(
        self,
        task: str,
        language: str,
        project_id: str | None,
        *,
        budget: int,
        workspace: str,
        query: np.ndarray,
    ) -> ContextWindow:
        return self.memory.context_window(
            task,
            language,
            project_id,
            token_budget=budget,
            workspace=workspace,
            query=query,
            record_usage=False,  # `record_usage`, after the job: not on the way to a token
        )

    def record_usage(self, window: ContextWindow) -> None:
        self.memory.record_usage(window)

    def reuse_candidates(
        self,
        query: np.ndarray,
        language: str,
        *,
        workspace: str,
        min_similarity: float,
        limit: int,
    ) -> list[ReuseCandidate]:
        return reuse_candidates(
            self.retriever,
            query,
            language,
            workspace=workspace,
            min_similarity=min_similarity,
            limit=limit,
        )

    def add_candidates(self, window: ContextWindow, candidates: list[ReuseCandidate]) -> None:
        """Show candidates that failed verification as context, where they still fit."""
        present = {item.ref for item in window.items}
        left = window.budget - window.tokens
        for candidate in candidates:
            if candidate.item_id in present:
                continue
            section = "knowledge" if candidate.source == "knowledge" else "generation"
            item = ContextItem(
                section, candidate.item_id, candidate.title, candidate.code, candidate.similarity, 0
            )
            tokens = self.memory.count_tokens(item.render())
            if tokens <= left:
                window.items.append(ContextItem(**{**item.__dict__, "tokens": tokens}))
                left -= tokens


def context_budget(
    engine: Engine,
    render: Callable[[str | None], Messages],
    requested: int,
    max_new_tokens: int,
) -> int:
    """The context tokens that fit: what was asked, less than the window leaves free.

    `render(context)` builds the prompt around a context text (`render(None)`: none);
    what the wrapping costs is measured with the model's tokenizer, not guessed.
    """
    window = engine.context_window
    if window is None:
        return requested
    base = engine.prompt_tokens(render(None))
    wrapping = engine.prompt_tokens(render("x")) - base
    room = window - base - wrapping - max_new_tokens - CONTEXT_MARGIN_TOKENS
    return max(0, min(requested, room))
