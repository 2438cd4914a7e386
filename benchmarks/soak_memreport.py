"""Compare process memory across soak runs (docs/soak.md, "RSS growth: diagnosis").

    .venv/bin/python benchmarks/soak_memreport.py base=/tmp/soakmem/A trim10=/tmp/soakmem/B \\
        --at 300,600,900,1200,1499 --plot docs/soak_rss.png

Reads each `<work-dir>/soak.jsonl` (rows of the last process only) and prints, at the turns asked (the nearest
sample at or before each), RSS, RssAnon and glibc's counters from benchmarks/memprobe.py: `heap_in_use`
(live malloc chunks), `heap_free` (freed, kept by the allocator), `mmapped`. With `--plot`, one panel per
quantity over turns, one line per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("rss_mb", "RssAnon", "heap_in_use", "heap_free", "mmapped", "arena")


def load(work: Path) -> list[dict]:
    rows = [json.loads(line) for line in (work / "soak.jsonl").read_text().splitlines()]
    pid = rows[-1]["pid"]
    return [r for r in rows if r["pid"] == pid and "rss_mb" in r]


def at(samples: list[dict], turn: int) -> dict:
    before = [r for r in samples if r["turn"] <= turn]
    return before[-1] if before else samples[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="label=work-dir")
    ap.add_argument("--at", default="300,600,900,1200,1499")
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    runs = {s.split("=", 1)[0]: load(Path(s.split("=", 1)[1])) for s in args.runs}
    turns = [int(t) for t in args.at.split(",")]
    print("| run | turn | " + " | ".join(KEYS) + " |")
    print("|---|---:|" + "---:|" * len(KEYS))
    for label, samples in runs.items():
        for t in turns:
            r = at(samples, t)
            print(f"| {label} | {r['turn']} | " + " | ".join(f"{r.get(k, float('nan')):.1f}" for k in KEYS) + " |")
        a, b = at(samples, turns[0]), at(samples, turns[-1])
        print(f"| {label} | Δ {a['turn']}→{b['turn']} | "
              + " | ".join(f"{b.get(k, float('nan')) - a.get(k, float('nan')):+.1f}" for k in KEYS) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = ("rss_mb", "heap_in_use", "heap_free")
        names = {"rss_mb": "process RSS, MiB", "heap_in_use": "glibc heap in use, MiB",
                 "heap_free": "glibc heap free\n(kept by allocator), MiB"}
        fig, ax = plt.subplots(len(keys), 1, figsize=(9, 8), sharex=True)
        for label, samples in runs.items():
            for a_, k in zip(ax, keys):
                a_.plot([r["turn"] for r in samples], [r.get(k, float("nan")) for r in samples], "-", lw=1,
                        label=label)
        for a_, k in zip(ax, keys):
            a_.set_ylabel(names[k])
        ax[0].legend(loc="lower right")
        ax[-1].set_xlabel("turn")
        fig.suptitle("soak memory, same workload per run")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
