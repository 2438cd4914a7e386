"""Merge bench runs made with the same settings into one run directory.

A long benchmark can be split over processes or machines by backend (`--backends deltamem,deltamem_shuffled` in one
run directory, `--backends window,rag` in another), each resumable on its own. `merge_runs` joins their rows into one
directory that `bench report` and `bench compare` read like a single run. It refuses runs whose settings differ (the
resume key of their config.json: budget, adapter, seed, ...), keeps one row per (task, item, backend) — the first
given — and counts the duplicates whose scores disagree, which a deterministic greedy run should never have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .report import read_rows
from .runner import CONFIG, ROWS, settings_diff


@dataclass(frozen=True)
class Merged:
    rows: int
    duplicates: int
    disagreeing: int


def _resume_key(run: Path) -> dict:
    path = run / CONFIG
    if not path.exists():
        raise ValueError(f"{run} has no {CONFIG}: not a bench run directory")
    return json.loads(path.read_text()).get("resume_key", {})


def merge_runs(runs: list[Path], out: Path) -> Merged:
    """Write out/rows.jsonl and out/config.json from `runs` (two or more run directories with equal settings)."""
    if len(runs) < 2:
        raise ValueError("give two or more run directories to merge")
    if (out / ROWS).exists():
        raise ValueError(f"{out / ROWS} exists; merge into a new directory")
    keys = [_resume_key(r) for r in runs]
    for run, key in zip(runs[1:], keys[1:]):
        diff = settings_diff(keys[0], key)
        if diff:
            raise ValueError(f"{run} was run with other settings than {runs[0]}: {diff}")
    seen: dict[tuple[str, str, str], float | None] = {}
    kept, dup, bad = [], 0, 0
    for run in runs:
        for r in read_rows(run / ROWS):
            k = (r["task"], r["item_id"], r["backend"])
            if k in seen:
                dup += 1
                bad += seen[k] != r.get("score")
                continue
            seen[k] = r.get("score")
            kept.append(r)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text((runs[0] / CONFIG).read_text())
    (out / ROWS).write_text("".join(json.dumps(r) + "\n" for r in kept))
    return Merged(rows=len(kept), duplicates=dup, disagreeing=bad)
