"""`deltamem-agents demo | chat | sessions ...`: the chat model from the terminal, and its session database.

The `sessions` commands open the store alone (no model weights are loaded to list, show, fork, delete,
export or import a session).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

sessions_app = typer.Typer(no_args_is_help=True, help="Inspect and manage persistent chat sessions (no model load).")

DB_HELP = "session database (default: sessions.db under the cache dir)"
DB_OR_URL_HELP = DB_HELP + "; or a store URL: postgresql://..., sqlite:///PATH, memory://"


def _store(db: Optional[str]):
    from ..backbone import cache_dir
    from ..runtime.store_url import open_store

    return open_store(db or cache_dir() / "sessions.db")


def demo(adapter: str = typer.Option("default", help="adapter dir, 'default' (shipped) or 'none'"),
         budget: int = typer.Option(192, help="visible-window token budget (small, so facts leave the window)")):
    """Built-in multi-session scenario: δ-mem vs the same window without memory, side by side."""
    from ..demo import run_demo

    run_demo(adapter=adapter, budget=budget)


def chat(session: str = typer.Option("default", "--session", "-s"), adapter: str = "default",
         model: Optional[str] = typer.Option(None, help="backbone: a local Hugging Face model dir (default: the "
                                                        "offline SmolLM2-135M-Instruct)"),
         db: Optional[str] = typer.Option(None, help=DB_OR_URL_HELP), max_new_tokens: int = 128):
    """Interactive streaming chat; the session's memory persists across restarts."""
    from ..chat.model import DeltaMemChat

    bot = DeltaMemChat.from_pretrained(model, adapter=adapter, store=_store(db))
    typer.echo(f"session {session!r} ({len(bot.history(session))} earlier messages). Ctrl-D to quit.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            continue
        sys.stdout.write("bot> ")
        for chunk in bot.stream(line, session_id=session, max_new_tokens=max_new_tokens):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        sys.stdout.write("\n")


@sessions_app.command("list")
def sessions_list(db: Optional[str] = typer.Option(None, help=DB_OR_URL_HELP), prefix: Optional[str] = None):
    """Session ids, optionally only those starting with PREFIX."""
    for sid in _store(db).list(prefix):
        typer.echo(sid)


@sessions_app.command("show")
def sessions_show(session: str, db: Optional[str] = typer.Option(None, help=DB_OR_URL_HELP)):
    """A session's message log and the norm of its δ-state per layer."""
    from ..core.state import DeltaState

    rec = _store(db).get(session)
    if rec is None:
        raise typer.BadParameter(f"no session {session!r}")
    for m in rec.messages:
        typer.echo(f"{m['role']:>9}: {m.get('content', '')}")
    if rec.state is not None:
        st, _ = DeltaState.from_bytes(rec.state)
        typer.echo("state norm per layer: " + " ".join(f"{x:.3f}" for x in st.norms().tolist()))


@sessions_app.command("fork")
def sessions_fork(src: str, dst: str, db: Optional[str] = typer.Option(None, help=DB_OR_URL_HELP)):
    """Copy session SRC (state, log, metadata) to a new session DST."""
    _store(db).fork(src, dst)


@sessions_app.command("delete")
def sessions_delete(session: str, db: Optional[str] = typer.Option(None, help=DB_OR_URL_HELP)):
    """Delete a session: its state, log and metadata."""
    typer.echo("deleted" if _store(db).delete(session) else "no such session")


@sessions_app.command("export")
def sessions_export(session: str, path: Path, db: Optional[str] = typer.Option(None, help=DB_OR_URL_HELP)):
    """Write one session to a file (JSON + safetensors state)."""
    typer.echo(str(_store(db).export_session(session, path)))


@sessions_app.command("import")
def sessions_import(path: Path, session: Optional[str] = None, db: Optional[str] = typer.Option(None, help=DB_OR_URL_HELP),
                    overwrite: bool = False):
    """Read a session exported with `sessions export` (validated before anything is written)."""
    typer.echo(_store(db).import_session(path, session, overwrite=overwrite).session_id)
