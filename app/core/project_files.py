"""Files uploaded as context for a project: put, list, get, delete.

Paths are keys, never opened on disk, but they end up in prompts and may one day be
written out into a sandbox, so they are normalised to one canonical relative POSIX form
and anything that could climb out of the project (`..`, absolute paths, drive letters,
backslashes, NUL and control characters, look-alike dots) is refused, not repaired.

A project belongs to the API key that uploaded its first file; other keys see 404.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import InvalidInput, NotFound, PayloadTooLarge
from app.core.fields import check_limit, iso_utc
from app.core.models import ProjectFile, utcnow
from app.core.upsert import insert_for

MAX_PATH_CHARS = 1000
MAX_SEGMENT_CHARS = 255
MAX_LIST_LIMIT = 5000
_PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_DRIVE = re.compile(r"[A-Za-z]:")


def check_project_id(project_id: str) -> str:
    if not isinstance(project_id, str) or not _PROJECT_ID.fullmatch(project_id):
        raise InvalidInput(
            "project_id must be 1 to 200 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            detail={"field": "project_id"},
        )
    return project_id


def normalize_project_path(path: str) -> str:
    """The canonical form of a project-relative path (`a//./b` → `a/b`), or InvalidInput."""

    def refuse(why: str) -> InvalidInput:
        return InvalidInput(f"invalid path: {why}", detail={"field": "path", "path": path[:200]})

    if not isinstance(path, str) or not path.strip():
        raise refuse("empty")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise refuse("NUL or control character")
    if "\\" in path:
        raise refuse("backslashes are not path separators here")
    path = unicodedata.normalize("NFC", path)
    if path.startswith("/") or _DRIVE.match(path):
        raise refuse("absolute paths are not allowed")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts:
        raise refuse("no file name")
    for part in parts:
        # NFKC folds look-alikes such as U+FF0E (fullwidth full stop) into "."
        if unicodedata.normalize("NFKC", part).strip() in ("..", "."):
            raise refuse("'..' is not allowed")
        if len(part) > MAX_SEGMENT_CHARS:
            raise refuse(f"a path segment is longer than {MAX_SEGMENT_CHARS} characters")
    clean = "/".join(parts)
    if len(clean) > MAX_PATH_CHARS:
        raise refuse(f"longer than {MAX_PATH_CHARS} characters")
    return clean


def decode_content(content: str | bytes) -> str:
    """UTF-8 text within the size cap; PayloadTooLarge or InvalidInput otherwise."""
    limit = get_settings().max_project_file_bytes
    raw = content.encode() if isinstance(content, str) else bytes(content)
    if len(raw) > limit:
        raise PayloadTooLarge(
            f"file is {len(raw)} bytes; the limit is {limit}",
            detail={"field": "content", "limit": limit, "size": len(raw)},
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(
            "project files must be UTF-8 text", detail={"field": "content"}
        ) from None
    if "\x00" in text:
        raise InvalidInput("project files must not contain NUL bytes", detail={"field": "content"})
    return text


def put_project_file(
    *,
    session: Session,
    project_id: str,
    path: str,
    content: str | bytes,
    owner: str = "anonymous",
) -> tuple[ProjectFile, bool]:
    """Create or replace a file; returns the row and whether it was created."""
    check_project_id(project_id)
    clean = normalize_project_path(path)
    text = decode_content(content)
    _check_owner(session, project_id, owner)
    size = len(text.encode())
    digest = hashlib.sha256(text.encode()).hexdigest()
    existed = _find(session, project_id, clean) is not None
    session.execute(
        insert_for(session, ProjectFile)
        .values(
            owner=owner, project_id=project_id, path=clean, content=text, size=size, sha256=digest
        )
        .on_conflict_do_update(
            index_elements=["project_id", "path"],
            set_={"content": text, "size": size, "sha256": digest, "updated_at": utcnow()},
        )
    )
    row = _find(session, project_id, clean)
    assert row is not None
    session.refresh(row)
    return row, not existed


def list_project_files(
    *, session: Session, project_id: str, owner: str = "anonymous", limit: int = 1000
) -> list[ProjectFile]:
    """A project's files by path; NotFound if it has none visible to `owner`."""
    check_project_id(project_id)
    check_limit(limit, maximum=MAX_LIST_LIMIT)
    rows = list(
        session.scalars(
            select(ProjectFile)
            .where(ProjectFile.project_id == project_id, ProjectFile.owner == owner)
            .order_by(ProjectFile.path)
            .limit(limit)
        )
    )
    if not rows:
        raise NotFound(f"project {project_id!r} not found", detail={"project_id": project_id})
    return rows


def get_project_file(
    *, session: Session, project_id: str, path: str, owner: str = "anonymous"
) -> ProjectFile:
    check_project_id(project_id)
    clean = normalize_project_path(path)
    row = _find(session, project_id, clean)
    if row is None or row.owner != owner:
        raise NotFound(
            f"file {clean!r} not found in project {project_id!r}",
            detail={"project_id": project_id, "path": clean},
        )
    return row


def delete_project_file(
    *, session: Session, project_id: str, path: str, owner: str = "anonymous"
) -> None:
    row = get_project_file(session=session, project_id=project_id, path=path, owner=owner)
    session.execute(delete(ProjectFile).where(ProjectFile.id == row.id))


def project_file_to_json(row: ProjectFile, *, with_content: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "project_id": row.project_id,
        "path": row.path,
        "size": row.size,
        "sha256": row.sha256,
        "updated_at": iso_utc(row.updated_at),
    }
    if with_content:
        data["content"] = row.content
    return data


def _find(session: Session, project_id: str, path: str) -> ProjectFile | None:
    return session.scalar(
        select(ProjectFile).where(ProjectFile.project_id == project_id, ProjectFile.path == path)
    )


def _check_owner(session: Session, project_id: str, owner: str) -> None:
    other = session.scalar(
        select(ProjectFile.owner)
        .where(ProjectFile.project_id == project_id, ProjectFile.owner != owner)
        .limit(1)
    )
    if other is not None:
        raise NotFound(f"project {project_id!r} not found", detail={"project_id": project_id})
