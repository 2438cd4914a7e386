"""Which tokens a training episode writes into the state: the runtime's choice, or only the asked value.

`runtime` (the default) keeps the passes of `runtime/replay.py` as they are: every new message is written, as
the session runtime does. `value_only` is the oracle selection of docs/design.md, deviation 15 (stage 1 of the
selective-write recipe, docs/training.md): in the state-building passes only the tokens of the asked fact's
value are written (`gates.value_token_labels` restricted to `gates.asked_values`; every other token gets
message id -1, read but not written) and the final pass writes nothing. With token writes a pass that writes
nothing leaves the state as it was, so such passes are dropped and a pass is cut after its last written token:
the state is the same, the forward is shorter.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..datasets.episode import Episode
from ..runtime.replay import EpisodePasses
from .gates import asked_values, token_classes, value_token_labels

WRITES = ("runtime", "value_only")


def value_only_passes(p: EpisodePasses, ep: Episode, renderer: Any) -> EpisodePasses:
    """`p` (the runtime passes of `ep`) with only the asked value's tokens written and a read pass that
    writes nothing. Valid for token writes (`write_granularity="token"`) only."""
    labels = value_token_labels(ep, renderer, asked_values(ep))
    writes: list[tuple[list[int], list[int]]] = []
    for ids, mids in p.write_passes:
        keep = [m if c == 1 else -1 for m, c in zip(mids, token_classes(mids, labels, len(ep.messages)))]
        last = max((i for i, m in enumerate(keep) if m >= 0), default=-1)
        if last >= 0:  # tokens after the last write read the state but cannot change it
            writes.append((ids[:last + 1], keep[:last + 1]))
    return replace(p, write_passes=writes, read_mids=[-1] * len(p.read_ids))


def select_writes(p: EpisodePasses, ep: Episode, renderer: Any, writes: str) -> EpisodePasses:
    """Apply the `writes` mode ("runtime" | "value_only") to the runtime passes `p` of `ep`."""
    if writes == "runtime":
        return p
    if writes == "value_only":
        return value_only_passes(p, ep, renderer)
    raise ValueError(f"writes must be one of {WRITES}, got {writes!r}")
