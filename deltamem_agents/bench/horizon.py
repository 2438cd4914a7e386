"""Memory horizon: how much of one message's write survives the messages written after it.

For the standard update, a write's share of the state decays by (1 − β_j) per later write j (per layer and
state row; the erase along the new key can only remove more, so this is an upper bound). This replays an
episode's write passes exactly as the runtime does, records every written unit's gates per layer, and
reports the retention of the fact message at the time of the question, per layer. With SSW a unit is a
message; with TSW a token.
"""

from __future__ import annotations

from typing import Any

import torch

from ..datasets.episode import Episode
from ..patching.forward import forward_with_state
from ..runtime.render import ChatRenderer
from ..runtime.window import WindowPolicy
from ..runtime.replay import history_passes
from ..runtime.replay import closed_message_ids


@torch.inference_mode()
def fact_retention(model: Any, renderer: ChatRenderer, ep: Episode, policy: WindowPolicy) -> dict[str, Any]:
    """Per-layer retention of the fact message's write when the question is asked (SSW or TSW)."""
    p = history_passes(ep, renderer, policy)
    adapter = model.deltamem
    state = adapter.zero_state(1)
    per_layer: list[list[torch.Tensor]] = [[] for _ in adapter.layer_ids]  # β of written units, in order
    unit_msg: list[int] = []  # message index of each written unit
    token_mode = adapter.config.write_granularity == "token"
    passes = p.write_passes + [(p.read_ids, p.read_mids)]
    for ids, mids in passes:
        out = forward_with_state(model, torch.tensor([ids]), state, message_ids=torch.tensor([mids]),
                                 skip_lm_head=True, capture_inputs=True, use_cache=False)
        for slot, (g, mask) in (out.gates or {}).items():
            per_layer[slot].append(g[0][mask[0]])  # [U_written, H, r]
        if token_mode:
            unit_msg += [m for m in mids if m >= 0]
        else:  # closed messages of this call, in order: the carried open one (if it closed) then new ones
            closed = out.gates[0][1][0] if out.gates else torch.zeros(0, dtype=torch.bool)
            unit_msg += closed_message_ids(closed, mids, state)
        state = out.state
    fact = ep.fact_index
    units = [i for i, m in enumerate(unit_msg) if m == fact]
    if not units:
        return {"retention_mean": None, "retention_best": None, "per_layer": [], "units_after": 0}
    last = units[-1]
    ret = []
    for gates in per_layer:
        g = torch.cat(gates)  # [U, H, r]
        keep = (1 - g[last + 1:]).clamp_min(1e-30).log().sum(0).exp()  # [H, r]
        ret.append(keep * g[units].mean(0))  # survives × how strongly it was written
    stacked = torch.stack(ret)  # [L, H, r]
    return {"retention_mean": stacked.mean().item(), "retention_best": stacked.max().item(),
            "per_layer": stacked.mean(dim=(1, 2)).tolist(), "units_after": len(unit_msg) - last - 1}
