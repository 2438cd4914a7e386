"""`deltamem-agents serve`: the OpenAI-compatible HTTP server (deltamem_agents/serve, docs/serving.md)."""

from __future__ import annotations

from typing import Optional

import typer

from .chat import DB_HELP


def serve(host: str = typer.Option("127.0.0.1", help="address to listen on"),
          port: int = typer.Option(8000, help="port to listen on"),
          db: Optional[str] = typer.Option(None, help=DB_HELP + "; or a store URL: postgresql://..., "
                                                              "sqlite:///PATH, memory://"),
          adapter: str = typer.Option("default", help="adapter dir, 'default' (shipped) or 'none'"),
          model: Optional[str] = typer.Option(None, help="backbone: a local Hugging Face model dir (default: the "
                                                         "offline SmolLM2-135M-Instruct)"),
          max_body_bytes: int = typer.Option(4 * 1024 * 1024, help="larger request bodies are answered 413"),
          budget: Optional[int] = typer.Option(None, help="visible-window token budget (default 2048)"),
          reserve: Optional[int] = typer.Option(None, help="window tokens kept free for the reply (default 256)"),
          busy_timeout: float = typer.Option(2.0, help="seconds a request waits for a turn running on the same "
                                                       "session before answering 409"),
          default_max_tokens: int = typer.Option(256, help="reply length when a request sets no max_tokens"),
          max_batch: int = typer.Option(1, min=1, help="decode up to N concurrent turns on different sessions "
                                                        "together, one forward per step (1: each turn alone)"),
          batch_wait_ms: float = typer.Option(5.0, min=0.0, help="with --max-batch > 1: milliseconds a turn waits "
                                                                 "for others to join its batch"),
          log_level: str = typer.Option("info", help="uvicorn log level")):
    """Serve the chat model over the OpenAI chat-completions API, one δ-memory per session."""
    import uvicorn

    from ..chat.model import DeltaMemChat
    from ..serve import create_app

    chat = DeltaMemChat.from_pretrained(model, adapter=adapter, db=db, budget=budget, reserve=reserve,
                                        max_batch=max_batch,
                                        batch_wait_ms=batch_wait_ms)  # db: as DeltaMemChat takes it
    app = create_app(chat, max_body_bytes=max_body_bytes, busy_timeout=busy_timeout,
                     default_max_tokens=default_max_tokens)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        chat.close()
