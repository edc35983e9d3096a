"""The curated starter knowledge base: about a dozen idiomatic snippets per language.

The snippets live in one JSON file per language next to this module (shipped as package
data). Loading is idempotent and safe to run from several processes at once: existing
(language, title) pairs are left alone, so user edits and ratings survive a reload.
Embeddings are made later by the retrieval worker, which indexes rows that lack one.
The snippets are global (no workspace): every workspace sees them.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from app.core.knowledge import on_title_conflict_do_nothing
from app.core.models import KnowledgeItem
from app.core.names import LANGUAGES
from app.core.upsert import insert_for

SOURCE = "starter"


def starter_snippets() -> list[dict[str, Any]]:
    """Every starter snippet as `{language, title, content, tags}`, in file order."""
    snippets = []
    folder = resources.files(__package__)
    for language in LANGUAGES:
        data = json.loads((folder / f"{language}.json").read_text(encoding="utf-8"))
        if data["language"] != language:
            raise ValueError(f"{language}.json declares language {data['language']!r}")
        for item in data["items"]:
            snippets.append(
                {
                    "language": language,
                    "title": item["title"],
                    "content": item["content"],
                    "tags": list(item.get("tags", [])),
                }
            )
    return snippets


def load_starter_knowledge(session: Session, *, only_if_empty: bool = False) -> int:
    """Insert the starter snippets that are missing; returns how many were inserted.

    `only_if_empty=True` loads nothing once the knowledge base has any row (first start).
    Flushes; the caller's session scope commits.
    """
    if only_if_empty and session.scalar(select(exists().select_from(KnowledgeItem))):
        return 0
    inserted = 0
    for snippet in starter_snippets():
        insert = insert_for(session, KnowledgeItem).values(
            source=SOURCE, workspace_id=None, **snippet
        )
        new_id = session.scalar(
            on_title_conflict_do_nothing(insert, None).returning(KnowledgeItem.id)
        )
        inserted += new_id is not None
    return inserted
