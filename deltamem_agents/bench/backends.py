"""The benchmark backends: one protocol, `backend(ctx, item) -> Prepared`, same backbone, same visible budget.

  floor              the frozen backbone with no history at all (system + question)
  window             backbone + the runtime's visible window (the buffer baseline)
  full               backbone + the whole history if it fits `full_budget` (ceiling); otherwise a skipped row
  rag                backbone + a smaller window + top-k evicted messages retrieved by MiniLM/FAISS
                     (budget split in context.py)
  deltamem           window + the δ-state written over the whole history, exactly as the session runtime
  deltamem_rag       the rag prompt + the δ-state written under the rag window's policy
  deltamem_shuffled  the memory control: the deltamem prompt, read with the δ-state a *different* episode of
                     the same task (`item.donor`) holds at its question (its whole history written under the
                     same policy), and none of this item's own tokens written. The adapter and the state's
                     size are the same; only the memory's content differs, so only deltamem − shuffled may be
                     called memory. (The memory probe's `shuffled` keeps the item's own window writes; out of
                     the window both are controls for the evicted fact.)
  deltamem_rag_shuffled
                     the memory control of δ-mem + RAG: its prompt (retrieved messages included), read with the
                     state the donor episode holds under the RAG window's policy, writes off. δ-mem + RAG − this is
                     the hybrid's memory; the rest of its gain over RAG is the adapter reading retrieved text better.
  deltamem_frozen    the shuffled control's twin with the item's *own* content: the state written over the item's
                     whole history (window included, up to the generation prompt) beforehand, then the deltamem
                     prompt read with writes off. Same mechanics as deltamem_shuffled, so in the window, where
                     the runtime arm writes the visible fact while reading it, deltamem_frozen − deltamem_shuffled
                     is the memory measurement; out of the window it should reproduce deltamem.
  fact               the ceiling of the open-set suites: the plain backbone (δ-mem off) whose prompt is the system
                     prompt, the item's fact turns (`item.fact_turns`, in order: the statement and its
                     acknowledgement; for a tool's result the request, the tool call, the tool message and the
                     acknowledgement) and the question — nothing else. Items without fact turns get a skipped row
                     saying so (only the openset-* tasks have them).
memory_bytes / memory_kind: `delta_state` = δ-state tensor bytes (fp32; what a session persists),
`retrieved_text` = UTF-8 bytes of the retrieved context (the index size is in `index_bytes`),
`kv_cache` = the KV cache of the full-history prompt, `none` otherwise. Every row also has `kv_bytes`,
the KV cache of the prompt actually read, for all backends alike.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..runtime.window import WindowPolicy
from ..runtime.replay import EpisodePasses
from .context import BenchContext, Prepared
from .items import Item

Backend = Callable[[BenchContext, Item], Prepared]
DONOR_QUESTION = "Next question, please."


def floor(ctx: BenchContext, item: Item) -> Prepared:
    p = ctx.passes(item, ctx.policy(item), messages=())
    return Prepared(p.read_ids, p.read_mids, fields={"in_window": False, "evidence_visible": 0.0 if item.evidence
                                                     else None})


def window(ctx: BenchContext, item: Item) -> Prepared:
    p = ctx.passes(item, ctx.policy(item))
    return Prepared(p.read_ids, p.read_mids, fields=ctx.visibility(item, p))


def full(ctx: BenchContext, item: Item) -> Prepared:
    p = ctx.passes(item, ctx.policy(item, budget=max(ctx.full_budget, item.budget or 0)))
    if p.write_passes:
        return Prepared(skip=f"history does not fit the full-context budget ({ctx.full_budget} tokens)")
    return Prepared(p.read_ids, p.read_mids, memory_bytes=ctx.kv_bytes_per_token * len(p.read_ids),
                    memory_kind="kv_cache", fields=ctx.visibility(item, p))


def deltamem(ctx: BenchContext, item: Item) -> Prepared:
    p = ctx.passes(item, ctx.policy(item))
    st, secs = ctx.state(p)
    return Prepared(p.read_ids, p.read_mids, st, st.nbytes(), "delta_state", prep_s=secs,
                    fields={**ctx.visibility(item, p), "state_norm": float(st.norms().mean())})


def donor_passes(ctx: BenchContext, item: Item, policy: WindowPolicy) -> EpisodePasses:
    """The donor episode's passes under `policy`, up to a fixed placeholder question (so the donor's state does
    not depend on which item borrows it, and one LoCoMo conversation's state serves all of the next one's)."""
    donor = replace(item, messages=item.donor, question=DONOR_QUESTION, evidence=())
    return ctx.passes(donor, policy)


def deltamem_shuffled(ctx: BenchContext, item: Item) -> Prepared:
    if item.donor is None:
        return Prepared(skip="no other episode of this task to take a state from")
    pol = ctx.policy(item)
    p = ctx.passes(item, pol)
    st, secs = ctx.state(donor_passes(ctx, item, pol), whole=True)
    return Prepared(p.read_ids, p.read_mids, st.rebased(), st.nbytes(), "delta_state", prep_s=secs, write=False,
                    fields={**ctx.visibility(item, p), "state_norm": float(st.norms().mean()),
                            "donor_id": item.donor_id})


def deltamem_frozen(ctx: BenchContext, item: Item) -> Prepared:
    p = ctx.passes(item, ctx.policy(item))
    st, secs = ctx.state(p, whole=True)
    return Prepared(p.read_ids, p.read_mids, st.rebased(), st.nbytes(), "delta_state", prep_s=secs, write=False,
                    fields={**ctx.visibility(item, p), "state_norm": float(st.norms().mean())})


def _rag(ctx: BenchContext, item: Item, state: str | None) -> Prepared:
    """RAG's prompt; `state` None (plain RAG), "own" (δ-mem + RAG) or "donor" (its shuffled control)."""
    share = ctx.rag_tokens(item)
    pol = ctx.policy(item, shrink=share)
    p = ctx.passes(item, pol)
    donor = state == "donor"
    if donor:
        st, secs = ctx.state(donor_passes(ctx, item, pol), whole=True)
        st = st.rebased()
    else:
        st, secs = ctx.state(p) if state == "own" else (None, 0.0)
    text, picked, n_cands, index_s = ctx.retrieve(item, p, share)
    ids, mids = ctx.with_system(p, item, text)
    text_bytes = len(text.encode())
    fields = {**ctx.visibility(item, p, set(picked)), "retrieved": picked, "rag_tokens": share,
              "index_bytes": ctx.retriever.index_bytes(n_cands) if n_cands else 0}
    if st is None:
        return Prepared(ids, mids, None, text_bytes, "retrieved_text", fields, prep_s=index_s)
    fields["state_norm"] = float(st.norms().mean())
    if donor:
        fields["donor_id"] = item.donor_id
    return Prepared(ids, mids, st, st.nbytes() + text_bytes, "delta_state+retrieved_text", fields,
                    prep_s=secs + index_s, write=not donor)


def rag(ctx: BenchContext, item: Item) -> Prepared:
    return _rag(ctx, item, None)


def deltamem_rag(ctx: BenchContext, item: Item) -> Prepared:
    return _rag(ctx, item, "own")


def deltamem_rag_shuffled(ctx: BenchContext, item: Item) -> Prepared:
    if item.donor is None:
        return Prepared(skip="no other episode of this task to take a state from")
    return _rag(ctx, item, "donor")


def fact(ctx: BenchContext, item: Item) -> Prepared:
    if not item.fact_turns:
        return Prepared(skip=f"the fact backend needs the item's fact turns, which task {item.task!r} does not "
                             "mark (use an openset-* task)")
    turns = tuple(item.messages[i] for i in item.fact_turns)
    p = ctx.passes(item, ctx.policy(item, budget=max(ctx.full_budget, item.budget or 0)), messages=turns)
    if p.write_passes:
        return Prepared(skip=f"the fact turns do not fit the full-context budget ({ctx.full_budget} tokens)")
    return Prepared(p.read_ids, p.read_mids, memory_bytes=ctx.kv_bytes_per_token * len(p.read_ids),
                    memory_kind="kv_cache", fields={"in_window": True, "evidence_visible": 1.0})


BACKENDS: dict[str, Backend] = {"floor": floor, "window": window, "full": full, "rag": rag, "deltamem": deltamem,
                                "deltamem_rag": deltamem_rag, "deltamem_shuffled": deltamem_shuffled,
                                "deltamem_frozen": deltamem_frozen, "deltamem_rag_shuffled": deltamem_rag_shuffled,
                                "fact": fact}
NEEDS_ADAPTER = frozenset({"deltamem", "deltamem_rag", "deltamem_shuffled", "deltamem_frozen",
                           "deltamem_rag_shuffled"})
