"""Files uploaded as context for a project: put, list, get, delete.

Paths are keys, never opened on disk, but they end up in prompts and may one day be
written out into a sandbox, so they are normalised to one canonical relative POSIX form
and anything that could climb out of the project (`..`, absolute paths, drive letters,
backslashes, NUL and control characters, look-alike dots) is refused, not repaired.

A project belongs to a workspace: `project_id` names a project within the caller's
workspace, every key of that workspace shares it, and another workspace's project of
the same name is a different project (its files are a 404 here, never touched). A
write is one upsert keyed by (workspace, project, path), so there is no check-then-write
window in which another workspace's key could overwrite a file.
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
from app.core.models import DEFAULT_WORKSPACE, ProjectFile, utcnow
from app.core.upsert import insert_for

MAX_PATH_CHARS = 1000
MAX_SEGMENT_CHARS = 255
MAX_LIST_LIMIT = 5000
PROJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
_PROJECT_ID = re.compile(PROJECT_ID_PATTERN)

# The paths accepted, as one regex for /openapi.json (a subset of what the checks of
# `normalize_project_path` let through, which it also enforces): segments separated by
# slashes, `.` and empty segments allowed; each name is at most 255 characters with
# something besides dots and spaces (and their Unicode look-alikes) among its first
# five; no control character, `\`, `:` (drive letters) or `%` (the URL escape) at all.
# Characters besides ' ' and '.' that NFKC folds into spaces or dots.
_LOOKALIKES = (
    r"\x85\xa0\u1680\u2000-\u200a\u2024-\u2026\u2028\u2029"
    r"\u202f\u205f\u3000\ufe19\ufe30\ufe52\uff0e"
)
_ANY = r"[^\x00-\x1f\x7f/\\:%]"
_DOTS_SPACES = f"[ .{_LOOKALIKES}]"
_SOLID = f"[^\\x00-\\x20\\x7f/\\\\:%.{_LOOKALIKES}]"
_NAME = f"{_DOTS_SPACES}{{0,4}}{_SOLID}{_ANY}{{0,250}}"
PROJECT_PATH_PATTERN = f"^(?:\\./+)*{_NAME}(?:/+(?:\\.|{_NAME}))*/*$"
_PROJECT_PATH = re.compile(PROJECT_PATH_PATTERN)
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
    if len(path) > MAX_PATH_CHARS:
        raise refuse(f"longer than {MAX_PATH_CHARS} characters")
    if not _PROJECT_PATH.fullmatch(path):
        raise refuse("each name needs a character besides dots and spaces among its first "
                     "five; ':' and '%' are not allowed")  # fmt: skip
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
    workspace: str = DEFAULT_WORKSPACE,
) -> tuple[ProjectFile, bool]:
    """Create or replace a file of the workspace's project; returns the row and whether
    it was created. One statement: the upsert's key is the ownership check."""
    check_project_id(project_id)
    clean = normalize_project_path(path)
    text = decode_content(content)
    size = len(text.encode())
    digest = hashlib.sha256(text.encode()).hexdigest()
    file_id, revision = session.execute(
        insert_for(session, ProjectFile)
        .values(
            owner=owner,
            workspace_id=workspace,
            project_id=project_id,
            path=clean,
            content=text,
            size=size,
            sha256=digest,
            revision=1,
        )
        .on_conflict_do_update(
            index_elements=["workspace_id", "project_id", "path"],
            set_={
                "content": text,
                "size": size,
                "sha256": digest,
                "updated_at": utcnow(),
                "revision": ProjectFile.revision + 1,
            },
        )
        .returning(ProjectFile.id, ProjectFile.revision)
    ).one()
    row = session.get(ProjectFile, file_id, populate_existing=True)
    assert row is not None
    return row, revision == 1


def list_project_files(
    *, session: Session, project_id: str, workspace: str = DEFAULT_WORKSPACE, limit: int = 1000
) -> list[ProjectFile]:
    """A workspace's project's files by path; NotFound if it has none."""
    check_project_id(project_id)
    check_limit(limit, maximum=MAX_LIST_LIMIT)
    rows = list(
        session.scalars(
            select(ProjectFile)
            .where(ProjectFile.workspace_id == workspace, ProjectFile.project_id == project_id)
            .order_by(ProjectFile.path)
            .limit(limit)
        )
    )
    if not rows:
        raise NotFound(f"project {project_id!r} not found", detail={"project_id": project_id})
    return rows


def get_project_file(
    *, session: Session, project_id: str, path: str, workspace: str = DEFAULT_WORKSPACE
) -> ProjectFile:
    check_project_id(project_id)
    clean = normalize_project_path(path)
    row = session.scalar(_one_file(workspace, project_id, clean, select(ProjectFile)))
    if row is None:
        raise _file_not_found(project_id, clean)
    return row


def delete_project_file(
    *, session: Session, project_id: str, path: str, workspace: str = DEFAULT_WORKSPACE
) -> None:
    """Delete one file of the workspace's project (one statement); NotFound if absent."""
    check_project_id(project_id)
    clean = normalize_project_path(path)
    gone = session.execute(
        _one_file(workspace, project_id, clean, delete(ProjectFile)).returning(ProjectFile.id)
    ).first()
    if gone is None:
        raise _file_not_found(project_id, clean)


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


def _one_file(workspace: str, project_id: str, path: str, statement: Any) -> Any:
    return statement.where(
        ProjectFile.workspace_id == workspace,
        ProjectFile.project_id == project_id,
        ProjectFile.path == path,
    )


def _file_not_found(project_id: str, path: str) -> NotFound:
    return NotFound(
        f"file {path!r} not found in project {project_id!r}",
        detail={"project_id": project_id, "path": path},
    )
