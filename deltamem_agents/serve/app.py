"""The app factory: a FastAPI app serving one `DeltaMemChat` over the OpenAI chat-completions API.

    from deltamem_agents.chat import DeltaMemChat
    from deltamem_agents.serve import create_app
    app = create_app(DeltaMemChat.from_default(db="sessions.db"))   # then: uvicorn.run(app, port=8000)

The chat model brings its session store (``db=``/``store=``, as `DeltaMemChat` takes it); the app adds the
routes (chat_routes.py, session_routes.py), OpenAI-shaped errors (errors.py) and a request-body limit
(limits.py). ``GET /health`` answers ``{"status": "ok"}`` for load balancers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from . import chat_routes, session_routes
from .engine import ChatEngine
from .errors import install_error_handlers
from .limits import BodyLimit

if TYPE_CHECKING:
    from ..chat import DeltaMemChat

__all__ = ["create_app", "DEFAULT_MAX_BODY_BYTES"]

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


def create_app(chat: "DeltaMemChat | None" = None, *, engine: ChatEngine | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, busy_timeout: float = 2.0,
               default_max_tokens: int = 256, max_tokens_cap: int = 4096) -> FastAPI:
    """The API app for ``chat`` (or a ready ``engine``).

    ``max_body_bytes``: larger request bodies are answered 413; ``busy_timeout``: seconds a request waits
    for a turn running on the same session before a 409; ``default_max_tokens``: the reply length when a
    request sets none; ``max_tokens_cap``: larger ``max_tokens`` are refused (400)."""
    if (chat is None) == (engine is None):
        raise ValueError("pass exactly one of chat= or engine=")
    app = FastAPI(title="deltamem-agents", summary="OpenAI-compatible chat with a persistent δ-memory per session")
    app.state.engine = engine if engine is not None else ChatEngine(chat, busy_timeout=busy_timeout)
    app.state.started = int(time.time())
    app.state.settings = {"default_max_tokens": default_max_tokens, "max_tokens_cap": max_tokens_cap}
    install_error_handlers(app)
    app.include_router(chat_routes.router)
    app.include_router(session_routes.router)
    app.add_api_route("/health", _health, methods=["GET"])
    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)
    return app


def _health() -> dict[str, Any]:
    return {"status": "ok"}
