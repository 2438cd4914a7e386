"""Split a LoCoMo bench run's token F1 into precision and recall per backend (docs/research-log.md §14p).

On the plain-F1 categories (2 temporal, 4 single-hop) the official score is the F1 of Porter-stemmed, normalised
tokens; this prints its two halves, the answers sharing at least one gold token, and the mean answer length, so a
gain can be told apart as "more of the gold" (recall) or "fewer words outside it" (precision).

    python lab/scripts/locomo_precision_recall.py runs/bench/locomo-v17-l16 [--categories 2,4]
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from deltamem_agents.bench.f1 import _stemmer, normalize_answer
from deltamem_agents.bench.report import backends_in, label, read_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="bench run directory (or its rows.jsonl)")
    ap.add_argument("--categories", default="2,4", help="LoCoMo categories scored by plain token F1")
    args = ap.parse_args()
    cats = {int(c) for c in args.categories.split(",")}
    stem = _stemmer().stem
    tokens = lambda s: [stem(w) for w in normalize_answer(s).split()]  # noqa: E731
    path = args.run / "rows.jsonl" if args.run.is_dir() else args.run
    rows = [r for r in read_rows(path) if r["task"] == "locomo" and r.get("category") in cats and not r.get("skipped")]
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0, 0, 0])  # precision, recall, n, length, overlap
    for r in rows:
        pred, gold = tokens(r["prediction"]), tokens(r["gold"])
        common = sum((Counter(pred) & Counter(gold)).values())
        a = acc[r["backend"]]
        a[0] += common / len(pred) if pred else 0.0
        a[1] += common / len(gold) if gold else 0.0
        a[2] += 1
        a[3] += len(pred)
        a[4] += common > 0
    print(f"| categories {sorted(cats)} | n | token precision | token recall | answers sharing a gold token | mean length |")
    print("|---|---|---|---|---|---|")
    for b in backends_in(rows):
        p, rc, n, length, hit = acc[b]
        print(f"| {label(b)} | {n} | {p / n:.3f} | {rc / n:.3f} | {hit} | {length / n:.1f} |")


if __name__ == "__main__":
    main()
