"""`/projects/{project_id}/files…`: files uploaded as context for generations.

`PUT` takes the file's raw bytes as the body (UTF-8 text, any content type, so a JSON
file is stored as is, never parsed); `GET` of one file returns JSON with its content.
Paths are normalised and anything that could escape the project is refused (422).
A project lives in the caller's workspace: every key of it shares the project, another
workspace's project of the same id is a separate one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.api.deps import CallerDep, SessionDep
from app.api.errors import error_responses
from app.core.config import get_settings
from app.core.errors import PayloadTooLarge
from app.core.project_files import (
    MAX_LIST_LIMIT,
    MAX_PATH_CHARS,
    PROJECT_ID_PATTERN,
    PROJECT_PATH_PATTERN,
    delete_project_file,
    get_project_file,
    list_project_files,
    project_file_to_json,
    put_project_file,
)


class ProjectFileOut(BaseModel):
    """A file's JSON (`content` only when one file is read)."""

    project_id: str
    path: str
    size: int
    sha256: str
    updated_at: datetime
    content: str | None = None


class ProjectFileList(BaseModel):
    project_id: str
    files: list[ProjectFileOut]


router = APIRouter(
    prefix="/projects", tags=["projects"], responses=error_responses(401, 422, 429, 503)
)
# Both are checked by app/core/project_files (its messages); the schema says the same.
ProjectId = Annotated[str, Path(json_schema_extra={"pattern": PROJECT_ID_PATTERN})]
FilePath = Annotated[
    str,
    Path(
        max_length=MAX_PATH_CHARS,
        examples=["src/app.py"],  # slashes and all (the path is not one URL segment)
        json_schema_extra={"pattern": PROJECT_PATH_PATTERN},
    ),
]
_FILE_BODY = {
    "requestBody": {
        "description": "the file's text (UTF-8, no NUL), sent as is whatever its content type",
        "content": {
            "text/plain": {
                "schema": {
                    "type": "string",
                    "pattern": "^[^\\x00]*$",
                    "maxLength": get_settings().max_project_file_bytes,
                }
            }
        },
    }
}


@router.put(
    "/{project_id}/files/{path:path}",
    openapi_extra=_FILE_BODY,
    responses={
        200: {"description": "replaced", "model": ProjectFileOut},
        201: {"description": "created", "model": ProjectFileOut},
        **error_responses(413),
    },
)
async def put_file(
    project_id: ProjectId, path: FilePath, request: Request, session: SessionDep, caller: CallerDep
) -> JSONResponse:
    """Create (201) or replace (200) a file."""
    content = await _read_capped(request, get_settings().max_project_file_bytes)
    row, created = await run_in_threadpool(
        put_project_file,
        session=session,
        project_id=project_id,
        path=path,
        content=content,
        owner=caller.owner,
        workspace=caller.workspace,
    )
    body = project_file_to_json(row, with_content=False)
    await run_in_threadpool(session.commit)
    return JSONResponse(body, status_code=201 if created else 200)


@router.get(
    "/{project_id}/files",
    response_model=None,
    responses={200: {"model": ProjectFileList}, **error_responses(404)},
)
def list_files(
    project_id: ProjectId,
    session: SessionDep,
    caller: CallerDep,
    limit: int = Query(default=1000, ge=1, le=MAX_LIST_LIMIT),
) -> dict[str, Any]:
    """The project's files by path (without their content)."""
    rows = list_project_files(
        session=session, project_id=project_id, workspace=caller.workspace, limit=limit
    )
    return {
        "project_id": project_id,
        "files": [project_file_to_json(row, with_content=False) for row in rows],
    }


@router.get(
    "/{project_id}/files/{path:path}",
    response_model=None,
    responses={200: {"model": ProjectFileOut}, **error_responses(404)},
)
def get_file(
    project_id: ProjectId, path: FilePath, session: SessionDep, caller: CallerDep
) -> dict[str, Any]:
    row = get_project_file(
        session=session, project_id=project_id, path=path, workspace=caller.workspace
    )
    return project_file_to_json(row)


@router.delete("/{project_id}/files/{path:path}", status_code=204, responses=error_responses(404))
def delete_file(
    project_id: ProjectId, path: FilePath, session: SessionDep, caller: CallerDep
) -> Response:
    delete_project_file(
        session=session, project_id=project_id, path=path, workspace=caller.workspace
    )
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
