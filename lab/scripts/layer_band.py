"""Which layers carry the memory? The probe with δ-mem's read-out kept only in a band of layers.

The ablation table compares "all layers vs a middle band". Training a band-only adapter means running the
whole recipe again (hours here); this is the inference-time half of that question: the shipped adapter, with
the corrections B_q / B_o of every layer outside `--read-layers` set to zero (those layers still write their
state, but nothing reads it, so they behave as the frozen backbone). No retraining, so a drop says the band
alone does not carry what the trained adapter stores — not what a band-trained adapter could do. Same episodes
as `deltamem-agents eval memory` with the same arguments.

    python lab/scripts/layer_band.py --read-layers 10-19 --kind fact --n 60 --distances 150 \
        --out runs/band-10-19-fact.jsonl
"""

from __future__ import annotations

import argparse

import torch

from deltamem_agents.bench.run_probe import add_probe_args, probe_from_args
from deltamem_agents.chat.loading import load_model
from deltamem_agents.core.config import parse_layer_spec
from deltamem_agents.patching import get_adapter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--read-layers", required=True, help="backbone layer ids whose read-out stays on, e.g. 10-19")
    add_probe_args(ap, kind="fact")
    a = ap.parse_args()
    keep = set(parse_layer_spec(a.read_layers))
    model, _ = load_model(None, a.adapter)  # cached: run_probe below gets this very model
    adapter = get_adapter(model)
    unknown = keep - set(adapter.layer_ids)
    if unknown:
        raise SystemExit(f"--read-layers {sorted(unknown)} are not δ-mem layers ({adapter.layer_ids[0]}..{adapter.layer_ids[-1]})")
    with torch.no_grad():
        for lid, layer in zip(adapter.layer_ids, adapter.layers):
            if lid not in keep:
                for p in (layer.delta_q_proj, layer.delta_o_proj):
                    if p is not None:
                        p.zero_()
    print(f"read-out kept in {len(keep)} of {len(adapter.layer_ids)} layers: {sorted(keep)}")
    probe_from_args(a, label=f"{a.adapter} (read-out only in layers {a.read_layers})")


if __name__ == "__main__":
    main()
