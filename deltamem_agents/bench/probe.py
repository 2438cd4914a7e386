"""Memory-probe evaluation: a fact sits at a chosen distance before the question; greedy answers are scored.

Conditions on the *same* episodes and backbone (issue 3 §3, issue 9 §2):
  window         backbone alone, prompt = system + the runtime's visible window + question (the floor)
  deltamem       window + the δ-state written over the whole history, exactly as the session runtime does
  shuffled       window + a δ-state written from a *different* episode (the memory control)
  counterfactual window + the δ-state of the episode's twin whose asked value differs (the strictest control:
                 same relation, same words, another value; datasets/counterfactual.py)
  empty          window + δ-mem whose state starts empty at the window (adapter effect without memory)
  full           backbone alone with the entire history in the prompt (the ceiling, where it fits)
Only `deltamem − shuffled` (or `deltamem − counterfactual`) may be called memory. Scores: normalised-contains of any gold alias.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Iterable

from ..datasets.counterfactual import counterfactual, supports_counterfactual
from ..datasets.episode import Episode
from ..patching.context import disabled
from ..runtime.decode import Engine, GenerationConfig
from ..runtime.render import ChatRenderer
from ..runtime.window import WindowPolicy
from ..train.episode import EpisodePasses, history_passes

CONDITIONS = ("window", "deltamem", "shuffled", "counterfactual", "empty", "full")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def contains_answer(prediction: str, aliases: Iterable[str]) -> bool:
    pred = f" {normalize(prediction)} "
    return any(f" {normalize(a)} " in pred for a in aliases if normalize(a))


@dataclass
class ProbeResult:
    condition: str
    correct: bool
    prediction: str
    prompt_tokens: int


class MemoryProbe:
    def __init__(self, model: Any, tokenizer: Any, renderer: ChatRenderer, *, max_new_tokens: int = 16) -> None:
        self.engine = Engine(model, tokenizer)
        self.model, self.renderer = model, renderer
        self.gen = GenerationConfig(max_new_tokens=max_new_tokens)

    def build_state(self, passes: EpisodePasses) -> Any:
        """Write the history's epochs (all but the final window) into a fresh δ-state."""
        cur = self.engine.new_cursor(self.model.deltamem.zero_state(1))
        for ids, mids in passes.write_passes:
            cur = self.engine.new_cursor(cur.state)  # each epoch starts a fresh KV cache at position 0
            self.engine.forward(cur, ids, mids)
        return cur.state

    def answer(self, passes: EpisodePasses, state: Any, *, use_memory: bool) -> tuple[str, int]:
        msg_id = passes.read_mids[-1] if passes.read_mids else 0  # the reply continues its header's message (as the runtime)
        if use_memory:
            cur = self.engine.new_cursor(state)
            res = self.engine.generate(cur, passes.read_ids, passes.read_mids, msg_id, self.gen)
        else:
            with disabled():
                cur = self.engine.new_cursor(None)
                res = self.engine.generate(cur, passes.read_ids, passes.read_mids, msg_id, self.gen)
        return res.text, len(passes.read_ids)

    def run(self, episodes: list[Episode], policy: WindowPolicy, conditions: Iterable[str] = CONDITIONS,
            full_budget: int = 8192, score: set[int] | None = None) -> list[dict[str, Any]]:
        """One row per (scored episode, condition); unscored episodes only donate shuffled-control states."""
        conditions = list(conditions)
        passes = [history_passes(ep, self.renderer, policy) for ep in episodes]
        need_states = any(c in conditions for c in ("deltamem", "shuffled"))
        states = [self.build_state(p) for p in passes] if need_states else []
        rows = []
        for i, (ep, p) in enumerate(zip(episodes, passes)):
            if score is not None and i not in score:
                continue
            for cond in conditions:
                if cond == "full":
                    fp = history_passes(ep, self.renderer, WindowPolicy(budget=full_budget, reserve=policy.reserve))
                    if fp.write_passes:  # does not fit: no ceiling for this episode
                        continue
                    text, n = self.answer(fp, None, use_memory=False)
                elif cond == "window":
                    text, n = self.answer(p, None, use_memory=False)
                elif cond == "deltamem":
                    text, n = self.answer(p, states[i], use_memory=True)
                elif cond == "shuffled":
                    text, n = self.answer(p, states[(i + 1) % len(states)].rebased(), use_memory=True)
                elif cond == "counterfactual":
                    if not supports_counterfactual(ep):
                        continue
                    twin = history_passes(counterfactual(ep, 7_000 + i), self.renderer, policy)
                    text, n = self.answer(p, self.build_state(twin).rebased(), use_memory=True)
                elif cond == "empty":
                    text, n = self.answer(p, self.model.deltamem.zero_state(1), use_memory=True)
                else:
                    raise ValueError(f"unknown condition {cond!r}")
                rows.append({"episode": i, "condition": cond, "kind": ep.kind, "correct": contains_answer(
                    text, ep.aliases), "prediction": text, "gold": ep.answer, "prompt_tokens": n,
                    "fact_in_window": p.fact_in_window, "old_value": ep.meta.get("old_value"),
                    "says_old": bool(ep.meta.get("old_value")) and contains_answer(text, [ep.meta["old_value"]])})
        return rows
