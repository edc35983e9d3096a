"""CodeMemory: the context a model is shown for a task, within a token budget.

Three sources, interleaved by rank so none starves the others: the project's own files
(most relevant first, and any file the task names by path), curated knowledge
snippets, and similar past generations, leaving out generations rated below 0.5 and
those whose code last failed to run. Near-duplicates (the same code under another
title, or nearly so) are shown once. Every knowledge snippet and generation that
makes it into the window has its usage count raised (`record_usage=True`), which
feeds back into ranking.

Project files are not in the vector index (they change too often); each is embedded on
demand and cached by content hash, so an unchanged file is embedded once per process.

Everything comes from one workspace's memory (plus the global knowledge): the vector
search filters by workspace in the index, project files by workspace in SQL.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from sqlalchemy import select

from app.core.history import record_usage
from app.core.models import ProjectFile
from workers.retrieval.embedding_store import GENERATION, KNOWLEDGE
from workers.retrieval.ranking import EXEC_FAILED
from workers.retrieval.retriever import FeedbackAwareRetriever, SearchHit

DEFAULT_TOKEN_BUDGET = 1500
PER_SOURCE = 6  # at most this many knowledge items, and this many generations
MIN_KNOWLEDGE_SIMILARITY = 0.3
MIN_GENERATION_SIMILARITY = 0.35
DISLIKED_BELOW = 0.5  # generations rated below this (by anyone) are never shown
NEAR_DUPLICATE = 0.9  # token-set overlap (Jaccard) above which two items are the same
MIN_TRUNCATED_TOKENS = 64  # a project file cut shorter than this is not worth including
MAX_PROJECT_FILES = 200
FILE_HEAD_CHARS = 2000  # what a project file is embedded as: path + its head
NAME_BONUS = 0.3  # the task names the file (e.g. "fix utils.py")
_CACHE_SIZE = 4096

TokenCounter = Callable[[str], int]


def approx_tokens(text: str) -> int:
    """About four characters per token: a safe estimate for code when no tokenizer is given."""
    return max(1, math.ceil(len(text) / 4))


@dataclass(frozen=True)
class ContextItem:
    section: str  # "project_file" | "knowledge" | "generation"
    ref: str  # file path, knowledge id or generation id
    title: str
    text: str
    score: float
    tokens: int
    truncated: bool = False

    def render(self) -> str:
        return f"### {self.title}\n{self.text}"

    def to_result(self) -> dict[str, Any]:
        """How a generation's result names what it was shown (SPEC `result.context`)."""
        source = "history" if self.section == GENERATION else self.section
        label = "path" if self.section == "project_file" else "title"
        return {
            "source": source,
            "id": self.ref,
            label: self.ref if self.section == "project_file" else self.title,
            "score": round(self.score, 4),
            "tokens": self.tokens,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "ref": self.ref,
            "title": self.title,
            "text": self.text,
            "score": round(self.score, 6),
            "tokens": self.tokens,
            "truncated": self.truncated,
        }


@dataclass
class ContextWindow:
    task: str
    language: str
    budget: int
    items: list[ContextItem] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(item.tokens for item in self.items)

    def section(self, name: str) -> list[ContextItem]:
        return [item for item in self.items if item.section == name]

    def render(self) -> str:
        """The window as prompt text, one headed block per item, grouped by source."""
        headings = {
            "project_file": "Project files",
            "knowledge": "Reference snippets",
            "generation": "Similar past solutions (rated well by users)",
        }
        blocks = []
        for name, heading in headings.items():
            items = self.section(name)
            if items:
                blocks.append(f"## {heading}\n" + "\n\n".join(i.render() for i in items))
        return "\n\n".join(blocks)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "language": self.language,
            "budget": self.budget,
            "tokens": self.tokens,
            "items": [item.to_json() for item in self.items],
        }


class CodeMemory:
    def __init__(
        self, retriever: FeedbackAwareRetriever, *, count_tokens: TokenCounter | None = None
    ) -> None:
        self.retriever = retriever
        self.count_tokens = count_tokens or approx_tokens
        self._file_vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    def context_window(
        self,
        task: str,
        language: str,
        project_id: str | None = None,
        *,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        workspace: str | None = None,
        record_usage: bool = True,
        query: np.ndarray | None = None,
    ) -> ContextWindow:
        """The best context for `task` that fits in `token_budget` tokens.

        `workspace` is whose memory to draw on (None: every workspace's — tests only);
        `query` is the task's embedding when the caller already has it.
        """
        window = ContextWindow(task, language, token_budget)
        if token_budget <= 0:
            return window
        if query is None:
            query = self.retriever.embedder.encode_one(task)
        # One search over both types (one catch-up, one SQL read), split afterwards.
        hits = self.retriever.search_vector(
            query,
            language=language,
            k=2 * PER_SOURCE,
            item_types=[KNOWLEDGE, GENERATION],
            workspace=workspace,
        )
        knowledge = [
            self._from_hit(hit)
            for hit in hits
            if hit.item_type == KNOWLEDGE and hit.similarity >= MIN_KNOWLEDGE_SIMILARITY
        ][:PER_SOURCE]
        generations = [
            self._from_hit(hit)
            for hit in hits
            if hit.item_type == GENERATION
            and hit.similarity >= MIN_GENERATION_SIMILARITY
            and not _disliked(hit)
            and hit.details.last_execution_status not in EXEC_FAILED
            and hit.details.body.strip()
        ][:PER_SOURCE]
        files = self._project_files(task, query, project_id, workspace) if project_id else []
        self._fill(window, [files, knowledge, generations])
        if record_usage:
            self.record_usage(window)
        return window

    # --- sources ---------------------------------------------------------------------------
    def _from_hit(self, hit: SearchHit) -> ContextItem:
        if hit.item_type == KNOWLEDGE:
            title, text = hit.title or "snippet", hit.details.body
        else:
            title = f"Task: {_one_line(hit.details.task or '')}"
            text = hit.details.body
        return ContextItem(hit.item_type, hit.item_id, title, text, hit.combined, 0)

    def _project_files(
        self, task: str, query: np.ndarray, project_id: str, workspace: str | None
    ) -> list[ContextItem]:
        stmt = select(ProjectFile).where(ProjectFile.project_id == project_id)
        if workspace is not None:
            stmt = stmt.where(ProjectFile.workspace_id == workspace)
        with self.retriever.session() as session:
            files = list(session.scalars(stmt.order_by(ProjectFile.path).limit(MAX_PROJECT_FILES)))
        if not files:
            return []
        vectors = self._file_embeddings(files)
        lowered = task.lower()
        items = []
        for row, vector in zip(files, vectors, strict=True):
            score = float(vector @ query)
            name = PurePosixPath(row.path).name.lower()
            if row.path.lower() in lowered or (name and name in lowered):
                score += NAME_BONUS
            items.append(ContextItem("project_file", row.path, row.path, row.content, score, 0))
        return sorted(items, key=lambda i: (-i.score, i.ref))

    def _file_embeddings(self, files: list[ProjectFile]) -> list[np.ndarray]:
        keys = [(row.path, row.sha256) for row in files]
        with self._cache_lock:
            missing = [i for i, key in enumerate(keys) if key not in self._file_vectors]
        if missing:
            texts = [f"{files[i].path}\n{files[i].content[:FILE_HEAD_CHARS]}" for i in missing]
            fresh = self.retriever.embedder.encode(texts)
            with self._cache_lock:
                for i, vector in zip(missing, fresh, strict=True):
                    self._file_vectors[keys[i]] = vector
                while len(self._file_vectors) > _CACHE_SIZE:
                    self._file_vectors.popitem(last=False)
        with self._cache_lock:
            for key in keys:
                self._file_vectors.move_to_end(key)
            return [self._file_vectors[key] for key in keys]

    # --- packing ---------------------------------------------------------------------------
    def _fill(self, window: ContextWindow, sources: list[list[ContextItem]]) -> None:
        """Round-robin over the sources by rank, adding whatever still fits."""
        left = window.budget
        queues = [list(source) for source in sources]
        placed_words: list[frozenset[str]] = []
        while left > 0 and any(queues):
            for queue in queues:
                if not queue or left <= 0:
                    continue
                item = queue.pop(0)
                words = frozenset(item.text.split())
                if any(_overlap(words, seen) >= NEAR_DUPLICATE for seen in placed_words):
                    continue
                placed = self._fit(item, left)
                if placed is not None:
                    window.items.append(placed)
                    placed_words.append(words)
                    left -= placed.tokens

    def _fit(self, item: ContextItem, left: int) -> ContextItem | None:
        tokens = self.count_tokens(item.render())
        if tokens <= left:
            return ContextItem(**{**item.__dict__, "tokens": tokens})
        if item.section != "project_file" or left < MIN_TRUNCATED_TOKENS:
            return None
        # Cut the file to fit: estimate by proportion, then shrink until it does.
        text = item.text[: max(1, len(item.text) * left // tokens)]
        while text:
            cut = ContextItem(**{**item.__dict__, "text": text + "\n…", "truncated": True})
            tokens = self.count_tokens(cut.render())
            if tokens <= left:
                return ContextItem(**{**cut.__dict__, "tokens": tokens})
            text = text[: int(len(text) * 0.9)]
        return None

    def record_usage(self, window: ContextWindow) -> None:
        """Count one use of every knowledge item and generation in the window."""
        used = [item for item in window.items if item.section in (KNOWLEDGE, GENERATION)]
        if not used:
            return
        with self.retriever.transaction() as session:
            record_usage(
                session=session,
                generation_ids=[i.ref for i in used if i.section == GENERATION],
                knowledge_ids=[i.ref for i in used if i.section == KNOWLEDGE],
            )


def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _disliked(hit: SearchHit) -> bool:
    return hit.feedback_count > 0 and hit.feedback_score < DISLIKED_BELOW


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
