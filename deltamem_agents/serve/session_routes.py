"""Session routes: read a session's metadata, delete, fork, export and import it.

    GET    /v1/sessions/{id}          metadata: version, number of logged messages, window start, state bytes
    DELETE /v1/sessions/{id}          forget it (state, log, metadata)
    POST   /v1/sessions/{id}/fork     copy it to {"to": new_id} (a fresh id if omitted)
    GET    /v1/sessions/{id}/export   the session as an export document (JSON, checksummed)
    POST   /v1/sessions/import        an export document as the body; ?session_id=&overwrite=true

Reading an unknown session is a 404; writing routes wait at most the busy timeout for a turn running on
the session (then 409). Export documents are those of `deltamem-agents sessions export`.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Body, Request, Response

from ..errors import SessionNotFoundError
from .engine import ChatEngine
from .schemas import ForkRequest

__all__ = ["router", "session_info"]

router = APIRouter()


def _engine(request: Request) -> ChatEngine:
    return request.app.state.engine


def session_info(engine: ChatEngine, session_id: str) -> dict[str, Any]:
    """What the API tells about a stored session (404 if there is none)."""
    rec = engine.chat.store.get(session_id)
    if rec is None:
        raise SessionNotFoundError(f"no session {session_id!r}")
    meta = rec.metadata or {}
    return {"id": rec.session_id, "object": "session", "version": rec.version, "num_messages": len(rec.messages),
            "window_start": int(meta.get("window_start", 0)), "state_bytes": len(rec.state or b""),
            "created_at": rec.created_at, "updated_at": rec.updated_at}


@router.get("/v1/sessions/{session_id}")
def get_session(session_id: str, request: Request) -> dict[str, Any]:
    return session_info(_engine(request), session_id)


@router.delete("/v1/sessions/{session_id}")
def delete_session(session_id: str, request: Request) -> dict[str, Any]:
    engine = _engine(request)
    with engine.lock(session_id):
        if not engine.chat.delete(session_id):
            raise SessionNotFoundError(f"no session {session_id!r}")
    return {"id": session_id, "object": "session.deleted", "deleted": True}


@router.post("/v1/sessions/{session_id}/fork")
def fork_session(session_id: str, request: Request, body: Optional[ForkRequest] = Body(default=None)
                 ) -> dict[str, Any]:
    engine = _engine(request)
    dst = body.to if body is not None and body.to else f"{session_id[:90]}-fork-{uuid.uuid4().hex[:12]}"
    with engine.lock(session_id):
        session_info(engine, session_id)  # 404 before anything is created
        engine.chat.fork(session_id, dst)
    return session_info(engine, dst)


@router.get("/v1/sessions/{session_id}/export")
def export_session(session_id: str, request: Request) -> Response:
    engine = _engine(request)
    with tempfile.TemporaryDirectory(prefix="deltamem-export-") as d:
        path = engine.chat.export_session(session_id, Path(d) / "session.json")
        data = path.read_bytes()
    return Response(data, media_type="application/json")


@router.post("/v1/sessions/import")
async def import_session(request: Request, session_id: Optional[str] = None, overwrite: bool = False
                         ) -> dict[str, Any]:
    data = await request.body()
    target = session_id
    if target is None:
        try:
            target = json.loads(data).get("session_id")
        except (ValueError, AttributeError):
            target = None
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(_import, _engine(request), data, target, session_id, overwrite)


def _import(engine: ChatEngine, data: bytes, target: Any, session_id: Optional[str], overwrite: bool
            ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="deltamem-import-") as d:
        path = Path(d) / "session.json"
        path.write_bytes(data)
        if not isinstance(target, str):  # the import itself reports what is wrong with the document
            sid = engine.chat.import_session(path, session_id, overwrite=overwrite)
        else:
            with engine.lock(target):
                sid = engine.chat.import_session(path, session_id, overwrite=overwrite)
    return session_info(engine, sid)


