"""Turn an `Episode` into the exact forward passes the session runtime would run (docs/design.md, section 3).

The conversation (history + question + gold answer) is replayed through the shared `WindowPolicy`: each
window "epoch" between KV rebuilds is one forward over [system + window messages] from position 0, where
messages carried over from the previous epoch are re-read without writing (message id -1) and new messages
are written with their message index. All epochs but the last only build the state; the last one ends with
the question and the answer, and the loss is on the answer's content and end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.state import DeltaState
from ..datasets.episode import Episode
from .render import ChatRenderer
from .window import Epoch, WindowPolicy, plan_epochs

IGNORE = -100


@dataclass
class EpisodePasses:
    write_passes: list[tuple[list[int], list[int]]]  # (token ids, message ids) per state-building epoch
    read_ids: list[int]  # final epoch: system + window + question + answer
    read_mids: list[int]
    labels: list[int]  # IGNORE except the answer tokens
    epochs: list[Epoch] = field(default_factory=list)
    fact_in_window: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def read_only(self) -> EpisodePasses:
        """Only the final (read) pass: the question and answer read with a state given from elsewhere."""
        return EpisodePasses([], self.read_ids, self.read_mids, self.labels)

    @property
    def num_tokens(self) -> int:
        return sum(len(i) for i, _ in self.write_passes) + len(self.read_ids)


def arrivals_of(messages: list[dict[str, Any]]) -> dict[int, int]:
    """Index -> count of messages arriving together from outside (runs of non-assistant messages)."""
    out: dict[int, int] = {}
    i = 0
    while i < len(messages):
        if messages[i]["role"] == "assistant":
            i += 1
            continue
        j = i
        while j < len(messages) and messages[j]["role"] != "assistant":
            j += 1
        out[i] = j - i
        i = j
    return out


def epoch_tokens(renderer: ChatRenderer, blocks: list[list[int]], ep: Epoch) -> tuple[list[int], list[int]]:
    """Tokens and message ids of one epoch's forward: system (-1), re-read messages (-1), new messages (index)."""
    ids = list(renderer.system_ids)
    mids = [-1] * len(ids)
    for m in range(ep.start, ep.end):
        ids += blocks[m]
        mids += [m if m >= ep.first_new else -1] * len(blocks[m])
    return ids, mids


def build_passes(episode: Episode, renderer: ChatRenderer, policy: WindowPolicy,
                 answer: str | None = None) -> EpisodePasses:
    """All forward passes of one training episode under `policy`."""
    msgs = [dict(m) for m in episode.messages]
    msgs += [{"role": "user", "content": episode.question},
             {"role": "assistant", "content": answer if answer is not None else episode.answer}]
    blocks = [renderer.message_ids(m) for m in msgs]
    epochs = plan_epochs([len(b) for b in blocks], arrivals_of(msgs), len(renderer.system_ids), policy)
    writes = [epoch_tokens(renderer, blocks, ep) for ep in epochs[:-1]]
    read_ids, read_mids = epoch_tokens(renderer, blocks, epochs[-1])
    # labels: the answer block minus its role header and the trailing newline after the end-of-turn token
    ans = blocks[-1]
    head = renderer.content_prefix_len("assistant")
    labels = [IGNORE] * (len(read_ids) - len(ans)) + [IGNORE] * head + ans[head:-1] + [IGNORE]
    last = epochs[-1]
    return EpisodePasses(writes, read_ids, read_mids, labels, epochs,
                         fact_in_window=episode.fact_index >= last.start,
                         meta={"kind": episode.kind, **episode.meta})


def history_passes(episode: Episode, renderer: ChatRenderer, policy: WindowPolicy) -> EpisodePasses:
    """Like `build_passes` but the final epoch stops after the question (for generation at eval time)."""
    p = build_passes(episode, renderer, policy, answer="")
    ans = renderer.message_ids({"role": "assistant", "content": ""})
    keep = len(p.read_ids) - len(ans) + renderer.content_prefix_len("assistant")  # keep the generation prompt
    p.read_ids, p.read_mids, p.labels = p.read_ids[:keep], p.read_mids[:keep], p.labels[:keep]
    return p


def closed_message_ids(closed: torch.Tensor, mids: list[int], state_in: DeltaState) -> list[int]:
    """Message index of each closed unit of one SSW call (batch row 0), in the order the layer wrote them.

    `closed` is `Segments.closed_mask[0]`: slot 0 is the message carried open from the previous call (never
    closed when nothing was carried), slot k >= 1 the k-th message *started* in this call."""
    pend = int(state_in.pend_id[0])
    started = sorted({m for m in mids if m >= 0 and m > pend})
    order = [pend] + started
    return [m for m, c in zip(order, closed.tolist()) if c]
