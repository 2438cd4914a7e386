"""Merge a read path trained on oracle writes (oracle_write.py --save) with gates fitted as a token selector
(fit_selector.py --out) into one adapter directory with selective token writes (`write_threshold`).
A thin wrapper over `lab.merge` (= `python -m lab merge-selective`).

    python lab/scripts/merge_selective.py runs/oracle/a.safetensors runs/selector/gates.safetensors \
        runs/selective-v0/adapter --threshold 0.5
"""
from __future__ import annotations

import argparse

from deltamem_agents.backbone import load_backbone
from lab.merge import merge_selective


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
    try:
        out, diff = merge_selective(model, args.read_path, args.gates, args.out, threshold=args.threshold,
                                    update_mode=args.update_mode, rank=args.rank, info=args.info)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    print(f"saved {out} (input centres of the two parts differ by {diff:.2e})")


if __name__ == "__main__":
    main()
