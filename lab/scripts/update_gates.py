"""Which value mentions does an adapter write in held-out update episodes? (docs/research-log.md §12j)

For the update probe's seeded episodes (the same ones `eval memory --kind update` scores), runs the runtime's
write passes (`runtime/replay.py`, the probe's window) with gate capture and reports, per update wording, the
mean write gate β̄ (over heads, ranks and layers) and the share of layer-tokens written (β̄ ≥ the adapter's
threshold) at three kinds of mention: the original fact's value, the new value in the update message, and the
old value re-mentioned in the update message (the mention training labels "do not write", train/gates.py).
If the old value's re-mention is written after the new one, the state holds the old value last.

    python lab/scripts/update_gates.py --adapter default --n 60
"""

from __future__ import annotations

import argparse
import collections
import re

import torch

from deltamem_agents.bench.run_probe import kind_episodes
from deltamem_agents.chat.loading import load_model
from deltamem_agents.patching import get_adapter
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import build_passes
from deltamem_agents.train.gates import mention_mask
from deltamem_agents.train.trainer import run_passes

from update_breakdown import wording  # noqa: E402  (sibling script)


def mention_targets(ep) -> dict[int, list[tuple[str, str]]]:
    """message index -> [(mention kind, value)] for an update episode: the fact's first statement of the old value,
    the update's new value and the update's re-mention of the old value."""
    old, new, ui = ep.meta["old_value"], ep.meta["value"], ep.fact_index
    first = next(i for i, m in enumerate(ep.messages[:ui]) if re.search(re.escape(old), m["content"], re.I))
    return {first: [("fact: old value", old)], ui: [("update: new value", new), ("update: old value", old)]}


def token_positions(mids: list[int]) -> list[tuple[int, int]]:
    """Per token of a call: (message id, position within that message's block)."""
    pos: dict[int, int] = collections.Counter()
    index = []
    for m in mids:
        index.append((m, pos[m]))
        pos[m] += 1
    return index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default="default")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--distance", type=int, default=150)
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--value-kinds", default="colour,food,sport,drink")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_model(adapter=a.adapter)
    tau = get_adapter(model).config.write_threshold or 0.0
    renderer = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    policy = WindowPolicy(budget=a.budget, reserve=48)
    eps = kind_episodes(tok, a.n, a.distance, a.seed, a.split, a.value_kinds.split(","), "update")
    # (wording, mention kind) -> [sum β̄, written layer-tokens, layer-tokens]
    acc: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for ep in eps:
        targets = mention_targets(ep)
        group = wording(ep.messages[ep.fact_index]["content"], ep.meta["old_value"], ep.meta["value"])
        p = build_passes(ep, renderer, policy)
        calls: list = []
        with torch.no_grad():
            run_passes(model, p, gate_calls=calls)
        for gates, mids, _ in calls:
            index = token_positions(mids)
            for m, spec in targets.items():
                for name, value in spec:
                    mask = mention_mask(renderer, ep.messages[m], {value})
                    cols = [t for t, (mm, j) in enumerate(index) if mm == m and j < len(mask) and mask[j]]
                    if not cols:
                        continue
                    for g, _ in gates.values():  # per layer: g [B, T, H, r]
                        b = g[0, cols].mean(dim=(-2, -1))
                        a_ = acc[(group, name)]
                        a_[0] += b.sum().item()
                        a_[1] += (b >= tau).sum().item()
                        a_[2] += len(cols)
    print(f"adapter {a.adapter}, τ = {tau}, {a.n} update episodes ({a.split} split), {a.distance} tokens back\n")
    print("| update wording | mention | layer-tokens | mean β̄ | written (β̄ ≥ τ) |\n|---|---|---|---|---|")
    for (group, name), (s, w, n) in sorted(acc.items()):
        print(f"| {group} | {name} | {int(n)} | {s / n:.3f} | {w / n:.2f} |")


if __name__ == "__main__":
    main()
