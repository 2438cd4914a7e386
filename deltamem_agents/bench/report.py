"""Markdown report of a benchmark run: scores with bootstrap 95% intervals and paired differences.

Tables: score per (task, cell) × backend; paired differences δ-mem − window, δ-mem − shuffled (the memory
control; only this may be called memory), δ-mem+RAG − RAG, each a paired bootstrap over the items both
backends answered; synthetic-distance by distance, synthetic-capacity by number of facts, the open-set suites by
cell (distance, or number of facts) and by value kind, with δ-mem − the fact-turn ceiling; stale answers on
fact updates, and costs (prompt tokens, latency, memory bytes). Scores: accuracy (normalised containment)
everywhere except LoCoMo categories 1-4, which use the official stemmed token F1; LoCoMo category 5 is the
official adversarial accuracy, reported separately. Skipped rows (e.g. `full` when the history does not fit)
are counted, never scored.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from .stats import bootstrap_ci, paired_diff_ci

LORA_PREFIX = "lora_"  # rows of a `bench --lora` run are named lora_<backend>, so they sit beside δ-mem's rows
ORDER = ("floor", "window", "full", "rag", "deltamem", "deltamem_rag", "deltamem_shuffled",
         "deltamem_frozen", "deltamem_rag_shuffled", "fact")  # = backends.BACKENDS

# δ-mem frozen − shuffled has identical mechanics on both sides (whole state written beforehand, read with writes
# off): the memory measurement in the window, where δ-mem − shuffled also counts the window's own writes
# ... and δ-mem − LoRA (window): the LoRA control, rows of a `--lora` run merged into the same file
PAIRS = (("deltamem", "window"), ("deltamem", "deltamem_shuffled"), ("deltamem_frozen", "deltamem_shuffled"),
         ("deltamem", "lora_window"), ("deltamem_rag", "rag"), ("deltamem_rag", "deltamem_rag_shuffled"),
         ("deltamem_rag", "lora_rag"), ("deltamem", "fact"))
LABEL = {"deltamem": "δ-mem", "deltamem_rag": "δ-mem+RAG", "deltamem_shuffled": "shuffled", "rag": "RAG",
         "deltamem_frozen": "δ-mem frozen", "lora_window": "LoRA (window)", "lora_rag": "LoRA+RAG",
         "deltamem_rag_shuffled": "shuffled+RAG", "fact": "fact turn (ceiling)"}


def label(backend: str) -> str:
    """Display name; rows of a `--lora` run with δ-mem stacked on it read "LoRA+δ-mem", "LoRA+shuffled", ..."""
    if backend in LABEL:
        return LABEL[backend]
    if backend.startswith(LORA_PREFIX):
        base = backend[len(LORA_PREFIX):]
        return "LoRA+" + LABEL.get(base, base)
    return backend


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def cells_of(row: dict[str, Any]) -> list[str]:
    """The report cells a row belongs to (LoCoMo categories 1-4 are also pooled)."""
    task = row["task"]
    if task == "locomo":
        c = int(row["category"])
        return ["cat 5 adversarial (acc)"] if c == 5 else ["cat 1-4 (F1)", f"cat {c} (F1)"]
    if task == "synthetic-capacity":
        return ["all"]
    if task == "capability":
        return ["babi" if "babi_task" in row else "instruction"]
    if task.startswith("openset-"):
        return [str(row.get("cell", "all"))]
    return [str(row.get("condition", "all"))]


def backends_in(rows: Iterable[dict[str, Any]]) -> list[str]:
    seen = {r["backend"] for r in rows}
    return [b for b in ORDER if b in seen] + sorted(seen - set(ORDER))


def _fmt(xs: list[float]) -> str:
    if not xs:
        return "–"
    m, lo, hi = bootstrap_ci(xs)
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}] (n={len(xs)})"


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body]


def scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("score") is not None and not r.get("skipped")]


def by_cell(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """(task, cell) -> backend -> item_id -> score."""
    out: dict[tuple[str, str], dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in scored(rows):
        for cell in cells_of(r):
            out[(r["task"], cell)][r["backend"]][r["item_id"]] = float(r["score"])
    return out


def _paired(a: dict[str, float], b: dict[str, float]) -> str:
    keys = sorted(set(a) & set(b))
    if not keys:
        return "–"
    m, lo, hi = paired_diff_ci([a[k] for k in keys], [b[k] for k in keys])
    mb = sum(b[k] for k in keys) / len(keys)
    ratio = f", ×{(m + mb) / mb:.2f}" if mb > 0 else ""
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] (n={len(keys)}{ratio})"


def _by_key(rows: list[dict[str, Any]], task: str, key: str, backends: list[str], split: str | None = None
            ) -> list[str]:
    rows = [r for r in scored(rows) if r["task"] == task and r.get(key) is not None]
    lines: list[str] = []
    for cond in sorted({r.get(split) for r in rows} if split else {None}, key=str):
        sub = [r for r in rows if split is None or r.get(split) == cond]
        body = []
        for v in sorted({r[key] for r in sub}):
            body.append([str(v)] + [_fmt([r["score"] for r in sub if r[key] == v and r["backend"] == b])
                                    for b in backends])
        if cond is not None:
            lines.append(f"\n*{split} = {cond}*\n")
        lines += _table([key] + [label(b) for b in backends], body)
        pairs = [(a, b) for a, b in PAIRS if a in backends and b in backends]
        if pairs:  # the same paired differences as the cell table, per value of `key`
            scores: dict[tuple[Any, str], dict[str, float]] = defaultdict(dict)
            for r in sub:
                scores[(r[key], r["backend"])][r["item_id"]] = float(r["score"])
            body = [[str(v)] + [_paired(scores.get((v, a), {}), scores.get((v, b), {})) for a, b in pairs]
                    for v in sorted({r[key] for r in sub})]
            lines += ["", f"Paired differences by {key}:", ""]
            lines += _table([key] + [f"{label(a)} − {label(b)}" for a, b in pairs], body)
    return lines


def render(rows: list[dict[str, Any]]) -> str:
    backends = backends_in(rows)
    cells = by_cell(rows)
    lines = ["# Benchmark report", "",
             f"{len(rows)} rows; adapter: {sorted({str(r.get('adapter')) for r in rows})}; "
             f"budgets: {sorted({r.get('budget') for r in rows if r.get('budget')})}. "
             "Mean score [bootstrap 95% CI] (n). Synthetic suites are generated (labelled synthetic).", "",
             "## Scores by task", ""]
    order = sorted(cells, key=lambda tc: (tc[0], tc[1].replace("cat 1-4", "cat 0")))  # pooled LoCoMo first
    body = [[t, c] + [_fmt(list(cells[(t, c)].get(b, {}).values())) for b in backends] for t, c in order]
    lines += _table(["task", "cell"] + [label(b) for b in backends], body)
    pairs = [(a, b) for a, b in PAIRS if a in backends and b in backends]
    if pairs:
        lines += ["", "## Paired differences (bootstrap 95% CI over shared items; ×ratio of means)", ""]
        body = [[t, c] + [_paired(cells[(t, c)].get(a, {}), cells[(t, c)].get(b, {})) for a, b in pairs]
                for t, c in order]
        lines += _table(["task", "cell"] + [f"{label(a)} − {label(b)}" for a, b in pairs], body)
    for task, key, split, title in (("synthetic-distance", "distance", "condition", "Accuracy by fact distance"),
                                    ("synthetic-capacity", "n_facts", None, "Accuracy by number of facts")):
        if any(r["task"] == task for r in rows):
            lines += ["", f"## {title} ({task})"] + _by_key(rows, task, key, backends, split)
    for task in sorted({r["task"] for r in rows if r["task"].startswith("openset-")}):
        lines += ["", f"## Accuracy by value kind, all cells pooled ({task})", ""]
        lines += _by_key(rows, task, "value_kind", backends)
    upd = [r for r in scored(rows) if r["task"] == "synthetic-update"]
    if upd:
        lines += ["", "## Stale answers on fact updates (rate of answering the old value)", ""]
        lines += _table(["backend", "says old"], [[label(b), _fmt([float(r.get("says_old", False)) for r in upd
                                                                           if r["backend"] == b])] for b in backends])
    lines += ["", "## Cost per backend (means over answered rows)", ""]
    body = []
    for b in backends:
        rs = [r for r in rows if r["backend"] == b and not r.get("skipped")]
        skipped = sum(1 for r in rows if r["backend"] == b and r.get("skipped"))
        mean = lambda k: sum(float(r.get(k) or 0) for r in rs) / len(rs) if rs else float("nan")  # noqa: E731
        kinds = ",".join(sorted({str(r.get("memory_kind")) for r in rs}))
        body.append([label(b), str(len(rs)), str(skipped), f"{mean('prompt_tokens'):.0f}",
                     f"{mean('latency_s'):.2f}", f"{mean('prep_s'):.2f}", f"{mean('memory_bytes'):,.0f} ({kinds})",
                     f"{mean('kv_bytes'):,.0f}"])
    lines += _table(["backend", "rows", "skipped", "prompt tokens", "latency s", "memory write s",
                     "memory bytes (kind)", "prompt KV bytes"], body)
    return "\n".join(lines) + "\n"


def write_report(rows_path: Path, out_dir: Path) -> str:
    """Write report.md and plots/*.png into `out_dir`; returns the markdown."""
    from .plots import make_plots

    rows = read_rows(Path(rows_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = render(rows)
    pngs = make_plots(rows, out_dir / "plots")
    if pngs:
        text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in pngs) + "\n"
    (out_dir / "report.md").write_text(text)
    return text
