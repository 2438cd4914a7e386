"""What every backend shares: one loaded model, the runtime's window replay, cached δ-states, retrieval, decoding.

Budgets. Every backend sees at most the same visible budget B (the run's `--budget`, or the item's own budget
for in-window conditions): the prompt = system prompt + window + question, with `reserve` tokens kept free
for the reply, exactly as the session runtime's `WindowPolicy` does. The RAG backends split B explicitly:
`rag_tokens = int(rag_share · B)` go to retrieved messages (appended to the system prompt under
"Relevant earlier conversation:"), and the window is planned with `WindowPolicy(B − rag_tokens)`. δ-mem + RAG
uses the same smaller window and writes its state under that same policy (what a runtime with that window
would have written). Only `full` uses the larger full-context budget (its ceiling role).

Retrieval (`rag_scope="evicted"`, the default): the messages that left the (smaller) window are embedded; the
top `4·rag_k` by similarity to the question are taken best first while they fit `rag_tokens`, at most `rag_k`,
and shown in chronological order.
The retrieved context is read but never written into a δ-state (those messages were written once already).
`rag_scope="all"` searches every history message instead, window included — a vector-store memory kept beside a
buffer, which is how RAG can still help when the whole conversation fits (the in-window RAG condition: the
fact turn is retrieved and shown again in the system prompt).

δ-states are built exactly as `MemoryProbe.build_state` (every window epoch before the final one, fresh KV
cache per epoch); the final epoch (system + window + question) is then read *and written* during answering,
and the reply's tokens carry the generation prompt's message id, as `SessionRunner.respond` does. States are
cached by the exact token content of their write passes, so a LoCoMo conversation is written once for all
its questions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..core.state import DeltaState
from ..patching.context import disabled
from ..runtime.decode import Engine, GenerationConfig
from ..runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from ..runtime.window import WindowPolicy
from ..runtime.replay import EpisodePasses, history_passes
from .items import Item
from .probe import MemoryProbe

RAG_HEADER = "Relevant earlier conversation:\n"
RAG_SCOPES = ("evicted", "all")
_ROLE = {"user": "User", "assistant": "Assistant", "tool": "Tool"}


@dataclass
class Prepared:
    """A backend's prompt for one item: token ids, message ids, the δ-state to read (None = δ-mem off)."""

    ids: list[int] = field(default_factory=list)
    mids: list[int] = field(default_factory=list)
    state: DeltaState | None = None
    memory_bytes: int = 0
    memory_kind: str = "none"
    fields: dict[str, Any] = field(default_factory=dict)
    write: bool = True  # False: the prompt and the answer are read with `state` but never written into it
    skip: str | None = None  # reason this backend cannot answer the item (row is written, marked)
    prep_s: float = 0.0  # seconds spent building memory (uncached δ-state writes)


class BenchContext:
    def __init__(self, model: Any, tokenizer: Any, *, budget: int, reserve: int = 48, full_budget: int = 8192,
                 rag_k: int = 3, rag_share: float = 1 / 3, rag_scope: str = "evicted", retriever: Any = None
                 ) -> None:
        if not 0.0 < rag_share < 1.0:
            raise ValueError("rag_share must be in (0, 1)")
        if rag_scope not in RAG_SCOPES:
            raise ValueError(f"rag_scope must be one of {RAG_SCOPES}, not {rag_scope!r}")
        self.rag_scope = rag_scope
        self.model, self.tok = model, tokenizer
        self.engine = Engine(model, tokenizer)
        self.budget, self.reserve, self.full_budget = budget, reserve, full_budget
        self.rag_k, self.rag_share = rag_k, rag_share
        self._retriever = retriever
        self._renderers: dict[str, ChatRenderer] = {}
        self._probe: MemoryProbe | None = None
        self._states: dict[str, DeltaState] = {}
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        dtype_bytes = next(model.parameters()).element_size()
        self.kv_bytes_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * dtype_bytes

    # --- prompts ---------------------------------------------------------------------------------------
    def renderer(self, system_prompt: str) -> ChatRenderer:
        if system_prompt not in self._renderers:
            if len(self._renderers) > 64:
                self._renderers.clear()
            self._renderers[system_prompt] = ChatRenderer(self.tok, system_prompt)
        return self._renderers[system_prompt]

    def policy(self, item: Item, budget: int | None = None, shrink: int = 0) -> WindowPolicy:
        return WindowPolicy(budget=(budget or item.budget or self.budget) - shrink, reserve=self.reserve)

    def passes(self, item: Item, policy: WindowPolicy, messages: tuple[dict, ...] | None = None) -> EpisodePasses:
        """The runtime's passes for the item's history (or another history, e.g. the shuffled donor's)."""
        return history_passes(item.episode(messages), self.renderer(item.system_prompt), policy)

    def history_tokens(self, item: Item) -> int:
        r = self.renderer(item.system_prompt)
        return sum(len(r.message_ids(m)) for m in item.messages)

    def visibility(self, item: Item, p: EpisodePasses, extra: set[int] = frozenset()) -> dict[str, Any]:
        """Is the answer's evidence in the window (and in the window or retrieved)?"""
        start = p.epochs[-1].start if p.epochs else 0
        seen = [e >= start or e in extra for e in item.evidence]
        return {"in_window": bool(item.evidence) and all(e >= start for e in item.evidence),
                "evidence_visible": sum(seen) / len(seen) if seen else None, "window_start": start}

    # --- memory ----------------------------------------------------------------------------------------
    def state(self, p: EpisodePasses, *, whole: bool = False) -> tuple[DeltaState, float]:
        """(δ-state after the history's evicted epochs, seconds spent writing it; 0 when cached).
        `whole=True`: the final window is written too (up to the generation prompt), i.e. the state the
        session holds once the question has been read: every history message committed."""
        key = hashlib.sha1(json.dumps([p.write_passes, p.read_ids if whole else None]).encode()).hexdigest()
        if key in self._states:
            return self._states[key], 0.0
        if self._probe is None:
            self._probe = MemoryProbe(self.model, self.tok, self.renderer(DEFAULT_SYSTEM_PROMPT))
        t = time.perf_counter()
        st = self._probe.build_state(p)
        if whole:
            answer_mid = max(p.read_mids)  # the generation prompt's message id (after the question)
            cut = p.read_mids.index(answer_mid)
            cur = self.engine.new_cursor(st)
            self.engine.forward(cur, p.read_ids[:cut], p.read_mids[:cut])
            st = cur.state
        if len(self._states) > 256:
            self._states.clear()
        self._states[key] = st
        return st, time.perf_counter() - t

    @property
    def retriever(self) -> Any:
        if self._retriever is None:
            from .retrieval import MiniLMRetriever

            self._retriever = MiniLMRetriever()
        return self._retriever

    def rag_tokens(self, item: Item) -> int:
        return int(self.rag_share * (item.budget or self.budget))

    def retrieve(self, item: Item, p: EpisodePasses, share: int) -> tuple[str, list[int], int, float]:
        """(context text, retrieved message indices in chronological order, candidate count, seconds spent
        embedding new candidates) for the messages that left the window: top-k by MiniLM similarity to the
        question, as many as fit in `share` tokens (`rag_scope="all"`: every history message is a candidate)."""
        start = p.epochs[-1].start if p.epochs else 0
        pool = item.messages if self.rag_scope == "all" else item.messages[:start]
        cands = [(i, f"{_ROLE[m['role']]}: {m['content'].strip()}") for i, m in enumerate(pool)
                 if m["role"] in _ROLE and m.get("content", "").strip()]
        if not cands:
            return "", [], 0, 0.0
        t = time.perf_counter()
        self.retriever.embed([c for _, c in cands])  # indexing the evicted messages: memory building, cached
        index_s = time.perf_counter() - t
        count = lambda s: len(self.tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
        order = self.retriever.top_k(item.query or item.question, [t for _, t in cands], 4 * self.rag_k)
        used, picked = count(RAG_HEADER), []
        for j in order:
            cost = count(f"- {cands[j][1]}\n")
            if used + cost <= share:
                picked.append(j)
                used += cost
            if len(picked) == self.rag_k:
                break
        if not picked:
            return "", [], len(cands), index_s
        picked.sort()
        text = RAG_HEADER + "\n".join(f"- {cands[j][1]}" for j in picked)
        return text, [cands[j][0] for j in picked], len(cands), index_s

    def with_system(self, p: EpisodePasses, item: Item, context: str) -> tuple[list[int], list[int]]:
        """The final read pass with `context` appended to the system prompt (not written: message id -1)."""
        old = len(self.renderer(item.system_prompt).system_ids)
        sys_ids = ChatRenderer(self.tok, f"{item.system_prompt}\n\n{context}").system_ids if context else \
            self.renderer(item.system_prompt).system_ids
        return list(sys_ids) + p.read_ids[old:], [-1] * len(sys_ids) + p.read_mids[old:]

    # --- answering -------------------------------------------------------------------------------------
    def generate(self, prep: Prepared, max_new_tokens: int) -> str:
        """Greedy answer; with a state the prompt is read (and written, unless `prep.write` is False) as the
        runtime does; without one, the plain backbone."""
        gen = GenerationConfig(max_new_tokens=max_new_tokens)
        # the reply's tokens carry the generation prompt's message id, as in SessionRunner.respond
        mids, msg_id = (prep.mids, max(prep.mids)) if prep.write else ([-1] * len(prep.ids), -1)
        if prep.state is not None:
            return self.engine.generate(self.engine.new_cursor(prep.state), prep.ids, mids, msg_id, gen).text
        with disabled():
            return self.engine.generate(self.engine.new_cursor(None), prep.ids, prep.mids, msg_id, gen).text
