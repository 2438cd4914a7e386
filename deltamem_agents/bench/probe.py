"""Memory-probe evaluation: a fact sits at a chosen distance before the question; greedy answers are scored.

Conditions on the *same* episodes and backbone:
  window         backbone alone, prompt = system + the runtime's visible window + question (the floor)
  deltamem       window + the δ-state written over the whole history, exactly as the session runtime does
  shuffled       window + a δ-state written from a *different* episode (the memory control)
  counterfactual window + the δ-state of the episode's twin whose asked value differs (the strictest control:
                 same relation, same words, another value; datasets/counterfactual.py)
  empty          window + δ-mem whose state starts empty at the window (adapter effect without memory)
  full           backbone alone with the entire history in the prompt (the ceiling, where it fits)
  deltamem_frozen / shuffled_frozen
                 the state written over the *whole* episode (history, window and question) beforehand — its own /
                 another episode's — then read with writes off. The in-window controls: with the fact in the window,
                 `shuffled` is no control at all (reading the window writes the fact into any state), so in-window
                 memory is `deltamem_frozen − shuffled_frozen` (same mechanics, only the state's content differs).
Only `deltamem − shuffled` (or `deltamem − counterfactual`, `deltamem_frozen − shuffled_frozen`) may be called
memory. Scores: normalised-contains of any gold alias.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence

from ..datasets.answers import contains_answer
from ..datasets.counterfactual import counterfactual, supports_counterfactual
from ..datasets.episode import Episode
from ..patching.context import disabled
from ..runtime.decode import Engine, GenerationConfig
from ..runtime.render import ChatRenderer
from ..runtime.window import WindowPolicy
from ..runtime.replay import EpisodePasses, history_passes

CONDITIONS = ("window", "deltamem", "shuffled", "counterfactual", "empty", "full")  # the default run
FROZEN = ("deltamem_frozen", "shuffled_frozen")  # on request (eval memory --conditions): the in-window controls
# also on request: a zero state read with writes off, so no state reaches the answer at all — the adapter's
# state-independent task path alone (config.task_rank; without one this is exactly the backbone)
EMPTY_FROZEN = "empty_frozen"
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
        self._states: OrderedDict[Hashable, Any] = OrderedDict()  # the last few written states, by caller's key

    def cached_state(self, key: Hashable | None, passes: EpisodePasses, keep: int = 4) -> Any:
        """`build_state(passes)`, reused when the same `key` (the caller's name for an episode, e.g. (distance, index))
        was written recently: a probe run pairs episode i with i + 1's state, so each state is used twice. States are
        never changed in place (each forward returns a new one), so sharing is safe."""
        if key is None:
            return self.build_state(passes)
        if key not in self._states:
            self._states[key] = self.build_state(passes)
            while len(self._states) > keep:
                self._states.popitem(last=False)
        self._states.move_to_end(key)
        return self._states[key]

    def build_state(self, passes: EpisodePasses) -> Any:
        """Write the history's epochs (all but the final window) into a fresh δ-state."""
        cur = self.engine.new_cursor(self.model.deltamem.zero_state(1))
        for ids, mids in passes.write_passes:
            cur = self.engine.new_cursor(cur.state)  # each epoch starts a fresh KV cache at position 0
            self.engine.forward(cur, ids, mids)
        return cur.state

    def build_full_state(self, passes: EpisodePasses, history_state: Any = None) -> Any:
        """The state after the whole episode (history epochs, then the final window and question) is written;
        `history_state` is `build_state(passes)` when the caller already has it."""
        cur = self.engine.new_cursor(history_state if history_state is not None else self.build_state(passes))
        self.engine.forward(cur, passes.read_ids, passes.read_mids)
        return cur.state

    def answer(self, passes: EpisodePasses, state: Any, *, use_memory: bool, write: bool = True) -> tuple[str, int]:
        msg_id = passes.read_mids[-1] if passes.read_mids else 0  # the reply continues its header's message (as the runtime)
        if use_memory:
            cur = self.engine.new_cursor(state, write=write)
            res = self.engine.generate(cur, passes.read_ids, passes.read_mids, msg_id, self.gen)
        else:
            with disabled():
                cur = self.engine.new_cursor(None)
                res = self.engine.generate(cur, passes.read_ids, passes.read_mids, msg_id, self.gen)
        return res.text, len(passes.read_ids)

    def run(self, episodes: list[Episode], policy: WindowPolicy, conditions: Iterable[str] = CONDITIONS,
            full_budget: int = 8192, score: set[int] | None = None,
            keys: Sequence[Hashable] | None = None) -> list[dict[str, Any]]:
        """One row per (scored episode, condition); unscored episodes only donate shuffled-control states.
        `keys` (one per episode, unique per episode content) lets consecutive calls reuse written states."""
        conditions = list(conditions)
        if keys is not None and len(keys) != len(episodes):
            raise ValueError(f"{len(keys)} keys for {len(episodes)} episodes")
        passes = [history_passes(ep, self.renderer, policy) for ep in episodes]
        need_states = any(c in conditions for c in ("deltamem", "shuffled"))
        states = [self.cached_state(keys[j] if keys is not None else None, p)
                  for j, p in enumerate(passes)] if need_states else []
        need_full = any(c in conditions for c in FROZEN)
        full_states = [self.build_full_state(p, states[j] if states else None)
                       for j, p in enumerate(passes)] if need_full else []
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
                elif cond == "deltamem_frozen":
                    text, n = self.answer(p, full_states[i].rebased(), use_memory=True, write=False)
                elif cond == "shuffled_frozen":
                    text, n = self.answer(p, full_states[(i + 1) % len(passes)].rebased(), use_memory=True,
                                          write=False)
                elif cond == "empty":
                    text, n = self.answer(p, self.model.deltamem.zero_state(1), use_memory=True)
                elif cond == EMPTY_FROZEN:
                    text, n = self.answer(p, self.model.deltamem.zero_state(1), use_memory=True, write=False)
                else:
                    raise ValueError(f"unknown condition {cond!r}")
                rows.append({"episode": i, "condition": cond, "kind": ep.kind, "correct": contains_answer(
                    text, ep.aliases), "prediction": text, "gold": ep.answer, "prompt_tokens": n,
                    "fact_in_window": p.fact_in_window, "old_value": ep.meta.get("old_value"),
                    "says_old": bool(ep.meta.get("old_value")) and contains_answer(text, [ep.meta["old_value"]])})
        return rows
