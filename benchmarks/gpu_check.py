"""GPU check: δ-mem vs the plain backbone on a CUDA device, side by side in one run (`make gpu-check`).

Usage::

    .venv/bin/python benchmarks/gpu_check.py [--model DIR] [--adapter DIR] [--out runs/gpu_check.md]

Per backbone (the default SmolLM2-135M-Instruct, plus `--model DIR`, e.g. a local >= 1B model) and per attention
implementation (SDPA, and FlashAttention-2 when `flash_attn` imports), in bf16:
- prefill tokens/s: one forward over a prompt of `--prompts` tokens (δ-mem writes every token into its state);
- decode tokens/s: `--new` greedy tokens, one forward per token with the KV cache (and the δ-state),
through the runtime's `Engine` for both arms. Arms: *plain* = the backbone with δ-mem detached (its own code
path, no wrappers); *δ-mem* = the same weights with the adapter attached (the shipped adapter on the default
backbone; on another backbone `--adapter`, else a fresh TSW adapter: speed does not depend on training).
The arms alternate (plain, δ-mem, plain, ...) `--repeats` times after a warm-up; medians are reported, with
the ratio δ-mem / plain. Configurations not started within `--budget-min` minutes are listed as skipped.

Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TEXT = ("Alice told me her locker code is 4417, that her sister's dog is called Biscuit, and that she moved to "
        "Lisbon last spring to work on tidal turbines. We talked about the weather, a film about a lighthouse "
        "keeper, and the best way to cook rice. ")


@dataclass
class Row:
    model: str
    attn: str
    prompt: int
    prefill: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "delta": []})  # tokens/s
    decode: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "delta": []})


class Arms:
    """One loaded backbone, switched between plain (δ-mem detached) and δ-mem (the adapter re-attached)."""

    def __init__(self, model: Any, adapter_dir: Path | None) -> None:
        from deltamem_agents.core.config import tsw
        from deltamem_agents.patching import attach, detach
        from deltamem_agents.patching.adapter_io import load_adapter

        self.model = model
        adapter = load_adapter(model, adapter_dir) if adapter_dir else attach(model, tsw())
        self.config, self.weights = adapter.config, {k: v.clone() for k, v in adapter.state_dict().items()}
        detach(model)

    def use(self, arm: str) -> None:
        from deltamem_agents.patching import attach, detach, is_attached

        if arm == "plain" and is_attached(self.model):
            detach(self.model)
        elif arm == "delta" and not is_attached(self.model):
            attach(self.model, self.config).load_state_dict(self.weights)


def prompt_ids(tok: Any, n: int) -> list[int]:
    ids = tok(TEXT * (n // 40 + 2), add_special_tokens=False)["input_ids"]
    return ids[:n]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_once(model: Any, tok: Any, arm: str, ids: list[int], new: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of one prompt and `new` greedy tokens."""
    from deltamem_agents.runtime.decode import Engine

    eng = Engine(model, tok)
    state = model.deltamem.zero_state(1, eng.device) if arm == "delta" else None
    cur = eng.new_cursor(state)
    sync()
    t0 = time.perf_counter()
    logits = eng.forward(cur, ids, [0] * len(ids))
    sync()
    t1 = time.perf_counter()
    for _ in range(new):
        logits = eng.forward(cur, [int(torch.argmax(logits))], [0])
    sync()
    t2 = time.perf_counter()
    return len(ids) / (t1 - t0), new / (t2 - t1)


def measure(name: str, model_dir: str | None, adapter_dir: Path | None, attn: str, args: argparse.Namespace,
            ) -> list[Row]:
    from deltamem_agents.backbone import load_backbone

    model, tok = load_backbone(model_dir, dtype="bfloat16", device=args.device, attn_implementation=attn)
    arms = Arms(model, adapter_dir)
    rows = []
    longest = getattr(model.config, "max_position_embeddings", None) or 1 << 20
    for n in args.prompts:
        ids = prompt_ids(tok, min(n, longest - args.new - 8))
        row = Row(name, attn, len(ids))
        for arm in ("plain", "delta"):  # warm-up (kernels, allocator)
            arms.use(arm)
            run_once(model, tok, arm, ids[:64], 4)
        for _ in range(args.repeats):
            for arm in ("plain", "delta"):
                arms.use(arm)
                p, d = run_once(model, tok, arm, ids, args.new)
                row.prefill[arm].append(p)
                row.decode[arm].append(d)
        rows.append(row)
        print(fmt_row(row), flush=True)
    del model, arms
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def fmt_row(r: Row) -> str:
    med = statistics.median
    pp, pd = med(r.prefill["plain"]), med(r.prefill["delta"])
    dp, dd = med(r.decode["plain"]), med(r.decode["delta"])
    return (f"| {r.model} | {r.attn} | {r.prompt} | {pp:,.0f} | {pd:,.0f} | {pd / pp:.2f} | {dp:,.1f} | {dd:,.1f} "
            f"| {dd / dp:.2f} |")


def report(rows: list[Row], notes: list[str], args: argparse.Namespace, seconds: float) -> str:
    import transformers

    from deltamem_agents.patching.device import flash_attn_available

    flash = "not installed"
    if flash_attn_available():
        import flash_attn

        flash = flash_attn.__version__
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    lines = [
        "# GPU check: δ-mem vs the plain backbone", "",
        f"Device: {dev} (CUDA {torch.version.cuda}); torch {torch.__version__}, "
        f"transformers {transformers.__version__}, flash-attn {flash}. Weights bf16, δ-state and adapter fp32.",
        f"Prompt lengths {args.prompts}, {args.new} decoded tokens, {args.repeats} interleaved repeats (medians); "
        f"run took {seconds / 60:.1f} min. Command: `{' '.join(sys.argv)}`.", "",
        "| backbone | attention | prompt tokens | prefill tok/s plain | prefill tok/s δ-mem | δ-mem / plain "
        "| decode tok/s plain | decode tok/s δ-mem | δ-mem / plain |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *[fmt_row(r) for r in rows], "",
        "Ratios below 1 are δ-mem's cost (the state write and read in every wrapped layer).",
    ]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="another local HF model dir to measure (e.g. a >= 1B model)")
    ap.add_argument("--adapter", type=Path, default=None, help="adapter dir for --model (default: a fresh TSW one)")
    ap.add_argument("--prompts", type=lambda s: [int(x) for x in s.split(",")], default=[512, 2048])
    ap.add_argument("--new", type=int, default=128, help="decoded tokens per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-min", type=float, default=6.0, help="start no configuration after this many minutes")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check.md")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to try this script without a GPU")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device on this machine (torch {torch.__version__}, CUDA build: "
              f"{torch.version.cuda or 'none'}); nothing to measure, skipped.")
        return 0

    from deltamem_agents.backbone import resolve_model_dir
    from deltamem_agents.chat.loading import DEFAULT_ADAPTER
    from deltamem_agents.errors import BackboneNotFoundError
    from deltamem_agents.patching.device import flash_attn_available

    on_cuda = args.device.startswith("cuda")
    attns = ["sdpa"] + (["flash_attention_2"] if on_cuda and flash_attn_available() else [])
    notes = [] if len(attns) > 1 else ["flash-attn does not import here: SDPA only."]
    configs: list[tuple[str, str | None, Path | None]] = [("SmolLM2-135M-Instruct (default)", None, DEFAULT_ADAPTER)]
    if args.model:
        try:
            path = resolve_model_dir(args.model)
            configs.append((path.name, str(path), args.adapter))
        except BackboneNotFoundError as exc:
            notes.append(f"--model {args.model} skipped: {exc}")
    t0 = time.monotonic()
    rows: list[Row] = []
    failed: list[str] = []
    for name, mdir, adir in configs:
        for attn in attns:
            if time.monotonic() - t0 > 60 * args.budget_min:
                notes.append(f"{name} / {attn} skipped: the {args.budget_min:g}-minute budget was used up")
                continue
            try:
                rows += measure(name, mdir, adir, attn, args)
            except Exception as exc:  # noqa: BLE001 - reported, and the check fails at the end
                failed.append(f"{name} / {attn} failed: {type(exc).__name__}: {exc}")
                print(failed[-1], file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, notes + failed, args, time.monotonic() - t0))
    print(f"gpu_check: report written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
