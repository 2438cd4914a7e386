"""Recall against leak for the copy-history runs: one panel per evaluation set, one point per run.

Recall = free-form replies containing the value with the history's own state, as a share of the ceiling (the same
backbone with the fact turn right before the question); leak = replies with another history's state that contain a
word of that history's value (`lab.openset_copyhistory.leaks`). Up and to the left is better.

    python -m lab.copy_plot runs/copyhist docs/bench/openset_copyread.png --distance 500
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .openset_copyhistory import leaks

SETS = (("held", "held-out values and wordings"), ("newrel", "relation types never trained on"),
        ("hand", "48 hand-written probes"))


def points(root: Path, distance: int) -> dict[str, list[tuple[str, float, float]]]:
    """Per set: (run, recall / ceiling, leak) for every run with replies at `distance`."""
    out: dict[str, list[tuple[str, float, float]]] = {k: [] for k, _ in SETS}
    for key, _ in SETS:
        name = f"{key}_d{distance}"
        ceil = [json.loads(x) for c in root.glob(f"ceiling_{name}_n*.jsonl") for x in c.read_text().splitlines()]
        if not ceil:
            continue
        c = sum(r["hit"] for r in ceil) / len(ceil)
        for g in sorted(root.glob(f"*/gen_{name}.jsonl")):
            rows = [json.loads(x) for x in g.read_text().splitlines()]
            own = [r["hit"] for r in rows if r["control"] == "own"]
            lk = leaks(rows)
            out[key].append((g.parent.name, sum(own) / len(own) / c, sum(lk) / len(lk)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--distance", type=int, default=500)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points(args.root, args.distance)
    fig, axes = plt.subplots(1, len(SETS), figsize=(15, 4.8), sharey=True)
    for ax, (key, title) in zip(axes, SETS):
        for run, rec, lk in pts[key]:
            ax.scatter(lk, rec, s=28)
            ax.annotate(run, (lk, rec), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("leak: replies with another's state pasting its value's words")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall / ceiling (own state)")
    fig.suptitle(f"Copy read variants, {args.distance} tokens after the fact (lab, research log §19)", fontsize=11)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
