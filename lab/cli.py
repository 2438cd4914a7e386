"""`python -m lab ...`: research tools outside the installed product.

Adapter surgery for ablations (strip-task-path, keep-layers, grow-rank, add-state-heads), the write-selector
recipe's stages (fit-selector, merge-selective), the state-free LoRA control (train-lora-control) and shipping an
adapter into the package (ship-adapter). Experiments live beside it as scripts (lab/*.py, lab/scripts/*.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from deltamem_agents.cli._common import ints, log_progress, names
from deltamem_agents.cli._common import mix as parse_mix

app = typer.Typer(add_completion=False, no_args_is_help=True, help="deltamem-agents research tools (the lab).")


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

    from deltamem_agents.backbone import load_backbone
    from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
    from lab.selector_fit import SelectorFitConfig, prepare_selector, run_selector_fit, selector_sampler

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = SelectorFitConfig(steps=steps, batch=batch, lr=lr, threshold=threshold, hi=hi, lo=lo,
                            fit_bias_init=fit_bias_init, heldout=heldout, init_gates=str(init_gates or ""),
                            report_thresholds=tuple(float(x) for x in report_thresholds.split(",") if x.strip()),
                            value_kinds=names(value_kinds), seed=seed)
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
    from deltamem_agents.backbone import load_backbone
    from lab.merge import merge_selective

    model, _ = load_backbone(backbone)
    try:
        path, diff = merge_selective(model, read_path, gates, out, threshold=threshold, update_mode=update_mode,
                                     rank=rank, info=info)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"saved {path} (input centres of the two parts differ by {diff:.2e})")

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
    """Train (or resume) the LoRA control: the same sampler's episodes, the prompt only, no state."""
    import torch

    from deltamem_agents.backbone import load_backbone
    from lab.lora_control import LoRAControlConfig, LoRAControlTrainer

    log_progress()
    torch.set_num_threads(threads)
    budgets, dists = ints(budget_range), ints(distance_range)
    sampler = {"mix": parse_mix(mix), "value_kinds": list(names(value_kinds)) or None, "in_window_frac": in_window_frac,
               "budget_range": budgets, "distance_start": dists[0], "distance_end": dists[1]}
    cfg = LoRAControlConfig(out_dir=str(out_dir), steps=steps, grad_accum=grad_accum, lr=lr, warmup_frac=warmup_frac,
                            seed=seed, rank=rank, alpha=2.0 * rank, counterfactual=counterfactual, sampler=sampler,
                            ckpt_every_min=ckpt_every_min, max_minutes=max_minutes, lr_schedule=lr_schedule,
                            max_grad_norm=max_grad_norm, preserve_weight=preserve_weight, chat_frac=chat_frac,
                            keep_steps=ints(keep_steps))
    model, tok = load_backbone()
    LoRAControlTrainer(model, tok, cfg).train()

@app.command("ship-adapter")
def ship_adapter(checkpoint: Path, eval_md: Optional[Path] = typer.Option(None, "--eval"),
                 command: str = typer.Option("", help="the eval command, recorded in the model card"),
                 reading: str = typer.Option("", help="the honest one-paragraph reading of the numbers")):
    """Copy a checkpoint's adapter into the package (the default adapter) with a model card."""
    from lab.ship import ship

    typer.echo(str(ship(checkpoint, eval_md, command, reading)))


@app.command("strip-task-path")
def strip_task_path_cmd(src: Path, dst: Path, note: str = typer.Option("", help="why, kept in the adapter info")):
    """Copy an adapter without its state-independent task path (the state path alone)."""
    from lab.surgery import strip_task_path

    typer.echo(str(strip_task_path(src, dst, note=note)))


@app.command("add-state-heads")
def add_state_heads_cmd(src: Path, dst: Path, heads: int = typer.Option(4, help="state heads after growing (MSW: 4)"),
                        seed: int = 0, note: str = typer.Option("", help="why, kept in the adapter info")):
    """Copy a token-write adapter grown to more parallel state heads (TSW -> MSW), computing the same until
    trained further (new heads: fresh projections, gates copied, zero output columns)."""
    from lab.grow import add_state_heads

    typer.echo(str(add_state_heads(src, dst, heads, seed=seed, note=note)))


@app.command("keep-layers")
def keep_layers_cmd(src: Path, dst: Path, layers: str = typer.Option(..., help="backbone layer ids to keep, e.g. 10-29"),
                    note: str = typer.Option("", help="why, kept in the adapter info")):
    """Copy an adapter restricted to a band of layers (the others become the frozen backbone): the start of a
    band-trained ablation arm."""
    from deltamem_agents.core.config import parse_layer_spec
    from lab.surgery import keep_layers

    typer.echo(str(keep_layers(src, dst, parse_layer_spec(layers), note=note)))


@app.command("grow-rank")
def grow_rank_cmd(src: Path, dst: Path, rank: int = typer.Option(16, help="rank after growing (a multiple of the old)"),
                  eps: float = typer.Option(0.05, help="scale of the new q/k/v rows (0 would be a saddle)"),
                  seed: int = 0, note: str = typer.Option("", help="why, kept in the adapter info")):
    """Copy an adapter grown to a larger state rank (8 -> 16), computing nearly the same until trained further
    (new rows eps-small, gates copied block-wise, zero output columns, α scaled with r)."""
    from lab.grow import grow_rank

    typer.echo(str(grow_rank(src, dst, rank, eps=eps, seed=seed, note=note)))


@app.command("import-copy-head")
def import_copy_head_cmd(adapter: str = typer.Option("default", help="adapter dir to add the copy channel to; "
                                                      "'default' = the shipped adapter, 'none' = an adapter with "
                                                      "only the copy channel (an inert δ layer beside it)"),
                         copy: Path = typer.Option(..., help="a lab copy-head run dir (ckpt.safetensors + meta.json)"),
                         out: Path = typer.Option(..., help="the new adapter directory"),
                         backbone: str = typer.Option("default", help="with --adapter none: 'default' or a local "
                                                      "HF model dir (gives the shapes and the fingerprint)"),
                         note: str = typer.Option("", help="why, kept in the adapter info"),
                         gate: Path | None = typer.Option(None, help="a lab message-gate checkpoint (lab.copy_gate "
                                                          "--no-role: runs/copygate/<name>/gate.pt) to use as the "
                                                          "channel's write gate instead of the run's linear one")):
    """Merge a lab copy-head checkpoint (lab.openset_copyhead / lab.openset_copyhistory) into a copy of an adapter
    as its copy channel (config copy_rank from the run's meta.json; with --gate, copy_gate="message"); the source
    adapter is not changed."""
    from lab.import_copy import import_copy_head

    if adapter == "none":
        from deltamem_agents.backbone import load_backbone

        model, _ = load_backbone(None if backbone == "default" else backbone)
        typer.echo(str(import_copy_head(None, copy, out, model=model, note=note, gate=gate)))
        return
    from deltamem_agents.chat.loading import resolve_adapter

    src = resolve_adapter(adapter, None)
    if src is None:
        raise typer.BadParameter("no shipped adapter found; pass --adapter DIR or --adapter none")
    typer.echo(str(import_copy_head(src, copy, out, note=note, gate=gate)))
