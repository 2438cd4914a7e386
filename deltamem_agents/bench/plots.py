"""PNG plots of a benchmark run (matplotlib, Agg): accuracy vs fact distance, accuracy vs number of facts,
LoCoMo score per category, memory bytes per backend, latency vs history length. Error bars are bootstrap 95%
intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import backends_in, by_cell, label, scored
from .stats import bootstrap_ci


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'deltamem-agents[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(name: str) -> str:
    """Controls dashed: a shuffled state dotted, a LoRA control dashed (bench backend names or plot labels)."""
    low = name.lower()
    return ":" if "shuffled" in low else "--" if "lora" in low else "-"


def _curve(ax: Any, rows: list[dict[str, Any]], key: str, backend: str) -> None:
    xs = sorted({r[key] for r in rows if r["backend"] == backend})
    if not xs:
        return
    stats = [bootstrap_ci([r["score"] for r in rows if r["backend"] == backend and r[key] == x]) for x in xs]
    m = [s[0] for s in stats]
    err = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
    ax.errorbar(xs, m, yerr=err, marker="o", capsize=3, linestyle=_style(backend), label=label(backend))


def _by(rows: list[dict[str, Any]], task: str, key: str, path: Path, title: str, split: str | None) -> Path | None:
    rows = [r for r in scored(rows) if r["task"] == task and r.get(key) is not None]
    if not rows:
        return None
    plt = _plt()
    conds = sorted({r.get(split) for r in rows}, key=str) if split else [None]
    fig, axes = plt.subplots(1, len(conds), figsize=(7.5 * len(conds), 4.5), squeeze=False)
    for ax, cond in zip(axes[0], conds):
        sub = [r for r in rows if split is None or r.get(split) == cond]
        for b in backends_in(sub):
            _curve(ax, sub, key, b)
        ax.set(xlabel=key, ylabel="accuracy", ylim=(-0.05, 1.05), title=f"{title}" + (f" ({cond})" if cond else ""))
        if key == "n_facts":
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(plt, fig, path)


def _cells(rows: list[dict[str, Any]], task: str, path: Path, title: str) -> Path | None:
    """Grouped bars: one group per report cell of `task` (LoCoMo: cat 1-4 pooled, each category, cat 5), one bar
    per backend; controls hatched."""
    cells = {cell: by_b for (t, cell), by_b in by_cell(rows).items() if t == task}
    if not cells:
        return None
    plt = _plt()
    bs = backends_in({"backend": b} for by_b in cells.values() for b in by_b)
    names = sorted(cells, key=lambda c: (not c.startswith("cat 1-4"), c))
    width = 0.8 / len(bs)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(names) * len(bs) / 3), 4.5))
    for j, b in enumerate(bs):
        stats = [bootstrap_ci(list(cells[c].get(b, {}).values())) for c in names]
        xs = [i + (j - (len(bs) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [s[0] for s in stats], width, yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
               capsize=2, label=label(b), hatch="//" if _style(b) != "-" else None)
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set(ylabel="score (F1; cat 5: accuracy)", title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(plt, fig, path)


def _memory(rows: list[dict[str, Any]], path: Path) -> Path | None:
    rows = [r for r in rows if not r.get("skipped") and r.get("kv_bytes") is not None]
    if not rows:
        return None
    plt = _plt()
    bs = backends_in(rows)
    mean = lambda b, k: sum(r.get(k) or 0 for r in rows if r["backend"] == b) / max(  # noqa: E731
        1, sum(1 for r in rows if r["backend"] == b))
    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(bs))
    ax.bar([i - 0.2 for i in x], [max(mean(b, "memory_bytes"), 1) for b in bs], 0.4, label="memory (state/text/KV)")
    ax.bar([i + 0.2 for i in x], [max(mean(b, "kv_bytes"), 1) for b in bs], 0.4, label="KV cache of the prompt read")
    ax.set_xticks(list(x), [label(b) for b in bs], rotation=20)
    ax.set(yscale="log", ylabel="bytes per session (mean)", title="Memory per backend")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _latency(rows: list[dict[str, Any]], path: Path) -> Path | None:
    rows = [r for r in rows if not r.get("skipped") and r.get("latency_s") is not None]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for b in backends_in(rows):
        sub = [r for r in rows if r["backend"] == b]
        ax.scatter([r["history_tokens"] for r in sub], [r["latency_s"] for r in sub], s=10,
                   label=label(b), alpha=0.7)
    ax.set(xlabel="history tokens", ylabel="answer latency (s)", title="Latency vs history length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_curves(curves: dict[str, dict[int, list[float]]], path: Path, *, title: str, xlabel: str = "distance",
                ylabel: str = "accuracy", ylim: tuple[float, float] = (-0.05, 1.05), logx: bool = False) -> Path:
    """Accuracy vs `xlabel` per labelled arm ({label: {x: per-episode scores}}), bootstrap 95% bars; controls (labels
    naming a shuffled state or a LoRA) drawn dashed, like the bench's plots."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for name, by_x in curves.items():
        xs = sorted(by_x)
        stats = [bootstrap_ci(by_x[x]) for x in xs]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                    marker="o", capsize=3, linestyle=_style(name), label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=ylim, title=title)
    if logx:
        ax.set_xscale("log", base=2)
        ticks = sorted({x for by_x in curves.values() for x in by_x})
        ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [_by(rows, "synthetic-distance", "distance", out_dir / "accuracy_vs_distance.png",
                "accuracy vs fact distance", "condition"),
            _by(rows, "synthetic-capacity", "n_facts", out_dir / "accuracy_vs_n_facts.png",
                "accuracy vs number of facts", None),
            _cells(rows, "locomo", out_dir / "locomo_by_category.png", "LoCoMo by category"),
            _memory(rows, out_dir / "memory_bytes.png"),
            _latency(rows, out_dir / "latency_vs_history.png")]
    return [p for p in made if p is not None]
