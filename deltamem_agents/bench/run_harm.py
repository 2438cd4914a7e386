"""Run the reply-preservation check (bench/harm.py) and write JSONL rows plus a markdown summary.

    deltamem-agents eval harm --adapter runs/pres2/checkpoint-last/adapter --n 40 --distance 150 --budget 128
"""

from __future__ import annotations

import json
from pathlib import Path

from .harm import ARMS
from .rowlock import exclusive_rows
from .stats import bootstrap_ci, paired_diff_ci


def run_harm(*, adapter: str, n: int, distance: int, budget: int, out: Path, seed: int = 0, threads: int = 2,
             value_kinds: list[str] | None = None, max_new_tokens: int = 24, show_progress: bool = True,
             lora: str | None = None, model_dir: str | None = None) -> str:
    import torch
    from tqdm.auto import tqdm

    from ..chat.loading import load_model
    from ..runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
    from ..runtime.window import WindowPolicy
    from .harm import reply_rows
    from .probe import MemoryProbe
    from .run_probe import kind_episodes

    torch.set_num_threads(threads)
    model, tok = load_model(model_dir, adapter)
    if getattr(model, "deltamem", None) is None:
        raise ValueError("eval harm needs an adapter (it compares δ-mem's replies with the backbone's)")
    probe = MemoryProbe(model, tok, ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT), max_new_tokens=max_new_tokens)
    lora_probe = None
    if lora:  # the LoRA control merged into its own copy of the backbone, replying through the same windows
        from ..backbone import load_backbone
        from ..patching.lora import load_lora_control

        lmodel, _ = load_backbone(model_dir)
        lora_probe = MemoryProbe(load_lora_control(lmodel, lora), tok, probe.renderer, max_new_tokens=max_new_tokens)
    policy = WindowPolicy(budget=budget, reserve=48)
    eps = kind_episodes(tok, n, distance, seed, "heldout", value_kinds)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with exclusive_rows(out):  # one writer: two runs would interleave their rows in one file
        with out.open("w") as f:
            for i in tqdm(range(n), desc="reply preservation", disable=not show_progress):
                r = reply_rows(probe, [eps[i], eps[(i + 1) % n]], policy, seed=seed * 7_919 + i, score={0},
                               lora_probe=lora_probe)[0]
                r.update(episode=i, distance=distance, budget=budget, adapter=str(adapter),
                         lora_dir=str(lora) if lora else None)  # not "lora": that key is the control's reply
                rows.append(r)
                f.write(json.dumps(r) + "\n")
                f.flush()
    text = summarize(rows)
    out.with_suffix(".md").write_text(text)
    print(text)
    return text


def summarize(rows: list[dict]) -> str:
    lines = ["| state | n | token F1 vs backbone reply | first 3 words agree | length ratio |", "|---|---|---|---|---|"]
    labels = {"deltamem": "δ-mem, own state", "shuffled": "δ-mem, another conversation's state",
              "lora": "LoRA control (no state, same window)", "wider": "backbone, window ×2 (reference)",
              "full": "backbone, whole history (reference)"}
    for name in [a for a in ARMS if f"{a}_f1" in rows[0]]:
        cells = []
        for key in ("f1", "first3", "len_ratio"):
            m, lo, hi = bootstrap_ci([float(r[f"{name}_{key}"]) for r in rows])
            cells.append(f"{m:.2f} [{lo:.2f}, {hi:.2f}]")
        lines.append(f"| {labels[name]} | {len(rows)} | " + " | ".join(cells) + " |")
    m, lo, hi = paired_diff_ci([r["deltamem_f1"] for r in rows], [r["shuffled_f1"] for r in rows])
    lines.append(f"\nown − shuffled token F1: {m:+.2f} [{lo:+.2f}, {hi:+.2f}] (the plain backbone scores 1.00 by "
                 "construction)")
    for ref in ("wider", "full"):
        if f"{ref}_f1" in rows[0]:
            m, lo, hi = paired_diff_ci([r["deltamem_f1"] for r in rows], [r[f"{ref}_f1"] for r in rows])
            lines.append(f"δ-mem − backbone {ref} token F1: {m:+.2f} [{lo:+.2f}, {hi:+.2f}] (≥ 0: δ-mem moves the "
                         "reply no further than that harmless change)")
    return "\n".join(lines) + "\n"
