"""The `deltamem-agents` command line: demo, chat, sessions, train, eval-memory, bench."""

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
bench_app = typer.Typer(help="Benchmark δ-mem against window, RAG, full-context and no-history baselines.")
app.add_typer(bench_app, name="bench")
BENCH_TASKS = ("synthetic-distance", "synthetic-capacity", "synthetic-update", "babi", "locomo", "capability")
BENCH_BACKENDS = ("floor", "window", "full", "rag", "deltamem", "deltamem_rag", "deltamem_shuffled")


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
                conditions: str = "window,deltamem,shuffled,counterfactual,empty,full", split: str = "heldout",
                kind: str = "fact", threads: int = 2,
                value_kinds: str = typer.Option("", help="only answers of these value kinds, e.g. 'closed' (the "
                                                         "value pools) or colour,food,job"),
                max_new_tokens: int = typer.Option(16, help="greedy answer length; verbose answers (the backbone "
                                                            "with the full history) need more to reach the value")):
    """Memory probe: fact at each distance before the question, outside the visible window."""
    from .bench.run_probe import run_probe

    kinds = None
    if value_kinds == "closed":
        from .datasets.pools import POOLS

        kinds = [k for k in POOLS if k != "city"]
    elif value_kinds:
        kinds = [k.strip() for k in value_kinds.split(",") if k.strip()]
    run_probe(adapter=adapter, n=n, distances=[int(d) for d in distances.split(",")], budget=budget, out=out,
              seed=seed, conditions=conditions.split(","), split=split, kind=kind, threads=threads,
              value_kinds=kinds, max_new_tokens=max_new_tokens)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


@bench_app.callback(invoke_without_command=True)
def bench(ctx: typer.Context,
          tasks: str = typer.Option(",".join(BENCH_TASKS), help="comma list of tasks"),
          backends: str = typer.Option(",".join(BENCH_BACKENDS), help="comma list of backends"),
          budget: int = typer.Option(512, help="visible-token budget shared by every backend"),
          adapter: str = typer.Option("default", help="adapter dir, 'default' (shipped) or 'none'"),
          out: Path = typer.Option(Path("runs/bench/default"), help="run directory (rows.jsonl, report.md, plots/)"),
          limit: Optional[int] = typer.Option(None, help="items per cell (distance, n_facts, bAbI task, LoCoMo "
                                                         "conversation x category, ...)"),
          seed: int = 0,
          distances: str = typer.Option("0,250,500,1000,2000,4000", help="synthetic-distance fact distances"),
          n_facts: str = typer.Option("1,2,4,8,16,32", help="synthetic-capacity fact counts"),
          full_budget: int = typer.Option(8192, help="budget of the in-window conditions and the full backend"),
          locomo: Optional[Path] = typer.Option(None, help="LoCoMo JSON (default $DELTAMEM_DATA/locomo/locomo_dev.json)"),
          babi_dir: Optional[Path] = typer.Option(None, help="bAbI 'en' dir (default $DELTAMEM_BABI_DIR, else "
                                                         "../shared/data/babi/en)"),
          rag_k: int = 3, rag_share: float = typer.Option(1 / 3, help="budget fraction for retrieved messages"),
          max_new_tokens: Optional[int] = typer.Option(None, help="override each task's answer length"),
          threads: int = 2, progress: bool = True,
          report: bool = typer.Option(True, help="write report.md and plots/ at the end")):
    """Benchmark tasks x backends into OUT/rows.jsonl (resumable), then a markdown report with plots.

    `deltamem-agents bench report OUT` rebuilds the report from the rows."""
    if ctx.invoked_subcommand is not None:
        return
    from .bench.report import write_report
    from .bench.runner import BenchConfig, run_bench
    from .bench.tasks import TaskConfig

    logging.basicConfig(level=logging.INFO)
    tcfg = TaskConfig(limit=limit, seed=seed, full_budget=full_budget, distances=_ints(distances),
                      n_facts=_ints(n_facts), babi_dir=str(babi_dir) if babi_dir else None,
                      locomo_path=str(locomo) if locomo else None)
    cfg = BenchConfig(out=out, tasks=_names(tasks), backends=_names(backends), budget=budget, adapter=adapter,
                      rag_k=rag_k, rag_share=rag_share, max_new_tokens=max_new_tokens, threads=threads,
                      progress=progress, task=tcfg)
    rows = run_bench(cfg)
    if report:
        typer.echo(write_report(rows, out))


@bench_app.command("report")
def bench_report(run: Path = typer.Argument(..., help="run directory (or its rows.jsonl)"),
                 out_dir: Optional[Path] = typer.Option(None, help="where report.md and plots/ go (default: RUN)")):
    """Markdown tables (bootstrap 95% CIs, paired differences) and PNG plots from a run's rows."""
    from .bench.report import write_report

    rows = run / "rows.jsonl" if run.is_dir() else run
    typer.echo(write_report(rows, out_dir or rows.parent))


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
