"""The `deltamem-agents` command line: demo, chat, sessions, train, eval-memory."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="δ-mem memory for local LLM agents.")
sessions_app = typer.Typer(no_args_is_help=True, help="Inspect and manage persistent chat sessions.")
app.add_typer(sessions_app, name="sessions")


def _chat(adapter: str, db: Optional[Path]):
    from .chat.model import DeltaMemChat
    from .runtime.store import SessionStore, SQLiteBackend

    store = SessionStore(SQLiteBackend(db)) if db else None
    return DeltaMemChat.from_default(adapter=adapter, store=store)


@app.command()
def demo(adapter: str = typer.Option("default", help="adapter dir, 'default' (shipped) or 'none'"),
         budget: int = typer.Option(192, help="visible-window token budget (small, so facts leave the window)")):
    """Built-in multi-session scenario: δ-mem vs the same window without memory, side by side."""
    from .demo import run_demo

    run_demo(adapter=adapter, budget=budget)


@app.command()
def chat(session: str = typer.Option("default", "--session", "-s"), adapter: str = "default",
         db: Optional[Path] = typer.Option(None, help="session database (default: under the cache dir)"),
         max_new_tokens: int = 128):
    """Interactive streaming chat; the session's memory persists across restarts."""
    bot = _chat(adapter, db)
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
def sessions_list(db: Optional[Path] = None, prefix: Optional[str] = None):
    bot = _chat("default", db)
    for sid in bot.sessions(prefix):
        typer.echo(sid)


@sessions_app.command("show")
def sessions_show(session: str, db: Optional[Path] = None):
    bot = _chat("default", db)
    for m in bot.history(session):
        typer.echo(f"{m['role']:>9}: {m.get('content', '')}")
    st = bot.state(session)
    if st is not None:
        typer.echo("state norm per layer: " + " ".join(f"{x:.3f}" for x in st.norms().tolist()))


@sessions_app.command("fork")
def sessions_fork(src: str, dst: str, db: Optional[Path] = None):
    _chat("default", db).fork(src, dst)


@sessions_app.command("delete")
def sessions_delete(session: str, db: Optional[Path] = None):
    typer.echo("deleted" if _chat("default", db).delete(session) else "no such session")


@sessions_app.command("export")
def sessions_export(session: str, path: Path, db: Optional[Path] = None):
    typer.echo(str(_chat("default", db).export_session(session, path)))


@sessions_app.command("import")
def sessions_import(path: Path, session: Optional[str] = None, db: Optional[Path] = None, overwrite: bool = False):
    typer.echo(_chat("default", db).import_session(path, session, overwrite=overwrite))


@app.command()
def train(out_dir: Path = typer.Option(Path("runs/adapter")), steps: int = 600, grad_accum: int = 4,
          lr: float = 1e-3, granularity: str = "message_mean", rank: int = 8, heads: int = 1,
          beta_bias_init: float = -3.0, target_layers: str = "", babi_dir: Optional[Path] = None,
          max_minutes: Optional[float] = None, seed: int = 0, threads: int = 2, bf16: bool = True,
          contrast_weight: float = 0.0, contrast_margin: float = 1.0):
    """Train (or resume) a δ-mem adapter on the default backbone; checkpoints in OUT_DIR/checkpoint-last."""
    import torch

    from .backbone import load_backbone
    from .train.trainer import TrainConfig, Trainer

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(threads)
    layers = [int(x) for x in target_layers.split(",") if x.strip()]
    delta = {"write_granularity": granularity, "rank": rank, "num_state_heads": heads,
             "beta_bias_init": beta_bias_init, "target_layers": layers}
    cfg = TrainConfig(out_dir=str(out_dir), steps=steps, grad_accum=grad_accum, lr=lr, delta=delta, seed=seed,
                      max_minutes=max_minutes, bf16=bf16, contrast_weight=contrast_weight,
                      contrast_margin=contrast_margin,
                      sampler={"babi_dir": str(babi_dir) if babi_dir else None})
    model, tok = load_backbone()
    Trainer(model, tok, cfg).train()


@app.command("eval-memory")
def eval_memory(adapter: str = "default", n: int = 100, distances: str = "500,1000,2000,4000",
                budget: int = 384, out: Path = typer.Option(Path("runs/eval-memory.jsonl")), seed: int = 0,
                conditions: str = "window,deltamem,shuffled,empty,full", split: str = "heldout",
                kind: str = "fact", threads: int = 2):
    """Memory probe: fact at each distance before the question, outside the visible window."""
    from .bench.run_probe import run_probe

    run_probe(adapter=adapter, n=n, distances=[int(d) for d in distances.split(",")], budget=budget, out=out,
              seed=seed, conditions=conditions.split(","), split=split, kind=kind, threads=threads)


@app.command("ship-adapter")
def ship_adapter(checkpoint: Path, eval_md: Optional[Path] = typer.Option(None, "--eval"),
                 command: str = typer.Option("", help="the eval command, recorded in the model card"),
                 reading: str = typer.Option("", help="the honest one-paragraph reading of the numbers")):
    """Copy a checkpoint's adapter into the package (the default adapter) with a model card."""
    from .train.ship import ship

    typer.echo(str(ship(checkpoint, eval_md, command, reading)))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
