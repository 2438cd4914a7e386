"""Stage 2 of the selective-write recipe (docs/training.md): fit the write gates as a token selector.

`prepare_selector` attaches a fresh token-write adapter whose input centres are the read path's (copied from
the stage-1 adapter, so the fitted gates can be merged into it) or calibrated afresh; `run_selector_fit`
resets the gate bias, fits only the gates (`write_selector.fit_write_gates`: a fact value's tokens → β̄ ≈ hi,
every other token → β̄ ≈ lo), reports recall / false-write rate on held-out episodes over a few thresholds
(`write_selector.selector_report`) and saves the gates (`beta_proj`, `beta_bias`, `input_center`) for
`merge.merge_selective`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.datasets.episode import Episode
from deltamem_agents.patching import attach
from deltamem_agents.patching.attach import DeltaMemAdapter
from deltamem_agents.runtime.render import ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import build_passes
from deltamem_agents.datasets.sampler import EpisodeSampler
from lab.write_selector import fit_write_gates, selector_report

KINDS = ("colour", "food", "sport", "drink")  # the closed-set answer kinds of docs/research-log.md §7
SAVED_KEYS = ("beta_proj", "beta_bias", "input_center")


@dataclass(frozen=True)
class SelectorFitConfig:
    steps: int = 60
    batch: int = 4
    lr: float = 1e-2
    threshold: float = 0.5  # the threshold of the before/after report
    hi: float = 0.9
    lo: float = 0.01
    fit_bias_init: float = -4.6  # the gate bias the fit starts from (every token unselected)
    heldout: int = 16
    init_gates: str = ""  # continue from gates saved by an earlier fit
    report_thresholds: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
    value_kinds: tuple[str, ...] = KINDS
    seed: int = 1


def selector_sampler(tokenizer: Any, cfg: SelectorFitConfig) -> EpisodeSampler:
    """Facts, updates and multi-fact episodes, 20 % in the window, budgets 128–320, distances 60–500."""
    return EpisodeSampler(tokenizer, value_kinds=list(cfg.value_kinds) or None,
                          mix={"fact": 0.6, "update": 0.2, "multi": 0.2}, in_window_frac=0.2,
                          budget_range=(128, 320), distance_start=60, distance_end=500, total_steps=cfg.steps,
                          seed=cfg.seed)


def prepare_selector(model: Any, renderer: ChatRenderer, *, init_adapter: str | Path | None = None,
                     threshold: float = 0.5, beta_bias: float = 1.0,
                     calibration: list[tuple[Episode, WindowPolicy]] | None = None) -> DeltaMemAdapter:
    """Attach fresh token-write gates to `model`. With `init_adapter` (the stage-1 read path: a dir or a
    weights file), its config and input centres are used; otherwise a centred token-write config whose
    centres are calibrated on the runtime passes of `calibration`."""
    from safetensors.torch import load_file

    from deltamem_agents.train.adapter_files import adapter_dir, delta_from_adapter, weights_file

    if init_adapter and adapter_dir(init_adapter) is not None:
        cfg = DeltaMemConfig(**delta_from_adapter(init_adapter, write_threshold=threshold))
    else:
        cfg = DeltaMemConfig(write_granularity="token", beta_bias_init=beta_bias, center_inputs=True,
                             write_threshold=threshold)
    adapter = attach(model, cfg)
    if init_adapter:
        centres = {k: v for k, v in load_file(str(weights_file(init_adapter))).items() if k.endswith("input_center")}
        adapter.load_state_dict(centres, strict=False)
    elif cfg.center_inputs:
        from deltamem_agents.train.calibrate import calibrate_input_centers

        if not calibration:
            raise ValueError("a fresh selector needs calibration episodes (or init_adapter)")
        calibrate_input_centers(model, [build_passes(ep, renderer, pol) for ep, pol in calibration])
    return adapter


def _rounded(xs: list[float], nd: int) -> list[float]:
    return [round(x, nd) for x in xs]


def run_selector_fit(model: Any, tokenizer: Any, renderer: ChatRenderer, cfg: SelectorFitConfig,
                     out: str | Path | None, progress: bool = True) -> list[dict[str, Any]]:
    """Fit the gates of the adapter attached to `model` and save them to `out` (if given); returns the report
    rows: the fit summary (before/after at `cfg.threshold`), then one row per report threshold."""
    adapter = model.deltamem
    with torch.no_grad():
        for layer in adapter.layers:
            layer.beta_bias.fill_(cfg.fit_bias_init)
    if cfg.init_gates:
        from safetensors.torch import load_file

        adapter.load_state_dict(load_file(cfg.init_gates), strict=False)
    sampler = selector_sampler(tokenizer, cfg)
    episodes: Iterator[tuple[Episode, WindowPolicy]] = (sampler.sample(step, micro) for step in range(10**6)
                                                        for micro in range(cfg.batch))
    held = [sampler.heldout(i, budget=256, distance=300) for i in range(cfg.heldout)]
    t0 = time.time()
    before = selector_report(model, renderer, held, cfg.threshold)
    losses = fit_write_gates(model, renderer, episodes, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, hi=cfg.hi,
                             lo=cfg.lo, progress=progress)
    after = selector_report(model, renderer, held, cfg.threshold)
    rows: list[dict[str, Any]] = [{
        "seconds": round(time.time() - t0), "loss_first": losses[:3], "loss_last": losses[-3:],
        "n_pos": after.n_pos, "n_neg": after.n_neg, "recall_before": _rounded(before.recall, 3),
        "false_before": _rounded(before.false_rate, 4), "recall": _rounded(after.recall, 3),
        "false_rate": _rounded(after.false_rate, 4)}]
    for tau in cfg.report_thresholds:
        rep = selector_report(model, renderer, held, tau)
        rows.append({"threshold": tau, "recall_mean": round(sum(rep.recall) / len(rep.recall), 3),
                     "recall_min": round(min(rep.recall), 3),
                     "false_mean": round(sum(rep.false_rate) / len(rep.false_rate), 4),
                     "false_max": round(max(rep.false_rate), 4)})
    if out:
        save_gates(adapter, out)
    return rows


def save_gates(adapter: DeltaMemAdapter, path: str | Path) -> Path:
    """The selector's weights (gates and the input centres they were fitted on) as one safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in adapter.state_dict().items() if k.endswith(SAVED_KEYS)},
              str(path))
    return path
