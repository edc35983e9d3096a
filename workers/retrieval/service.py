"""What the Celery tasks call: one retriever (and one CodeMemory) per worker process.

- `warm_up()` in `worker_process_init` loads the embedder and opens the index replica,
  so the first search does not pay for it.
- `search(request, workspace=)` runs a search job: `{query, language?, k?}` → ranked
  items of that workspace (and the global knowledge).
- `index_generation(generation_id)` after the generate worker committed a generation.
- `context_window(...)` for the agent: what to put into a prompt.

Objects are created lazily in the process that uses them, never before a fork.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from app.core.config import get_settings
from app.core.db import get_engine
from app.core.errors import InvalidInput
from app.core.names import LANGUAGES
from workers.retrieval.memory import DEFAULT_TOKEN_BUDGET, CodeMemory, ContextWindow
from workers.retrieval.retriever import FeedbackAwareRetriever

MAX_QUERY_CHARS = 4000
MAX_K = 50

_lock = threading.Lock()
_retriever: FeedbackAwareRetriever | None = None
_memory: CodeMemory | None = None


def get_retriever() -> FeedbackAwareRetriever:
    global _retriever
    with _lock:
        if _retriever is None:
            _retriever = FeedbackAwareRetriever(engine=get_engine(), settings=get_settings())
        return _retriever


def get_memory() -> CodeMemory:
    global _memory
    retriever = get_retriever()
    with _lock:
        if _memory is None or _memory.retriever is not retriever:
            _memory = CodeMemory(retriever)
        return _memory


def reset() -> None:
    """Forget this process's retriever (tests; settings or database changed)."""
    global _retriever, _memory
    with _lock:
        if _retriever is not None:
            _retriever.close()
        _retriever = _memory = None


def warm_up() -> str:
    """Load the embedder and open the index replica; returns how it was opened."""
    return get_retriever().open()


def search(request: dict[str, Any], *, workspace: str) -> dict[str, Any]:
    """A search job of `workspace`: `{query, language?, k?}` → `{"items": [...], "took_ms"}`."""
    started = time.perf_counter()
    query = request.get("query")
    if not isinstance(query, str) or not query.strip() or len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(
            f"query must be 1 to {MAX_QUERY_CHARS} characters", detail={"field": "query"}
        )
    language = request.get("language")
    if language is not None and language not in LANGUAGES:
        raise InvalidInput(f"unknown language {language!r}", detail={"field": "language"})
    k = request.get("k", 5)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}", detail={"field": "k"})
    hits = get_retriever().search(query, language=language, k=k, workspace=workspace)
    return {
        "items": [hit.to_json() for hit in hits],
        "took_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def index_generation(generation_id: str) -> bool:
    """Embed a committed generation and store its embedding; False if it does not exist."""
    return get_retriever().index_generation(generation_id)


def context_window(
    task: str,
    language: str,
    project_id: str | None = None,
    *,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    workspace: str,
) -> ContextWindow:
    """Context for a prompt from `workspace`'s memory; raises the usage count of the
    snippets and generations used."""
    return get_memory().context_window(
        task, language, project_id, token_budget=token_budget, workspace=workspace
    )
