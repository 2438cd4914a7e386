"""Open-set bench runs read side by side: recall with the conversation's own state, with another conversation's, the
fact-turn ceiling, memory (own − another's, paired by item) and the leak of another conversation's state.

The leak is what the shuffled control's replies borrow from the state they were given: a reply with another
conversation's state (the item's donor) leaks when it contains a word (≥ 4 characters) of the donor's value that is
not a word of its own value (`word`), or the donor's whole value (`whole`, the score's own containment). Rows come
from `deltamem-agents bench --tasks openset-* --backends deltamem,deltamem_shuffled[,fact]` runs; a ceiling can be
taken from another run of the same items (`--ceiling`, the fact backend does not depend on the adapter).

    python -m lab.bench_leak runs/bench/openset-ctx --ceiling runs/bench/openset-tok32
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from deltamem_agents.bench.stats import bootstrap_ci, paired_diff_ci
from deltamem_agents.datasets.answers import contains_answer


def load(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "rows.jsonl").read_text().splitlines() if x.strip()]


def words(v: str) -> set[str]:
    return {w for w in re.findall(r"\w+", v.lower()) if len(w) >= 4}


def table(rows: list[dict], ceiling: list[dict] | None = None) -> list[dict]:
    """One row per (task, cell): n, own, other, ceiling, memory [CI], leak (word, whole)."""
    by = defaultdict(dict)  # (task, cell) -> item_id -> backend -> row
    for r in rows + (ceiling or []):
        if r.get("skipped"):
            continue
        by[(r["task"], r["cell"])].setdefault(r["item_id"], {}).setdefault(r["backend"], r)
    out = []
    for (task, cell), items in sorted(by.items()):
        both = [v for v in items.values() if "deltamem" in v and "deltamem_shuffled" in v]
        if not both:
            continue
        own = [v["deltamem"]["score"] for v in both]
        other = [v["deltamem_shuffled"]["score"] for v in both]
        word, whole = [], []
        for v in both:
            s = v["deltamem_shuffled"]
            donor = items.get(s.get("donor_id"), {}).get("deltamem")
            if donor is None:
                continue
            borrowed = words(donor["gold"]) - words(s["gold"])
            word.append(float(any(w in s["prediction"].lower() for w in borrowed)))
            whole.append(float(contains_answer(s["prediction"], [donor["gold"]])))
        ceil = [v["fact"]["score"] for v in both if "fact" in v]
        m = bootstrap_ci(own)
        d = paired_diff_ci(own, other)
        out.append({"task": task, "cell": cell, "n": len(both), "own": m, "other": sum(other) / len(other),
                    "ceiling": sum(ceil) / len(ceil) if ceil else None, "n_ceiling": len(ceil), "memory": d,
                    "leak_word": sum(word) / len(word) if word else None,
                    "leak_whole": sum(whole) / len(whole) if whole else None})
    return out


def render(tab: list[dict]) -> str:
    lines = ["| task | cell | n | own | another's | ceiling | own / ceiling | memory | leak (word / whole) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in tab:
        c = t["ceiling"]
        share = f"{t['own'][0] / c:.2f}" if c else "—"
        lw = "—" if t["leak_word"] is None else f"{t['leak_word']:.2f} / {t['leak_whole']:.2f}"
        own = f"{t['own'][0]:.2f} [{t['own'][1]:.2f}, {t['own'][2]:.2f}]"
        lines.append(f"| {t['task']} | {t['cell']} | {t['n']} | {own} | {t['other']:.2f} | {'—' if c is None else f'{c:.2f}'} | {share} "
                     f"| {t['memory'][0]:+.2f} [{t['memory'][1]:+.2f}, {t['memory'][2]:+.2f}] | {lw} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--ceiling", type=Path, default=None, help="a run of the same items with the fact backend")
    args = ap.parse_args()
    ceiling = [r for r in load(args.ceiling) if r["backend"] == "fact"] if args.ceiling else None
    print(render(table(load(args.run), ceiling)))


if __name__ == "__main__":
    main()
