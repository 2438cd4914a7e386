"""Plot a training log (log.jsonl): answer loss, held-out own vs shuffled vs zero-state loss, mean write gate.

    python -m deltamem_agents.train.plot runs/ssw-r8-contrast/log.jsonl docs/training_run1.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot_log(log: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    rows_all, rows = rows, [r for r in rows if r.get("loss") is not None]  # a step of chat-ending episodes only has no CE
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    ax[0].plot(steps, [r["loss"] for r in rows], alpha=0.4, label="train loss (per step)")
    k = 10
    smooth = [sum(r["loss"] for r in rows[max(0, i - k + 1):i + 1]) / len(rows[max(0, i - k + 1):i + 1])
              for i in range(len(rows))]
    ax[0].plot(steps, smooth, label=f"mean of last {k}")
    ax[0].set(xlabel="optimizer step", ylabel="answer CE (nats/token)", title="training loss")
    diag = [r for r in rows_all if r.get("memory_gap") is not None]
    for key, lab in (("diag_loss", "own state"), ("diag_loss_shuffled", "state of another conversation"),
                     ("diag_loss_zero", "zero state")):
        ax[1].plot([r["step"] for r in diag], [r[key] for r in diag], marker="o", label=lab)
    ax[1].set(xlabel="optimizer step", ylabel="answer CE", title="held-out: memory = shuffled − own")
    ax[2].plot(steps, [r.get("beta") or float("nan") for r in rows])
    ax[2].set(xlabel="optimizer step", ylabel="mean write gate β", title="write gate (lower = longer horizon)")
    for a in ax[:2]:
        a.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":  # pragma: no cover
    print(plot_log(Path(sys.argv[1]), Path(sys.argv[2])))
