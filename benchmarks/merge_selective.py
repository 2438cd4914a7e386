"""Merge a read path trained on oracle writes (oracle_write.py --save) with gates fitted as a token selector
(fit_selector.py --out) into one adapter directory with selective token writes (`write_threshold`).

    python benchmarks/merge_selective.py runs/oracle/a.safetensors runs/selector/gates.safetensors \
        runs/selective-v0/adapter --threshold 0.5
"""
from __future__ import annotations

import argparse

import torch
from safetensors.torch import load_file

from deltamem_agents.backbone import load_backbone
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach
from deltamem_agents.patching.adapter_io import save_adapter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("read_path")
    ap.add_argument("gates")
    ap.add_argument("out")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--update-mode", default="standard", help="state_update_mode; from a zero state a single write "
                    "is the same in every mode, so an oracle-trained read path is mode-agnostic")
    ap.add_argument("--info", default="", help="free text recorded in the adapter's info")
    args = ap.parse_args()
    model, _ = load_backbone()
    ad = attach(model, DeltaMemConfig(write_granularity="token", rank=args.rank, center_inputs=True,
                                      write_threshold=args.threshold, beta_bias_init=1.0,
                                      state_update_mode=args.update_mode))
    sd = load_file(args.read_path)
    gates = load_file(args.gates)
    centre_diff = max((sd[k].float() - gates[k].float()).norm().item() / max(sd[k].float().norm().item(), 1e-9)
                      for k in gates if k.endswith("input_center"))
    if centre_diff > 0.05:
        raise SystemExit(f"the two parts were calibrated on different input centres (rel. diff {centre_diff:.3f})")
    sd.update({k: v for k, v in gates.items() if k.endswith(("beta_proj", "beta_bias"))})
    ad.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    save_adapter(ad, args.out, info={"recipe": "oracle-write read path + fitted token selector", "note": args.info,
                                     "input_centre_rel_diff": centre_diff})
    print(f"saved {args.out} (input centres of the two parts differ by {centre_diff:.2e})")


if __name__ == "__main__":
    main()
