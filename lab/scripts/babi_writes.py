"""How much of an in-window bAbI story do an adapter's write gates store? (the no-harm check; §12m)

bAbI test stories of the capability suite's tasks (4 / 11 / 12 / 15), whole story in the window, the runtime's
writes: the share of story and question tokens whose mean gate β̄ reaches the adapter's threshold, per layer
(`write_selector.selector_report`; these episodes have no fact values, so every written token is a "false" write).

    DELTAMEM_BABI_DIR=../shared/data/babi/en python lab/scripts/babi_writes.py default runs/v8-cvx
"""

from __future__ import annotations

import argparse

import torch

from deltamem_agents.chat.loading import load_model
from deltamem_agents.datasets.babi import babi_episodes, parse_tasks
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from lab.write_selector import selector_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapters", nargs="+")
    ap.add_argument("--per-task", type=int, default=8)
    ap.add_argument("--tasks", type=parse_tasks, default=(4, 11, 12, 15), help="comma list or 'all' (test files)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    eps = babi_episodes(None, tasks=a.tasks, split="test", max_items=a.per_task, seed=0)
    for ad in a.adapters:
        model, tok = load_model(None, ad)
        rep = selector_report(model, ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT),
                              [(e, WindowPolicy(budget=8192, reserve=48)) for e in eps],
                              model.deltamem.config.write_threshold)
        fr = rep.false_rate
        print(f"{ad}: tasks {','.join(map(str, a.tasks))}, {len(eps)} stories, {rep.n_neg} tokens; "
              f"written: mean over layers {sum(fr) / len(fr):.4f}, max layer {max(fr):.4f}")


if __name__ == "__main__":
    main()
