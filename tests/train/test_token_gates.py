"""Token-level write-gate supervision: value-token labels on the real tokenizer, the balanced BCE, and the gate
fit that teaches selective token writes which tokens to store."""

from __future__ import annotations

import copy

import pytest
import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.datasets.episode import Episode
from deltamem_agents.patching import attach
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import build_passes
from deltamem_agents.train.gates import token_gate_loss, value_token_labels
from lab.write_selector import fit_write_gates, gate_passes, selector_report


def episode() -> Episode:
    msgs = [{"role": "user", "content": "By the way, my favourite colour is Teal, not navy."},
            {"role": "assistant", "content": "Noted!"},
            {"role": "user", "content": "The weather was grim all week, honestly."},
            {"role": "assistant", "content": "Sorry to hear that."}]
    return Episode(kind="fact", messages=msgs, question="What is my favourite colour?", answer="teal", aliases=(),
                   fact_index=0, meta={"value": "teal", "relation": "favourite_colour"})


@pytest.fixture(scope="module")
def renderer(real_backbone):
    return ChatRenderer(real_backbone[1], DEFAULT_SYSTEM_PROMPT)


def test_labels_mark_exactly_the_value_tokens(renderer):
    ep = episode()
    labels = value_token_labels(ep, renderer)
    assert set(labels) == {0}  # only the message that mentions the value
    text, ids, spans = renderer.message_block(ep.messages[0])
    assert ids == renderer.message_ids(ep.messages[0])
    marked = "".join(text[a:b] for (a, b), y in zip(spans, labels[0]) if y)
    assert marked.strip().lower() == "teal"  # case-insensitive, whole word, not "navy" or the header


def test_balanced_bce_prefers_the_labelled_tokens(renderer):
    ep = episode()
    labels = value_token_labels(ep, renderer)
    ids = renderer.message_ids(ep.messages[0])
    mids = [-1] * 3 + [0] * len(ids)  # three unwritten (system) tokens, then message 0
    lab = [False] * 3 + labels[0]
    good = torch.tensor([0.9 if y else 0.01 for y in lab]).view(1, -1, 1, 1).expand(1, len(lab), 1, 2)
    bad = 1 - good
    mask = torch.ones(1, len(lab), dtype=torch.bool)
    lg = token_gate_loss([({0: (good, mask)}, mids, None)], labels, len(ep.messages), 0.9, 0.01)
    lb = token_gate_loss([({0: (bad, mask)}, mids, None)], labels, len(ep.messages), 0.9, 0.01)
    # at the targets the loss is the targets' own entropy H(0.9) + H(0.01) (its minimum), far below the inverse
    assert lg is not None and lb is not None and 3.0 < lb.item()
    ent = lambda p: -(p * torch.log(torch.tensor(p)) + (1 - p) * torch.log(torch.tensor(1 - p)))  # noqa: E731
    assert abs(lg.item() - (ent(0.9) + ent(0.01)).item()) < 1e-4


def test_fit_raises_value_recall_and_lowers_false_writes(real_backbone, renderer):
    model, tok = real_backbone
    model = copy.deepcopy(model)
    torch.manual_seed(0)
    attach(model, DeltaMemConfig(write_granularity="token", write_threshold=0.5, beta_bias_init=-4.6))
    pol = WindowPolicy(budget=96, reserve=32)
    data = [(episode(), pol)] * 8
    before = selector_report(model, renderer, data[:1], 0.5)
    fit_write_gates(model, renderer, iter(data), steps=8, batch=1, lr=5e-2, progress=False)
    after = selector_report(model, renderer, data[:1], 0.5)
    assert before.n_pos >= 1 and sum(before.recall) == 0  # nothing selected at β ≈ 0.01
    assert sum(after.recall) / len(after.recall) > 0.5  # most layers now store the value token
    assert max(after.false_rate) < 0.2
    # the fit only moved the gates
    calls = gate_passes(model, build_passes(episode(), renderer, pol), False)
    assert all(g.shape[-1] == 8 for gates, _, _ in calls for g, _ in gates.values())


def test_an_update_marks_the_old_value_where_stated_not_where_superseded(renderer, real_backbone):
    from deltamem_agents.datasets.sampler import EpisodeSampler

    sampler = EpisodeSampler(real_backbone[1], value_kinds=["colour", "food", "sport", "drink"])
    checked = 0
    for seed in range(40):  # training and held-out update templates; some name the old value after the new one
        for split in ("train", "heldout"):
            ep = sampler.generate_one(seed, split, mix={"update": 1.0}, distance_range=(0, 0))
            old, new = ep.meta["old_value"].lower(), ep.meta["value"].lower()
            labels = value_token_labels(ep, renderer)
            squash = lambda t: t.lower().replace(" ", "")  # noqa: E731
            for i, lab in labels.items():
                text, _, spans = renderer.message_block(ep.messages[i])
                marked = squash("".join(text[a:b] for (a, b), y in zip(spans, lab) if y))
                said = squash(ep.messages[i]["content"])
                if i < ep.fact_index:  # the first statement (and its acknowledgement): the old value is written
                    assert (squash(old) in marked) == (squash(old) in said)
                elif squash(old) not in squash(new):  # from the update on, only the new value is a write target
                    assert squash(old) not in marked
                    assert (squash(new) in marked) == (squash(new) in said)
                    checked += squash(old) in said
    assert checked >= 5  # the wording that names the old value in the update was exercised


def update_episode() -> Episode:
    msgs = [{"role": "user", "content": "My favourite colour is navy."},
            {"role": "assistant", "content": "Noted!"},
            {"role": "user", "content": "Scratch that, teal has replaced navy as my top colour."},
            {"role": "assistant", "content": "Got it."}]
    return Episode(kind="update", messages=msgs, question="What is my favourite colour?", answer="teal", aliases=(),
                   fact_index=2, meta={"value": "teal", "old_value": "navy", "relation": "favourite_colour"})


def test_superseded_mentions_are_a_class_of_their_own_when_weighted(renderer):
    from deltamem_agents.train.gates import superseded_token_labels, token_classes

    ep = update_episode()
    labels, hard = value_token_labels(ep, renderer), superseded_token_labels(ep, renderer)
    assert set(labels) == {0, 2} and set(hard) == {2}  # the first statement of navy is a fact, not superseded
    text, _, spans = renderer.message_block(ep.messages[2])
    assert "".join(text[a:b] for (a, b), y in zip(spans, hard[2]) if y).strip().lower() == "navy"
    assert "".join(text[a:b] for (a, b), y in zip(spans, labels[2]) if y).strip().lower() == "teal"

    n = len(spans)
    mids = [-1] * 2 + [2] * n
    assert 2 not in token_classes(mids, labels, len(ep.messages))  # unweighted: among the other negatives
    cls = token_classes(mids, labels, len(ep.messages), hard)
    assert [c for c in cls[2:]] == [1 if p else 2 if h else 0 for p, h in zip(labels[2], hard[2])]

    # a gate that writes the value tokens, the superseded one included, vs one that writes only the new value
    writes_old = torch.tensor([0.01] * 2 + [0.9 if (p or h) else 0.01 for p, h in zip(labels[2], hard[2])])
    writes_new = torch.tensor([0.01] * 2 + [0.9 if p else 0.01 for p in labels[2]])
    mask = torch.ones(1, len(mids), dtype=torch.bool)

    def loss(g, w):
        g = g.view(1, -1, 1, 1).expand(1, len(mids), 1, 2)
        return token_gate_loss([({0: (g, mask)}, mids, None)], labels, len(ep.messages), 0.9, 0.01, hard, w).item()

    # weight 0 is the loss as before (v8's recipe), where writing the old value costs only a diluted negative
    assert loss(writes_old, 0.0) == pytest.approx(
        token_gate_loss([({0: (writes_old.view(1, -1, 1, 1).expand(1, len(mids), 1, 2), mask)}, mids, None)],
                        labels, len(ep.messages), 0.9, 0.01))
    gap0 = loss(writes_old, 0.0) - loss(writes_new, 0.0)
    gap1 = loss(writes_old, 1.0) - loss(writes_new, 1.0)
    # on its own the superseded class costs its full BCE above its minimum (≈ 2.2 nats at 0.9 for a target of 0.01),
    # 17× what it cost diluted among the other negatives of this one message (in an episode: hundreds of them)
    assert gap0 > 0 and gap1 > gap0 + 2.0
