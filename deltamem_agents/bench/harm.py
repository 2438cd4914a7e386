"""Reply preservation: does a δ-state full of facts leave replies it is not about as the backbone writes them?

The memory probe scores fact questions; it cannot see an adapter that also rewrites every other reply
("How long should I boil an egg?" -> "1."). Here the same held-out histories end with a
chit-chat question instead (a distractor exchange the history does not contain), and three replies are
generated greedily with the same window: the frozen backbone's (the reference), δ-mem with the episode's own
state, and δ-mem with another episode's state. Scores per reply, against the backbone's: token F1 (SQuAD-style,
stemmed; 1.0 = the same words) and whether the first three words agree; plus the length ratio. The plain
backbone scores exactly 1 by construction, so 1 is not the bar: a greedy 135M model's reply moves with any change
of context. Two backbone-only references measure how far harmless changes move it, on the same episodes: the
backbone seeing a wider window of the same conversation (`wider`, budget ×2) and seeing the whole history
(`full`). An adapter whose replies move no further than those does no more harm than showing the model more of
its own conversation.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from ..datasets.distractors import distractor, faker_for
from ..datasets.episode import Episode
from ..runtime.replay import history_passes
from ..datasets.episode import fact_values
from .f1 import f1_score
from .probe import MemoryProbe


def chat_ending(ep: Episode, seed: int) -> Episode:
    """The episode with its fact question replaced by a chit-chat question that mentions none of its values."""
    rng = random.Random(f"harm:{seed}")
    q, a = distractor(rng, faker_for(rng.getrandbits(32)), fact_values(ep))
    return dataclasses.replace(ep, question=q, answer=a)


def _first_words(text: str, n: int = 3) -> list[str]:
    return text.lower().split()[:n]


ARMS = ("deltamem", "shuffled", "lora", "wider", "full")


def reply_rows(probe: MemoryProbe, episodes: list[Episode], policy: Any, seed: int = 0,
               score: set[int] | None = None, references: bool = True,
               lora_probe: MemoryProbe | None = None) -> list[dict[str, Any]]:
    """One row per scored episode (all by default): the backbone's reply, the δ-mem replies (own / shuffled state)
    and, with `references`, the backbone's replies through a wider window and over the whole history, each scored
    against the backbone's (episodes[i+1] donates the shuffled state of episode i; unscored episodes only donate).
    `lora_probe` (a probe over the backbone with a LoRA control merged in) adds that model's reply through the same
    window (`lora`): the no-state control's harm, scored the same way."""
    chats = [chat_ending(ep, seed * 1_000_003 + i) for i, ep in enumerate(episodes)]
    passes = [history_passes(c, probe.renderer, policy) for c in chats]
    states = [probe.build_state(p) for p in passes]
    rows = []
    for i, (c, p) in enumerate(zip(chats, passes)):
        if score is not None and i not in score:
            continue
        ref, _ = probe.answer(p, None, use_memory=False)
        own, _ = probe.answer(p, states[i], use_memory=True)
        shuf, _ = probe.answer(p, states[(i + 1) % len(states)].rebased(), use_memory=True)
        row = {"episode": i, "question": c.question, "backbone": ref, "deltamem": own, "shuffled": shuf}
        if lora_probe is not None:
            row["lora"], _ = lora_probe.answer(p, None, use_memory=False)
        if references:  # backbone-only: the same conversation seen through a wider window / whole
            for name, budget in (("wider", 2 * policy.budget), ("full", 8192)):
                wide = history_passes(c, probe.renderer, dataclasses.replace(policy, budget=budget))
                row[name], _ = probe.answer(wide, None, use_memory=False)
        for name in [a for a in ARMS if a in row]:
            text = row[name]
            row[f"{name}_f1"] = f1_score(text, ref) if ref.strip() else float(not text.strip())
            row[f"{name}_first3"] = _first_words(text) == _first_words(ref)
            row[f"{name}_len_ratio"] = len(text.split()) / max(1, len(ref.split()))
        rows.append(row)
    return rows
