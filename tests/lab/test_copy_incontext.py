"""lab.copy_incontext trains the copy channel on the runtime's features through its own functions: over a session's
passes they give the product's logits and state (a tiny random Llama, message gate, token keys)."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from deltamem_agents.core import copy as cp
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach, forward_with_state
from lab.copy_incontext import episode_loss, negative_loss, run_passes, with_distractor
from tests.conftest import randomize_adapter
from tests.patching.test_copy_channel import _model


def test_run_passes_equals_the_product_over_a_session(one_thread):
    model = _model(tied=True, seed=4)
    adapter = attach(model, DeltaMemConfig(rank=3, write_threshold=0.3, copy_rank=5, copy_gate="message",
                                           copy_gate_hidden=8, copy_tok_rank=3))
    randomize_adapter(adapter, seed=5, scale=0.4)
    with torch.no_grad():
        adapter.copy.mgate[2].bias.fill_(1.0)
        adapter.copy.gate.bias.fill_(1.0)
    g = torch.Generator().manual_seed(6)
    passes, st = [], None
    for T, first in ((13, 0), (11, 2)):  # two passes: a system prompt (never written), then messages
        ids = torch.randint(0, 97, (T,), generator=g)
        mids = torch.tensor([-1] * 3 + [first + (t // 4) for t in range(T - 3)])
        with torch.no_grad():
            o = forward_with_state(model, ids[None], st, message_ids=mids[None])
        st = o.state
        passes.append({"h": o.copy.h[0], "ids": ids, "mids": mids, "written": mids >= 0,
                       "target": (torch.arange(T) % 5 == 0).float()})
    E = model.get_input_embeddings().weight
    with torch.no_grad():
        _, reads, C = run_passes(adapter.copy, E, passes)
        h = passes[-1]["h"]
        logits = F.linear(h, E) + cp.read_generic(E, cp.embedding_norms(E), adapter.copy.gain(h) * reads)
    torch.testing.assert_close(C, st.C, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, o.outputs.logits[0], rtol=1e-4, atol=1e-4)
    # the loss reaches the gate, the keys and the token part
    passes[-1]["labels"] = torch.cat([torch.full((8,), -100), passes[-1]["ids"][8:]])
    ce, bce = episode_loss(adapter.copy, E.detach(), cp.embedding_norms(E), lambda x: F.linear(x, E.detach()),
                           {"passes": passes})
    (ce + bce).backward()
    for p in (adapter.copy.mgate[0].weight, adapter.copy.wk.weight, adapter.copy.wt.weight, adapter.copy.mix):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # another history's state: the KL to the backbone is positive and reaches the read; with a zero state it is 0
    adapter.zero_grad(set_to_none=True)
    head = lambda x: F.linear(x, E.detach())  # noqa: E731
    kl = negative_loss(adapter.copy, E.detach(), cp.embedding_norms(E), head, {"passes": passes[:1]},
                       {"passes": passes})
    kl.backward()
    assert float(kl) > 0 and adapter.copy.wq.weight.grad.abs().sum() > 0
    silent = {"passes": [dict(passes[0], written=torch.zeros_like(passes[0]["written"]))]}
    last = dict(passes[-1], written=torch.zeros_like(passes[-1]["written"]))
    with torch.no_grad():
        assert float(negative_loss(adapter.copy, E, cp.embedding_norms(E), head, silent, {"passes": [last]})) < 1e-6


def test_a_distractor_adds_another_facts_write_passes_and_keeps_the_read_pass():
    data = [{"kind": k, "passes": [f"{i}w0", f"{i}w1", f"{i}read"]} for i, k in enumerate("abab")]
    seen = set()
    for seed in range(20):
        ex = with_distractor(random.Random(seed), data, 0)
        assert ex["passes"][-1] == "0read" and ex["kind"] == "a"
        assert sorted(ex["passes"]) == sorted(["0w0", "0w1", "0read", "2w0", "2w1"])  # the other "a", not its read
        seen.add(ex["passes"][0])
    assert seen == {"0w0", "2w0"}  # before and after
    assert data[0]["passes"] == ["0w0", "0w1", "0read"]  # the pool is not changed


def test_closed_kind_histories_hold_their_value_verbatim_and_answer_as_the_probe():
    import argparse

    from lab.copy_incontext import closed_items

    items = closed_items(argparse.Namespace(seed=3, closed=6, lo=40, hi=120))
    assert len(items) == 6
    for messages, fact_index, value, question, answer, kind in items:
        assert value in messages[fact_index]["content"] and kind == "closed"
        assert answer.rstrip(".").lower() == value.lower() and question
