"""`/projects/{project_id}/files…`: files uploaded as context for generations.

`PUT` takes the file's raw bytes as the body (UTF-8 text, any content type, so a JSON
file is stored as is, never parsed); `GET` of one file returns JSON with its content.
Paths are normalised and anything that could escape the project is refused (422).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.api.deps import OwnerDep, SessionDep
from app.core.config import get_settings
from app.core.errors import PayloadTooLarge
from app.core.project_files import (
    MAX_LIST_LIMIT,
    delete_project_file,
    get_project_file,
    list_project_files,
    project_file_to_json,
    put_project_file,
)

router = APIRouter(prefix="/projects", tags=["projects"])


@router.put("/{project_id}/files/{path:path}")
async def put_file(
    project_id: str, path: str, request: Request, session: SessionDep, owner: OwnerDep
) -> JSONResponse:
    """Create (201) or replace (200) a file."""
    content = await _read_capped(request, get_settings().max_project_file_bytes)
    row, created = await run_in_threadpool(
        put_project_file,
        session=session,
        project_id=project_id,
        path=path,
        content=content,
        owner=owner,
    )
    body = project_file_to_json(row, with_content=False)
    await run_in_threadpool(session.commit)
    return JSONResponse(body, status_code=201 if created else 200)


@router.get("/{project_id}/files")
def list_files(
    project_id: str,
    session: SessionDep,
    owner: OwnerDep,
    limit: int = Query(default=1000, ge=1, le=MAX_LIST_LIMIT),
) -> dict[str, Any]:
    """The project's files by path (without their content)."""
    rows = list_project_files(session=session, project_id=project_id, owner=owner, limit=limit)
    return {
        "project_id": project_id,
        "files": [project_file_to_json(row, with_content=False) for row in rows],
    }


@router.get("/{project_id}/files/{path:path}")
def get_file(project_id: str, path: str, session: SessionDep, owner: OwnerDep) -> dict[str, Any]:
    row = get_project_file(session=session, project_id=project_id, path=path, owner=owner)
    return project_file_to_json(row)


@router.delete("/{project_id}/files/{path:path}", status_code=204)
def delete_file(project_id: str, path: str, session: SessionDep, owner: OwnerDep) -> Response:
    delete_project_file(session=session, project_id=project_id, path=path, owner=owner)
    session.commit()
    return Response(status_code=204)


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it grows past `limit` instead of buffering it all."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"file is larger than the limit of {limit} bytes",
                detail={"field": "content", "limit": limit},
            )
        chunks.append(chunk)
    return b"".join(chunks)
