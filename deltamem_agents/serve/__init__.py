"""An OpenAI-compatible HTTP server for `DeltaMemChat` (``deltamem-agents serve``; docs/serving.md).

- `create_app` (app.py): the FastAPI app; `ChatEngine` (engine.py): the one entry to the model;
- chat_routes.py: ``/v1/chat/completions`` (SSE streaming, tools, usage), ``/v1/models``;
- session_routes.py: ``/v1/sessions/{id}`` read/delete/fork/export, ``/v1/sessions/import``;
- errors.py (OpenAI-shaped errors), limits.py (request-body limit), schemas.py (request bodies).

Needs the ``serve`` extra (fastapi, uvicorn).
"""

from .app import DEFAULT_MAX_BODY_BYTES, create_app
from .engine import ChatEngine, TurnRequest

__all__ = ["create_app", "ChatEngine", "TurnRequest", "DEFAULT_MAX_BODY_BYTES"]
