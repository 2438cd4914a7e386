"""Paired differences between backends of *different* bench runs on the same seeded items (e.g. two adapters).

An arm is `LABEL=RUN:BACKEND` or `LABEL=RUN:BACKEND-CONTROL`. With a control, the arm's score per item is
score(BACKEND) − score(CONTROL) from the same run, e.g. `r16=runs/bench/cap-r16:deltamem-deltamem_shuffled` is
rank 16's *memory* per item; differences between two such arms are then differences of memory effects, paired
over the items both runs answered. Runs made with the same --seed and task options hold the same items under the
same item ids; an item whose gold answer differs between runs refuses the comparison (not the same items).
Rows are grouped by `by` (a row field such as n_facts or distance), else by the report's cells.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import cells_of, read_rows, scored
from .stats import bootstrap_ci, paired_diff_ci


@dataclass(frozen=True)
class Arm:
    label: str
    run: Path
    backend: str
    control: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Arm":
        label, _, rest = text.partition("=")
        run, _, spec = rest.rpartition(":")
        backend, _, control = spec.partition("-")
        if not label or not run or not backend:
            raise ValueError(f"{text!r}: expected LABEL=RUN:BACKEND or LABEL=RUN:BACKEND-CONTROL")
        return cls(label, Path(run), backend, control or None)


Key = tuple[str, str, str]  # (task, group, item_id)


def _rows(run: Path) -> list[dict[str, Any]]:
    path = run / "rows.jsonl" if run.is_dir() else run
    if not path.exists():
        raise FileNotFoundError(f"no bench rows at {path}")
    return scored(read_rows(path))


def _groups(row: dict[str, Any], by: str | None) -> list[str]:
    if by is None:
        return cells_of(row)
    return [str(row[by])] if row.get(by) is not None else []


def arm_scores(arm: Arm, by: str | None) -> tuple[dict[Key, float], dict[Key, str]]:
    """({(task, group, item_id): score}, {key: gold}) of one arm; with a control, only items both answered."""
    mine: dict[Key, float] = {}
    ctrl: dict[Key, float] = {}
    gold: dict[Key, str] = {}
    rows = _rows(arm.run)
    for r in rows:
        for g in _groups(r, by):
            k = (r["task"], g, str(r["item_id"]))
            if r["backend"] == arm.backend:
                mine[k] = float(r["score"])
                gold[k] = str(r.get("gold"))
            elif arm.control is not None and r["backend"] == arm.control:
                ctrl[k] = float(r["score"])
    if not mine:
        have = sorted({r["backend"] for r in rows})
        raise ValueError(f"{arm.label}: no scored rows of backend {arm.backend!r} in {arm.run} (has {have})")
    if arm.control is not None:
        if not ctrl:
            raise ValueError(f"{arm.label}: no scored rows of control {arm.control!r} in {arm.run}")
        mine = {k: v - ctrl[k] for k, v in mine.items() if k in ctrl}
    return mine, gold


def _sort_key(group: str) -> tuple[int, float | str]:
    try:
        return (0, float(group))
    except ValueError:
        return (1, group)


def compare_runs(arms: list[Arm], *, by: str | None = None, base: int = 0) -> str:
    """Markdown: per (task, group) the items all arms share, each arm's mean [95% CI], and each arm − arms[base]
    as a paired bootstrap over those items."""
    if len(arms) < 2:
        raise ValueError("give at least two arms")
    data = [arm_scores(a, by) for a in arms]
    shared = sorted(set.intersection(*(set(s) for s, _ in data)))
    if not shared:
        raise ValueError("the runs share no items: not the same seeded items (same --seed and task options?)")
    for i, ((_, gold), arm) in enumerate(zip(data, arms)):
        bad = [k for k in shared if gold[k] != data[base][1][k]] if i != base else []
        if bad:
            raise ValueError(f"{arm.label} ({arm.run}) is not the same items as {arms[base].label}: gold differs at "
                             f"{[k[2] for k in bad[:3]]}")
    name = [a.label + (f" ({a.backend} − {a.control})" if a.control else f" ({a.backend})") for a in arms]
    ref = arms[base].label
    head = ["task", by or "cell", "n"] + name + [f"{a.label} − {ref}" for i, a in enumerate(arms) if i != base]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str], list[Key]] = defaultdict(list)
    for k in shared:
        groups[(k[0], k[1])].append(k)
    for task, g in sorted(groups, key=lambda tg: (tg[0], _sort_key(tg[1]))):
        ks = groups[(task, g)]
        vals = [[s[k] for k in ks] for s, _ in data]
        cells = ["%+.3f [%+.3f, %+.3f]" % bootstrap_ci(v) if a.control else "%.3f [%.3f, %.3f]" % bootstrap_ci(v)
                 for v, a in zip(vals, arms)]
        diffs = ["%+.3f [%+.3f, %+.3f]" % paired_diff_ci(v, vals[base]) for i, v in enumerate(vals) if i != base]
        lines.append(f"| {task} | {g} | {len(ks)} | " + " | ".join(cells + diffs) + " |")
    return "\n".join(lines) + "\n"


def plot_runs(arms: list[Arm], path: Path, *, by: str, title: str) -> Path:
    """Score vs `by` (a numeric row field) per arm over all its items, bootstrap 95% bars."""
    from .plots import plot_curves

    curves: dict[str, dict[int, list[float]]] = {}
    for a in arms:
        scores, _ = arm_scores(a, by)
        by_x: dict[int, list[float]] = defaultdict(list)
        for (_, g, _), v in sorted(scores.items()):
            by_x[int(float(g))].append(v)
        curves[a.label + (" (memory)" if a.control else "")] = dict(by_x)
    diff = any(a.control for a in arms)
    return plot_curves(curves, path, title=title, xlabel=by, logx=by == "n_facts",
                       ylabel="score difference" if diff else "accuracy", ylim=(-0.55, 1.05) if diff else (-0.05, 1.05))
