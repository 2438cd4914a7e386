"""What if a trained adapter used another state update at inference? (fact updates)

The shipped adapter writes selected tokens with `no_lambda` (keep = 1: a write never decays the rest of the
state), so a changed fact leaves both values in the state and the first one wins (docs/research-log.md §11c, §12c).
This runs the memory probe with every layer's `state_update_mode` switched (e.g. to `standard`, where each
written token also decays the state by 1 − β) — no retraining — to see whether recency alone fixes updates and
what it costs single-fact recall. Same episodes as `deltamem-agents eval memory` with the same arguments.

    python lab/scripts/update_mode_whatif.py --mode standard --kind update --n 60 --distances 150 \
        --out runs/whatif-standard-update.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses

from deltamem_agents.bench.run_probe import add_probe_args, probe_from_args
from deltamem_agents.chat.loading import load_model
from deltamem_agents.core.config import UPDATE_MODES
from deltamem_agents.core.memory import DeltaMemLayer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=UPDATE_MODES, required=True)
    add_probe_args(ap, kind="update")
    a = ap.parse_args()
    model, _ = load_model(None, a.adapter)  # cached: run_probe below gets this very model
    layers = [m for m in model.modules() if isinstance(m, DeltaMemLayer)]
    assert layers, "no δ-mem layers found"
    for m in layers:
        m.cfg = dataclasses.replace(m.cfg, state_update_mode=a.mode)
    print(f"{len(layers)} δ-mem layers switched to state_update_mode={a.mode!r}")
    probe_from_args(a, label=f"{a.adapter} (state_update_mode={a.mode})")


if __name__ == "__main__":
    main()
