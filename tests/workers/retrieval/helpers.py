"""Small writers for the retriever tests (plain functions, not fixtures)."""

from __future__ import annotations

from app.core.history import store_generation
from app.core.knowledge import create_knowledge


def add_generation(sessions, task: str, code: str, language: str = "python", **kw) -> str:
    with sessions.begin() as session:
        return store_generation(
            session=session, task=task, language=language, text="", code=code, model="m", **kw
        ).id


def add_knowledge(sessions, language: str, title: str, content: str, **kw) -> str:
    with sessions.begin() as session:
        return create_knowledge(
            session=session, language=language, title=title, content=content, **kw
        ).id
