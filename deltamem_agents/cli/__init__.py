"""The `deltamem-agents` command line: demo, chat, serve, sessions, train, bench, eval.

    deltamem-agents demo                                  # the side-by-side memory demo
    deltamem-agents chat --session alice                  # interactive chat with a persistent δ-memory
    deltamem-agents serve --port 8000 --db sessions.db    # OpenAI-compatible HTTP server (docs/serving.md)
    deltamem-agents sessions list|show|fork|delete|export|import
    deltamem-agents train --out-dir runs/my-adapter ...   # options generated from TrainConfig / DeltaMemConfig
    deltamem-agents bench --tasks ... --backends ...      # + bench report|merge|compare
    deltamem-agents eval memory|harm|compare
    deltamem-agents import-adapter UPSTREAM_DIR --out DIR --model PATH   # a released upstream adapter

Research tools (ablation surgery, selector fits, the LoRA control, shipping an adapter) are in `lab/`:
`python -m lab --help` from a source checkout.
"""

from __future__ import annotations

import typer

from .adapters import import_adapter
from .bench import bench_app, eval_app
from .chat import chat, demo, sessions_app
from .serve import serve
from .train import make_train_command

app = typer.Typer(add_completion=False, no_args_is_help=True, help="δ-mem memory for local LLM agents.")
app.command()(demo)
app.command()(chat)
app.command()(serve)
app.add_typer(sessions_app, name="sessions")
app.command("train")(make_train_command())
app.add_typer(bench_app, name="bench")
app.add_typer(eval_app, name="eval")
app.command("import-adapter")(import_adapter)


def main() -> None:  # pragma: no cover
    app()


__all__ = ["app", "main"]
