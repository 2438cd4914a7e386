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
BENCH_TASKS = ("synthetic-distance", "synthetic-capacity", "synthetic-update", "synthetic-vartrack", "babi", "locomo",
               "capability")
BENCH_BACKENDS = ("floor", "window", "full", "rag", "deltamem", "deltamem_rag", "deltamem_shuffled",
                  "deltamem_frozen", "deltamem_rag_shuffled")


def _chat(adapter: str, db: Optional[Path]):
    from .chat.model import DeltaMemChat
    from .runtime.store import SessionStore, SQLiteBackend

    store = SessionStore(SQLiteBackend(db)) if db else None
    return DeltaMemChat.from_default(adapter=adapter, store=store)


def _log_progress() -> None:
    """Our INFO lines (rows done, checkpoints) on stderr; other libraries' (faiss, ...) only from WARNING."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("deltamem_agents").setLevel(logging.INFO)


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


def _mix(text: str) -> dict[str, float] | None:
    """'fact=0.6,update=0.2' -> {'fact': 0.6, 'update': 0.2}; '' -> None (the sampler's default mix)."""
    pairs = [x.split("=") for x in text.split(",") if x.strip()]
    return {k.strip(): float(v) for k, v in pairs} if pairs else None


@app.command()
def train(out_dir: Path = typer.Option(Path("runs/adapter")), steps: int = 600, grad_accum: int = 4,
          lr: float = 1e-3, granularity: str = "message_mean", rank: int = 8, heads: int = 1,
          beta_bias_init: float = -3.0, target_layers: str = "", babi_dir: Optional[Path] = None,
          max_minutes: Optional[float] = None, seed: int = 0, threads: int = 2, bf16: bool = True,
          contrast_weight: float = 0.0, contrast_margin: float = 1.0,
          center_inputs: bool = typer.Option(False, help="centre the memory inputs (calibrated once)"),
          write_threshold: Optional[float] = typer.Option(None, help="selective token writes: tokens with β̄ below "
                                                                     "it are not written (0 = dense)"),
          update_mode: Optional[str] = typer.Option(None, help="state_update_mode: standard|lambda_outside|no_lambda"),
          task_rank: Optional[int] = typer.Option(None, help="rank of a state-independent task path (LoRA on q/o) "
                                                             "trained beside the state path (0 = none, the spec)"),
          task_alpha: Optional[float] = typer.Option(None, help="the task path's alpha (scaling alpha/rank)"),
          init_adapter: Optional[Path] = typer.Option(None, help="start from this adapter (dir or checkpoint dir) in "
                                                     "its own config; --write-threshold/--update-mode/--task-rank "
                                                     "override it (a task path it lacks starts fresh)"),
          writes: str = typer.Option("runtime", help="runtime (the session runtime's writes) | value_only (only the "
                                                     "asked value's tokens, nothing in the final pass; token writes)"),
          counterfactual: bool = typer.Option(False, help="train fact episodes beside their counterfactual twins"),
          recency_weight: float = typer.Option(0.0, help="update episodes: relu(margin - (CE of the old value's "
                                                         "answer - CE of the new one)), same state (0 = off)"),
          recency_margin: float = 1.0,
          preserve_weight: float = typer.Option(0.0, help="KL(backbone || δ-mem) on the final pass's non-answer "
                                                          "tokens: a state leaves text it is not about unchanged"),
          chat_frac: float = typer.Option(0.0, help="share of episodes ending in a chit-chat question, trained on "
                                                    "the preservation KL of the whole reply (needs --preserve-weight)"),
          gate_weight: float = 0.0, gate_level: str = "message", gate_hi: float = 0.5, gate_lo: float = 0.02,
          gate_superseded_weight: float = typer.Option(0.0, help="token gates: weight of an update's re-mentions "
                                                       "of the old value as negatives of their own (0: none)"),
          freeze_gates: bool = typer.Option(False, help="keep the write gates as initialised (e.g. fitted by "
                                                        "benchmarks/fit_gates_convex.py); needs --gate-weight 0"),
          lr_schedule: str = typer.Option("cosine", help="cosine | constant (after the warm-up)"),
          warmup_frac: float = 0.05,
          max_grad_norm: float = typer.Option(1.0, help="gradient clipping (<= 0: none)"),
          mix: str = typer.Option("", help="episode kinds, e.g. fact=1 or fact=0.6,update=0.2,multi=0.2"),
          value_kinds: str = typer.Option("", help="only answers of these value kinds, e.g. colour,food,sport,drink"),
          in_window_frac: float = 0.2,
          budget_range: str = typer.Option("160,448", help="window budgets drawn per episode (min,max)"),
          distance_range: str = typer.Option("150,1500", help="curriculum: extra fact distance beyond 0.6 x budget, "
                                                              "from start to end"),
          diag_every: int = 25, diag_episodes: int = 8, diag_budget: int = 256, diag_distance: int = 400,
          ckpt_every_min: float = 10.0,
          stop_at: Optional[int] = typer.Option(None, help="pause after this step (checkpoint saved, schedule still "
                                                           "that of --steps); resume with the same command"),
          snapshot_every: int = typer.Option(0, help="also keep the adapter of every N-th step in "
                                                     "OUT_DIR/adapter-step{N} (0 = none)"),
          backbone: str = typer.Option("default", help="backbone: 'default' or a local HF model dir")):
    """Train (or resume) a δ-mem adapter on a frozen backbone; checkpoints in OUT_DIR/checkpoint-last.

    The selective-write recipe (docs/training.md) is stage 1 `--writes value_only` and stage 4 `--init-adapter`
    with `--counterfactual --contrast-weight`."""
    import torch

    from .backbone import load_backbone
    from .train.trainer import TrainConfig, Trainer

    _log_progress()
    torch.set_num_threads(threads)
    overrides = {k: v for k, v in (("write_threshold", write_threshold), ("state_update_mode", update_mode),
                                   ("task_rank", task_rank), ("task_alpha", task_alpha)) if v is not None}
    if init_adapter:
        from .train.adapter_files import delta_from_adapter

        delta = delta_from_adapter(init_adapter, **overrides)
    else:
        from .core.config import parse_layer_spec

        layers = list(parse_layer_spec(target_layers))
        delta = {"write_granularity": granularity, "rank": rank, "num_state_heads": heads,
                 "beta_bias_init": beta_bias_init, "target_layers": layers, "center_inputs": center_inputs,
                 **overrides}
    budgets, dists = _ints(budget_range), _ints(distance_range)
    sampler = {"babi_dir": str(babi_dir) if babi_dir else None, "mix": _mix(mix),
               "value_kinds": list(_names(value_kinds)) or None, "in_window_frac": in_window_frac,
               "budget_range": budgets, "distance_start": dists[0], "distance_end": dists[1]}
    cfg = TrainConfig(out_dir=str(out_dir), steps=steps, grad_accum=grad_accum, lr=lr, delta=delta, seed=seed,
                      max_minutes=max_minutes, bf16=bf16, contrast_weight=contrast_weight,
                      contrast_margin=contrast_margin, counterfactual=counterfactual, writes=writes,
                      recency_weight=recency_weight, recency_margin=recency_margin,
                      preserve_weight=preserve_weight, chat_frac=chat_frac,
                      init_adapter=str(init_adapter) if init_adapter else None, gate_weight=gate_weight,
                      gate_level=gate_level, gate_hi=gate_hi, gate_lo=gate_lo,
                      gate_superseded_weight=gate_superseded_weight, freeze_gates=freeze_gates,
                      lr_schedule=lr_schedule,
                      warmup_frac=warmup_frac, max_grad_norm=max_grad_norm, diag_every=diag_every,
                      diag_episodes=diag_episodes, diag_budget=diag_budget, diag_distance=diag_distance,
                      ckpt_every_min=ckpt_every_min, stop_at=stop_at, snapshot_every=snapshot_every,
                      sampler=sampler)
    model, tok = load_backbone(backbone)
    Trainer(model, tok, cfg).train()


@app.command("fit-selector")
def fit_selector(out: Path = typer.Option(..., help="the fitted gates (safetensors) for merge-selective"),
                 init_adapter: Optional[Path] = typer.Option(None, help="the stage-1 read path (adapter or "
                                                             "checkpoint dir): its config and input centres are used"),
                 steps: int = 60, batch: int = 4, lr: float = 1e-2,
                 threshold: float = typer.Option(0.5, help="threshold of the before/after report"),
                 hi: float = 0.9, lo: float = 0.01,
                 fit_bias_init: float = typer.Option(-4.6, help="gate bias the fit starts from"),
                 heldout: int = 16, init_gates: Optional[Path] = typer.Option(None, help="continue an earlier fit"),
                 report_thresholds: str = "0.5,0.7,0.8,0.9",
                 value_kinds: str = typer.Option(",".join(("colour", "food", "sport", "drink")),
                                                 help="answer kinds of the fit's episodes ('' = all)"),
                 calibration_episodes: int = typer.Option(16, help="without --init-adapter: episodes whose written "
                                                          "tokens set the input centres"),
                 seed: int = 1, threads: int = 2, progress: bool = True,
                 backbone: str = typer.Option("default", help="backbone: 'default' or a local HF model dir")):
    """Fit only the write gates as a token selector (stage 2 of docs/training.md); prints per-threshold
    recall of value tokens and false-write rate of other tokens on held-out episodes, saves the gates to OUT."""
    import torch

    from .backbone import load_backbone
    from .runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
    from .train.selector_fit import SelectorFitConfig, prepare_selector, run_selector_fit, selector_sampler

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = SelectorFitConfig(steps=steps, batch=batch, lr=lr, threshold=threshold, hi=hi, lo=lo,
                            fit_bias_init=fit_bias_init, heldout=heldout, init_gates=str(init_gates or ""),
                            report_thresholds=tuple(float(x) for x in report_thresholds.split(",") if x.strip()),
                            value_kinds=_names(value_kinds), seed=seed)
    model, tok = load_backbone(backbone)
    model.to(torch.bfloat16)
    renderer = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    calib = None
    if init_adapter is None:
        cal_sampler = selector_sampler(tok, cfg)
        calib = [cal_sampler.sample(10_000_000 + i, 0) for i in range(calibration_episodes)]
    prepare_selector(model, renderer, init_adapter=init_adapter, threshold=threshold, calibration=calib)
    for row in run_selector_fit(model, tok, renderer, cfg, out, progress=progress):
        typer.echo(json.dumps(row))
    typer.echo(f"saved {out}")


@app.command("merge-selective")
def merge_selective_cmd(read_path: Path = typer.Argument(..., help="stage-1 read path: adapter/checkpoint dir or "
                                                         "safetensors file"),
                        gates: Path = typer.Argument(..., help="stage-2 gates (fit-selector --out)"),
                        out: Path = typer.Argument(..., help="the merged adapter dir"),
                        threshold: float = typer.Option(0.5, help="write_threshold τ of the merged adapter"),
                        update_mode: str = typer.Option("standard", help="state_update_mode, e.g. no_lambda"),
                        rank: int = typer.Option(8, help="rank when the read path is a bare weights file"),
                        info: str = typer.Option("", help="free text recorded in the adapter's info"),
                        backbone: str = typer.Option("default", help="backbone: 'default' or a local HF model dir")):
    """Merge a read path and a fitted token selector into one adapter with selective token writes (stage 3)."""
    from .backbone import load_backbone
    from .train.merge import merge_selective

    model, _ = load_backbone(backbone)
    try:
        path, diff = merge_selective(model, read_path, gates, out, threshold=threshold, update_mode=update_mode,
                                     rank=rank, info=info)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"saved {path} (input centres of the two parts differ by {diff:.2e})")


@app.command("eval-harm")
def eval_harm(adapter: str = "default", n: int = 40, distance: int = 150, budget: int = 128, seed: int = 0,
              out: Path = typer.Option(Path("runs/eval-harm.jsonl")), threads: int = 2,
              value_kinds: str = typer.Option("colour,food,sport,drink", help="kinds of the histories' facts"),
              max_new_tokens: int = 24,
              lora: Optional[Path] = typer.Option(None, help="also score a LoRA control's replies "
                                                             "(train-lora-control dir) against the backbone's")):
    """Reply preservation: chit-chat questions after fact-bearing histories; δ-mem's replies vs the backbone's."""
    from .bench.run_harm import run_harm

    run_harm(adapter=adapter, n=n, distance=distance, budget=budget, out=out, seed=seed, threads=threads,
             value_kinds=[k.strip() for k in value_kinds.split(",") if k.strip()] or None,
             max_new_tokens=max_new_tokens, lora=str(lora) if lora else None)


@app.command("eval-compare")
def eval_compare(arms: list[str] = typer.Argument(..., help="LABEL=ROWS.jsonl[,MORE.jsonl...]:CONDITION, two or "
                                                             "more; the first is the reference of every difference"),
                 plot: Optional[Path] = typer.Option(None, help="also write accuracy vs distance per arm (PNG)"),
                 title: str = typer.Option("accuracy vs fact distance", help="the plot's title"),
                 score: str = typer.Option("correct", help="row field compared: correct | says_old (update probes)")):
    """Paired differences between eval-memory runs on the same seeded episodes (e.g. δ-mem vs the LoRA control)."""
    from .bench.run_probe import compare, plot_arms

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


@app.command("eval-memory")
def eval_memory(adapter: str = "default", n: int = 100, distances: str = "500,1000,2000,4000",
                budget: int = 384, out: Path = typer.Option(Path("runs/eval-memory.jsonl")), seed: int = 0,
                conditions: str = "window,deltamem,shuffled,counterfactual,empty,full", split: str = "heldout",
                kind: str = "fact", threads: int = 2,
                value_kinds: str = typer.Option("", help="only answers of these value kinds, e.g. 'closed' (the "
                                                         "value pools) or colour,food,job"),
                max_new_tokens: int = typer.Option(16, help="greedy answer length; verbose answers (the backbone "
                                                            "with the full history) need more to reach the value"),
                lora: Optional[Path] = typer.Option(None, help="evaluate a LoRA control (train-lora-control) instead "
                                                               "of δ-mem: --adapter none --conditions window[,full]")):
    """Memory probe: fact at each distance before the question, outside the visible window (or inside it, with a
    budget that holds the whole history)."""
    from .bench.run_probe import run_probe

    kinds = None
    if value_kinds == "closed":
        from .datasets.pools import POOLS

        kinds = [k for k in POOLS if k != "city"]
    elif value_kinds:
        kinds = [k.strip() for k in value_kinds.split(",") if k.strip()]
    run_probe(adapter=adapter, n=n, distances=[int(d) for d in distances.split(",")], budget=budget, out=out,
              seed=seed, conditions=conditions.split(","), split=split, kind=kind, threads=threads,
              value_kinds=kinds, max_new_tokens=max_new_tokens, lora=str(lora) if lora else None)


@app.command("train-lora-control")
def train_lora_control(out_dir: Path = typer.Option(Path("runs/lora-control")), steps: int = 300,
                       grad_accum: int = 4, lr: float = 1e-3, warmup_frac: float = 0.05, seed: int = 0,
                       rank: int = typer.Option(12, help="12 on q_proj+o_proj matches δ-mem rank 8's parameter count"),
                       counterfactual: bool = True, threads: int = 2, max_minutes: Optional[float] = None,
                       mix: str = typer.Option("", help="episode kinds, as for train"),
                       value_kinds: str = typer.Option("", help="only answers of these value kinds, as for train"),
                       in_window_frac: float = 0.2, budget_range: str = "160,448", distance_range: str = "150,1500",
                       ckpt_every_min: float = 10.0,
                       lr_schedule: str = typer.Option("cosine", help="cosine | constant (after the warm-up)"),
                       max_grad_norm: float = typer.Option(1.0, help="0 = no clipping"),
                       preserve_weight: float = typer.Option(0.0, help="KL(backbone ‖ LoRA) on non-answer tokens, "
                                                                       "as train --preserve-weight"),
                       chat_frac: float = typer.Option(0.0, help="chat-ending episodes (preservation only), "
                                                                 "as train --chat-frac"),
                       keep_steps: str = typer.Option("", help="also keep checkpoint-step<N>/ at these steps, "
                                                              "e.g. 74,189 (snapshots to compare at equal steps)")):
    """Train (or resume) the LoRA control of issue 9: the same sampler's episodes, the prompt only, no state."""
    import torch

    from .backbone import load_backbone
    from .train.lora_control import LoRAControlConfig, LoRAControlTrainer

    _log_progress()
    torch.set_num_threads(threads)
    budgets, dists = _ints(budget_range), _ints(distance_range)
    sampler = {"mix": _mix(mix), "value_kinds": list(_names(value_kinds)) or None, "in_window_frac": in_window_frac,
               "budget_range": budgets, "distance_start": dists[0], "distance_end": dists[1]}
    cfg = LoRAControlConfig(out_dir=str(out_dir), steps=steps, grad_accum=grad_accum, lr=lr, warmup_frac=warmup_frac,
                            seed=seed, rank=rank, alpha=2.0 * rank, counterfactual=counterfactual, sampler=sampler,
                            ckpt_every_min=ckpt_every_min, max_minutes=max_minutes, lr_schedule=lr_schedule,
                            max_grad_norm=max_grad_norm, preserve_weight=preserve_weight, chat_frac=chat_frac,
                            keep_steps=_ints(keep_steps))
    model, tok = load_backbone()
    LoRAControlTrainer(model, tok, cfg).train()


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
          lora: Optional[Path] = typer.Option(None, help="run a LoRA control (train-lora-control dir), with "
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
          full_budget: int = typer.Option(8192, help="budget of the in-window conditions and the full backend"),
          locomo: Optional[Path] = typer.Option(None, help="LoCoMo JSON (default $DELTAMEM_DATA/locomo/locomo_dev.json)"),
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
    from .bench.report import write_report
    from .bench.runner import BenchConfig, run_bench
    from .bench.tasks import TaskConfig

    _log_progress()
    tcfg = TaskConfig(limit=limit, seed=seed, full_budget=full_budget, distances=_ints(distances),
                      n_facts=_ints(n_facts), vartrack_hops=_ints(hops), conditions=_names(conditions),
                      value_kinds=_names(value_kinds) or None, babi_dir=str(babi_dir) if babi_dir else None,
                      locomo_path=str(locomo) if locomo else None)
    cfg = BenchConfig(out=out, tasks=_names(tasks), backends=_names(backends), budget=budget, adapter=adapter,
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
    from .bench.report import write_report

    rows = run / "rows.jsonl" if run.is_dir() else run
    typer.echo(write_report(rows, out_dir or rows.parent))


@bench_app.command("merge")
def bench_merge(out: Path = typer.Argument(..., help="new run directory for the merged rows"),
                runs: list[Path] = typer.Argument(..., help="two or more run directories made with the same settings "
                                                            "(e.g. the same bench split by --backends)"),
                report: bool = typer.Option(True, help="write report.md and plots/ into OUT")):
    """Join runs of one benchmark split over processes: one row per (task, item, backend), settings checked."""
    from .bench.merge_runs import merge_runs
    from .bench.report import write_report

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
    from .bench.compare_runs import Arm, compare_runs, plot_runs

    try:
        parsed = [Arm.parse(a) for a in arms]
        typer.echo(compare_runs(parsed, by=by))
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if plot is not None:
        if by is None:
            raise typer.BadParameter("--plot needs --by (a numeric row field)")
        typer.echo(f"plot: {plot_runs(parsed, plot, by=by, title=title or f'score vs {by}')}")


@app.command("ship-adapter")
def ship_adapter(checkpoint: Path, eval_md: Optional[Path] = typer.Option(None, "--eval"),
                 command: str = typer.Option("", help="the eval command, recorded in the model card"),
                 reading: str = typer.Option("", help="the honest one-paragraph reading of the numbers")):
    """Copy a checkpoint's adapter into the package (the default adapter) with a model card."""
    from .train.ship import ship

    typer.echo(str(ship(checkpoint, eval_md, command, reading)))


@app.command("strip-task-path")
def strip_task_path_cmd(src: Path, dst: Path, note: str = typer.Option("", help="why, kept in the adapter info")):
    """Copy an adapter without its state-independent task path (the state path alone; docs/results.md §14h)."""
    from .patching.adapter_io import strip_task_path

    typer.echo(str(strip_task_path(src, dst, note=note)))


@app.command("add-state-heads")
def add_state_heads_cmd(src: Path, dst: Path, heads: int = typer.Option(4, help="state heads after growing (MSW: 4)"),
                        seed: int = 0, note: str = typer.Option("", help="why, kept in the adapter info")):
    """Copy a token-write adapter grown to more parallel state heads (TSW -> MSW), computing the same until
    trained further (new heads: fresh projections, gates copied, zero output columns; docs/results.md §13)."""
    from .patching.grow import add_state_heads

    typer.echo(str(add_state_heads(src, dst, heads, seed=seed, note=note)))


@app.command("keep-layers")
def keep_layers_cmd(src: Path, dst: Path, layers: str = typer.Option(..., help="backbone layer ids to keep, e.g. 10-29"),
                    note: str = typer.Option("", help="why, kept in the adapter info")):
    """Copy an adapter restricted to a band of layers (the others become the frozen backbone): the start of a
    band-trained ablation arm (docs/results.md §13)."""
    from .core.config import parse_layer_spec
    from .patching.adapter_io import keep_layers

    typer.echo(str(keep_layers(src, dst, parse_layer_spec(layers), note=note)))


@app.command("grow-rank")
def grow_rank_cmd(src: Path, dst: Path, rank: int = typer.Option(16, help="rank after growing (a multiple of the old)"),
                  eps: float = typer.Option(0.05, help="scale of the new q/k/v rows (0 would be a saddle)"),
                  seed: int = 0, note: str = typer.Option("", help="why, kept in the adapter info")):
    """Copy an adapter grown to a larger state rank (8 -> 16), computing nearly the same until trained further
    (new rows eps-small, gates copied block-wise, zero output columns, α scaled with r; docs/results.md §13)."""
    from .patching.grow import grow_rank

    typer.echo(str(grow_rank(src, dst, rank, eps=eps, seed=seed, note=note)))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
