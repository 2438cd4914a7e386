"""Split update-probe rows by the update message's wording (fact updates; docs/research-log.md §12c).

Regenerates the probe's seeded update episodes (the same call eval-memory makes), checks each row's gold against
its episode, and groups rows by condition and update template: does the update message name the old value, and
is the old value the last one it names? Prints, per group, how often the answer says the new and the old value.

    python lab/scripts/update_breakdown.py runs/v2-eval-update.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from deltamem_agents.backbone import load_tokenizer
from deltamem_agents.bench.run_probe import kind_episodes


def wording(update: str, old: str, new: str) -> str:
    u, old, new = update.lower(), old.lower(), new.lower()
    if old not in u:
        return "new only"
    return "new, then old" if u.rfind(old) > u.rfind(new) else "old, then new"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", type=Path, help="eval memory --kind update rows (JSONL)")
    ap.add_argument("--value-kinds", default="colour,food,sport,drink", help="as passed to eval memory")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rows = [json.loads(line) for line in a.rows.read_text().splitlines()]
    groups: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    episodes: dict[int, list] = {}
    for r in rows:
        d = r["distance"]
        if d not in episodes:
            n = 1 + max(x["episode"] for x in rows if x["distance"] == d)
            episodes[d] = kind_episodes(load_tokenizer(), n, d, a.seed, r.get("split", "heldout"),
                                        a.value_kinds.split(","), "update")
        ep = episodes[d][r["episode"]]
        if ep.answer != r["gold"]:
            raise SystemExit(f"row {r['episode']} at {d}: gold {r['gold']!r} is not its episode's {ep.answer!r} "
                             "(other seed or value kinds?)")
        key = (r["condition"], wording(ep.messages[ep.fact_index]["content"], ep.meta["old_value"], ep.meta["value"]),
               ep.meta["templates"]["update"])
        c = groups[key]
        c["n"] += 1
        c["new"] += bool(r["correct"])
        c["old"] += bool(r["says_old"])
    print("| condition | update names | template | n | new | old |\n|---|---|---|---|---|---|")
    for k in sorted(groups):
        c = groups[k]
        print(f"| {k[0]} | {k[1]} | {k[2]} | {c['n']} | {c['new'] / c['n']:.2f} | {c['old'] / c['n']:.2f} |")


if __name__ == "__main__":
    main()
