"""`deltamem-agents bench ...` and `deltamem-agents eval ...`: the benchmark harness and the memory probes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import ints, log_progress, names

bench_app = typer.Typer(help="Benchmark δ-mem against window, RAG, full-context and no-history baselines.")
eval_app = typer.Typer(no_args_is_help=True, help="Memory probes: recall with controls, reply preservation, "
                                                 "paired comparisons.")

BENCH_TASKS = ("synthetic-distance", "synthetic-capacity", "synthetic-update", "synthetic-vartrack", "babi", "locomo",
               "capability", "openset-distance", "openset-newrel", "openset-hand", "openset-tool", "openset-multi")
BENCH_BACKENDS = ("floor", "window", "full", "rag", "deltamem", "deltamem_rag", "deltamem_shuffled",
                  "deltamem_frozen", "deltamem_rag_shuffled", "fact")


@bench_app.callback(invoke_without_command=True)
def bench(ctx: typer.Context,
          tasks: str = typer.Option(",".join(BENCH_TASKS), help="comma list of tasks"),
          backends: str = typer.Option(",".join(BENCH_BACKENDS), help="comma list of backends"),
          budget: int = typer.Option(512, help="visible-token budget shared by every backend"),
          adapter: str = typer.Option("default", help="adapter dir, 'default' (shipped) or 'none'"),
          model: Optional[str] = typer.Option(None, help="backbone: a local HF model dir (default: the offline "
                                                         "SmolLM2-135M-Instruct)"),
          lora: Optional[Path] = typer.Option(None, help="run a LoRA control (a dir from `python -m lab "
                                                         "train-lora-control`), with "
                                                         "--adapter none or δ-mem stacked on it; rows are named "
                                                         "lora_<backend>"),
          out: Path = typer.Option(Path("runs/bench/default"), help="run directory (rows.jsonl, report.md, plots/)"),
          limit: Optional[int] = typer.Option(None, help="items per cell (distance, n_facts, bAbI task, LoCoMo "
                                                         "conversation x category, ...)"),
          seed: int = 0,
          distances: str = typer.Option("0,250,500,1000,2000,4000", help="synthetic-distance fact distances"),
          n_facts: str = typer.Option("1,2,4,8,16,32", help="synthetic-capacity fact counts"),
          hops: str = typer.Option("0,1,2,3", help="synthetic-vartrack chain links between the code and the asked "
                                                "locker"),
          openset_distances: str = typer.Option("500,2000", help="openset-distance/-newrel/-hand: tokens of "
                                                                  "chit-chat after the fact"),
          openset_n_facts: str = typer.Option("3,4,5,6,7,8", help="openset-multi: facts in one history"),
          full_budget: int = typer.Option(8192, help="budget of the in-window conditions and the full backend"),
          locomo: Optional[Path] = typer.Option(None, help="LoCoMo JSON (default "
                                                           "$DELTAMEM_DATA/locomo/locomo_dev.json)"),
          babi_dir: Optional[Path] = typer.Option(None, help="bAbI 'en' dir (default $DELTAMEM_BABI_DIR, else "
                                                         "../shared/data/babi/en)"),
          rag_k: int = 3, rag_share: float = typer.Option(1 / 3, help="budget fraction for retrieved messages"),
          rag_scope: str = typer.Option("evicted", help="what RAG searches: 'evicted' (messages that left its "
                                                       "window) or 'all' (every earlier message, as a vector-"
                                                       "store memory beside a buffer does; for in-window runs)"),
          conditions: str = typer.Option("in_window,out_of_window",
                                         help="synthetic-distance/-update/-vartrack conditions"),
          value_kinds: str = typer.Option("", help="synthetic-distance/-update: only answers of these value kinds, "
                                                   "e.g. colour,food,sport,drink (default: all)"),
          max_new_tokens: Optional[int] = typer.Option(None, help="override each task's answer length"),
          threads: int = 2, progress: bool = True,
          report: bool = typer.Option(True, help="write report.md and plots/ at the end")):
    """Benchmark tasks x backends into OUT/rows.jsonl (resumable), then a markdown report with plots.

    `deltamem-agents bench report OUT` rebuilds the report from the rows."""
    if ctx.invoked_subcommand is not None:
        return
    from ..bench.report import write_report
    from ..bench.runner import BenchConfig, run_bench
    from ..bench.tasks import TaskConfig

    log_progress()
    tcfg = TaskConfig(limit=limit, seed=seed, full_budget=full_budget, distances=ints(distances),
                      n_facts=ints(n_facts), vartrack_hops=ints(hops), conditions=names(conditions),
                      openset_distances=ints(openset_distances), openset_n_facts=ints(openset_n_facts),
                      value_kinds=names(value_kinds) or None, babi_dir=str(babi_dir) if babi_dir else None,
                      locomo_path=str(locomo) if locomo else None)
    cfg = BenchConfig(out=out, tasks=names(tasks), backends=names(backends), budget=budget, adapter=adapter,
                      model=model,
                      lora=str(lora) if lora else None,
                      rag_k=rag_k, rag_share=rag_share, rag_scope=rag_scope, max_new_tokens=max_new_tokens,
                      threads=threads,
                      progress=progress, task=tcfg)
    rows = run_bench(cfg)
    if report:
        typer.echo(write_report(rows, out))


@bench_app.command("report")
def bench_report(run: Path = typer.Argument(..., help="run directory (or its rows.jsonl)"),
                 out_dir: Optional[Path] = typer.Option(None, help="where report.md and plots/ go (default: RUN)")):
    """Markdown tables (bootstrap 95% CIs, paired differences) and PNG plots from a run's rows."""
    from ..bench.report import write_report

    rows = run / "rows.jsonl" if run.is_dir() else run
    typer.echo(write_report(rows, out_dir or rows.parent))


@bench_app.command("merge")
def bench_merge(out: Path = typer.Argument(..., help="new run directory for the merged rows"),
                runs: list[Path] = typer.Argument(..., help="two or more run directories made with the same settings "
                                                            "(e.g. the same bench split by --backends)"),
                report: bool = typer.Option(True, help="write report.md and plots/ into OUT")):
    """Join runs of one benchmark split over processes: one row per (task, item, backend), settings checked."""
    from ..bench.merge_runs import merge_runs
    from ..bench.report import write_report

    try:
        m = merge_runs(runs, out)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"{m.rows} rows into {out} ({m.duplicates} duplicates dropped, {m.disagreeing} with another score)")
    if report:
        typer.echo(write_report(out / "rows.jsonl", out))


@bench_app.command("compare")
def bench_compare(arms: list[str] = typer.Argument(..., help="LABEL=RUN:BACKEND or LABEL=RUN:BACKEND-CONTROL (the "
                                                             "per-item difference, e.g. deltamem-deltamem_shuffled "
                                                             "= memory), two or more; the first is the reference"),
                  by: Optional[str] = typer.Option(None, help="group by this row field (n_facts, distance, ...); "
                                                              "default: the report's cells"),
                  plot: Optional[Path] = typer.Option(None, help="also write score vs --by per arm (PNG)"),
                  title: str = typer.Option("", help="the plot's title")):
    """Paired differences between backends of different bench runs on the same seeded items (e.g. two adapters)."""
    from ..bench.compare_runs import Arm, compare_runs, plot_runs

    try:
        parsed = [Arm.parse(a) for a in arms]
        typer.echo(compare_runs(parsed, by=by))
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if plot is not None:
        if by is None:
            raise typer.BadParameter("--plot needs --by (a numeric row field)")
        typer.echo(f"plot: {plot_runs(parsed, plot, by=by, title=title or f'score vs {by}')}")


@eval_app.command("harm")
def eval_harm(adapter: str = "default",
              model: Optional[str] = typer.Option(None, help="backbone: a local HF model dir"),
              n: int = 40, distance: int = 150, budget: int = 128, seed: int = 0,
              out: Path = typer.Option(Path("runs/eval-harm.jsonl")), threads: int = 2,
              value_kinds: str = typer.Option("colour,food,sport,drink", help="kinds of the histories' facts"),
              max_new_tokens: int = 24,
              lora: Optional[Path] = typer.Option(None, help="also score a LoRA control's replies "
                                                             "(a dir from `python -m lab train-lora-control`) "
                                                             "against the backbone's")):
    """Reply preservation: chit-chat questions after fact-bearing histories; δ-mem's replies vs the backbone's."""
    from ..bench.run_harm import run_harm

    run_harm(adapter=adapter, n=n, distance=distance, budget=budget, out=out, seed=seed, threads=threads,
             value_kinds=[k.strip() for k in value_kinds.split(",") if k.strip()] or None,
             max_new_tokens=max_new_tokens, lora=str(lora) if lora else None, model_dir=model)


@eval_app.command("compare")
def eval_compare(arms: list[str] = typer.Argument(..., help="LABEL=ROWS.jsonl[,MORE.jsonl...]:CONDITION, two or "
                                                             "more; the first is the reference of every difference"),
                 plot: Optional[Path] = typer.Option(None, help="also write accuracy vs distance per arm (PNG)"),
                 title: str = typer.Option("accuracy vs fact distance", help="the plot's title"),
                 score: str = typer.Option("correct", help="row field compared: correct | says_old (update probes)")):
    """Paired differences between `eval memory` runs on the same seeded episodes (e.g. δ-mem vs the LoRA control)."""
    from ..bench.run_probe import compare, plot_arms

    parsed = []
    for a in arms:
        label, _, rest = a.partition("=")
        paths, _, cond = rest.rpartition(":")
        files = [Path(p) for p in paths.split(",") if p]
        if not label or not files or not cond:
            raise typer.BadParameter(f"{a!r}: expected LABEL=ROWS.jsonl[,MORE.jsonl...]:CONDITION")
        parsed.append((label, files, cond))
    if len(parsed) < 2:
        raise typer.BadParameter("give at least two arms")
    if score not in ("correct", "says_old"):
        raise typer.BadParameter(f"--score must be correct or says_old, got {score!r}")
    typer.echo(compare(parsed, score=score))
    if plot is not None:
        typer.echo(f"plot: {plot_arms(parsed, plot, title=title)}")


@eval_app.command("memory")
def eval_memory(adapter: str = "default",
                model: Optional[str] = typer.Option(None, help="backbone: a local HF model dir"),
                n: int = 100, distances: str = "500,1000,2000,4000",
                budget: int = 384, out: Path = typer.Option(Path("runs/eval-memory.jsonl")), seed: int = 0,
                conditions: str = "window,deltamem,shuffled,counterfactual,empty,full", split: str = "heldout",
                kind: str = "fact", threads: int = 2,
                value_kinds: str = typer.Option("", help="only answers of these value kinds, e.g. 'closed' (the "
                                                         "value pools) or colour,food,job"),
                max_new_tokens: int = typer.Option(16, help="greedy answer length; verbose answers (the backbone "
                                                            "with the full history) need more to reach the value"),
                lora: Optional[Path] = typer.Option(None, help="evaluate a LoRA control (`python -m lab "
                                                               "train-lora-control`) instead "
                                                               "of δ-mem: --adapter none --conditions window[,full]")):
    """Memory probe: fact at each distance before the question, outside the visible window (or inside it, with a
    budget that holds the whole history)."""
    from ..bench.run_probe import run_probe

    kinds = None
    if value_kinds == "closed":
        from ..datasets.pools import POOLS

        kinds = [k for k in POOLS if k != "city"]
    elif value_kinds:
        kinds = [k.strip() for k in value_kinds.split(",") if k.strip()]
    run_probe(adapter=adapter, n=n, distances=[int(d) for d in distances.split(",")], budget=budget, out=out,
              seed=seed, conditions=conditions.split(","), split=split, kind=kind, threads=threads,
              value_kinds=kinds, max_new_tokens=max_new_tokens, lora=str(lora) if lora else None, model_dir=model)
