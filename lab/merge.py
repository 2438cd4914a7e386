"""Stage 3 of the selective-write recipe (docs/training.md): one adapter from a read path and a token selector.

The read path (every δ-mem weight but the write gates) comes from an adapter trained with oracle writes
(`train --writes value_only`, or `lab/scripts/oracle_write.py --save`); the write gates (`beta_proj`,
`beta_bias`) from a selector fit (`fit-selector`). The result has selective token writes: `write_threshold`
τ and the chosen `state_update_mode`. Both parts must share their input centres (`center_inputs`): the gates
were fitted on inputs centred the read path's way (checked, relative difference ≤ `max_centre_diff`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach
from deltamem_agents.patching.adapter_io import read_adapter_config, save_adapter
from deltamem_agents.train.adapter_files import adapter_dir, weights_file

GATE_KEYS = ("beta_proj", "beta_bias")


def is_gate_key(key: str) -> bool:
    return key.endswith(GATE_KEYS)


def centre_difference(read: dict[str, Any], gates: dict[str, Any]) -> float:
    """Largest relative difference between the two parts' input centres (0 when the gates carry none)."""
    return max(((read[k].float() - gates[k].float()).norm().item() / max(read[k].float().norm().item(), 1e-9)
                for k in gates if k.endswith("input_center") and k in read), default=0.0)


def merge_selective(model: Any, read_path: str | Path, gates_path: str | Path, out: str | Path, *,
                    threshold: float = 0.5, update_mode: str = "standard", rank: int = 8, info: str = "",
                    max_centre_diff: float = 0.05) -> tuple[Path, float]:
    """Attach δ-mem to `model` (a backbone without δ-mem), load the read path's weights with the selector's
    gates, save the adapter dir `out`; returns (out, relative input-centre difference of the two parts).

    Each part is a safetensors file, an adapter dir or a checkpoint dir. The config is the read path's saved
    one when it has one, else token writes with centred inputs and `rank` (what oracle_write.py trains), with
    `write_threshold=threshold` and `state_update_mode=update_mode` either way."""
    from safetensors.torch import load_file

    src = adapter_dir(read_path)
    if src is not None:
        meta = read_adapter_config(src)
        cfg = meta["config"].replace(target_layers=tuple(meta["layer_ids"]), write_threshold=threshold,
                                     state_update_mode=update_mode)
    else:
        cfg = DeltaMemConfig(write_granularity="token", rank=rank, center_inputs=True, write_threshold=threshold,
                             beta_bias_init=1.0, state_update_mode=update_mode)
    sd = load_file(str(weights_file(read_path)))
    gates = load_file(str(weights_file(gates_path)))
    diff = centre_difference(sd, gates)
    if diff > max_centre_diff:
        raise ValueError(f"the two parts were calibrated on different input centres (rel. diff {diff:.3f})")
    missing = [k for k in sd if is_gate_key(k) and k not in gates]
    if missing:
        raise ValueError(f"the selector file has no {missing[:3]}")
    sd.update({k: v for k, v in gates.items() if is_gate_key(k)})
    adapter = attach(model, cfg)
    adapter.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    path = save_adapter(adapter, out, info={"recipe": "oracle-write read path + fitted token selector",
                                            "read_path": str(read_path), "gates": str(gates_path), "note": info,
                                            "input_centre_rel_diff": diff})
    return path, diff
