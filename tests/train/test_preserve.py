"""The preservation term (train/preserve.py): KL(backbone ‖ δ-mem) on the final pass's non-answer tokens is
exactly 0 without a state, positive with one, trains only the adapter, and is logged by the trainer."""

from __future__ import annotations

import json

import pytest
import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import IGNORE, EpisodePasses, build_passes
from deltamem_agents.train.preserve import preserve_kl, preserve_positions
from deltamem_agents.datasets.sampler import EpisodeSampler
from deltamem_agents.train.trainer import Trainer, run_passes
from tests.conftest import randomize_adapter
from tests.train.conftest import tiny_real_vocab
from tests.train.test_value_only_writes import KINDS, _cfg


@pytest.fixture(scope="module")
def setup(real_tokenizer):
    model = tiny_real_vocab(real_tokenizer, seed=4)
    ad = attach(model, DeltaMemConfig(write_granularity="token", rank=4, beta_bias_init=1.0))
    randomize_adapter(ad, seed=2, scale=2.0)
    sampler = EpisodeSampler(real_tokenizer, value_kinds=KINDS, mix={"fact": 1.0}, in_window_frac=0.0)
    ep = sampler.generate_one(5, "train", mix={"fact": 1.0}, distance_range=(60, 60))
    p = build_passes(ep, ChatRenderer(real_tokenizer, DEFAULT_SYSTEM_PROMPT), WindowPolicy(budget=128, reserve=48))
    assert p.write_passes, "the fact must have left the window"
    return model, ad, p


def test_positions_leave_out_exactly_the_answer(setup):
    _, _, p = setup
    pos = preserve_positions(p).tolist()
    answer = [t for t in range(len(p.labels) - 1) if p.labels[t + 1] != IGNORE]
    assert answer and not set(answer) & set(pos) and len(pos) + len(answer) == len(p.labels) - 1


def test_zero_without_a_state_positive_with_one_and_only_the_adapter_learns(setup):
    model, ad, p = setup
    no_writes = EpisodePasses([], p.read_ids, [-1] * len(p.read_ids), p.labels)
    hid: list[torch.Tensor] = []
    with torch.no_grad():
        run_passes(model, no_writes, state=ad.zero_state(1), hidden_out=hid)
    assert preserve_kl(model, no_writes, hid[0]).abs().item() < 1e-6  # zero state: δ-mem is the backbone
    hid = []
    run_passes(model, p, hidden_out=hid)  # the history's state, with its graph
    kl = preserve_kl(model, p, hid[0])
    assert kl.item() > 1e-4
    ad.zero_grad()
    kl.backward()
    grads = [q.grad for q in ad.parameters() if q.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(q.grad is None for n, q in model.named_parameters() if not n.startswith("deltamem."))


def test_trainer_logs_and_uses_the_preservation_term(real_tokenizer, tmp_path):
    model = tiny_real_vocab(real_tokenizer)
    tr = Trainer(model, real_tokenizer, _cfg(tmp_path, preserve_weight=1.0, writes="runtime"))
    tr.train()
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert row["preserve_kl"] is not None and row["preserve_kl"] >= 0
    assert row["diag_preserve_kl"] == row["diag_preserve_kl"] and row["diag_preserve_kl"] >= 0


def test_chat_ending_episodes_train_on_the_preservation_kl_only(real_tokenizer, tmp_path):
    model = tiny_real_vocab(real_tokenizer)
    tr = Trainer(model, real_tokenizer, _cfg(tmp_path, preserve_weight=1.0, chat_frac=1.0, writes="runtime",
                                              counterfactual=False, contrast_weight=0.0, diag_every=0))
    before = {n: p.detach().clone() for n, p in tr.adapter.named_parameters()}
    tr.train()
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert row["loss"] is None and row["chat_kl"] > 0  # no answer CE: the reply is the backbone's to write
    assert any(not torch.equal(p, before[n]) for n, p in tr.adapter.named_parameters())
    from deltamem_agents.patching import detach
    from deltamem_agents.train.plot import plot_log

    plot_log(tmp_path / "log.jsonl", tmp_path / "loss.png")  # a step without CE does not break the plot
    assert (tmp_path / "loss.png").stat().st_size > 0
    detach(model)
    with pytest.raises(ValueError, match="preserve_weight"):
        Trainer(model, real_tokenizer, _cfg(tmp_path / "b", chat_frac=0.5, writes="runtime"))


def test_positions_with_the_answer_are_every_position(setup):
    _, _, p = setup
    assert preserve_positions(p, include_answer=True).tolist() == list(range(len(p.read_ids) - 1))


def test_chat_draw_is_seeded_per_call_and_honours_the_fraction():
    from deltamem_agents.train.preserve import chat_draw

    draws = [chat_draw(3, 7, c, 0.5) for c in range(200)]
    again = [chat_draw(3, 7, c, 0.5) for c in range(200)]
    assert [d is None for d in draws] == [d is None for d in again]  # the same episodes end in chit-chat
    assert [d.random() for d in draws if d] == [d.random() for d in again if d]  # and pick the same chit-chat
    assert 60 < sum(d is not None for d in draws) < 140
    assert all(chat_draw(3, 7, c, 0.0) is None for c in range(50))
    assert all(chat_draw(3, 7, c, 1.0) is not None for c in range(50))
    assert [chat_draw(3, 8, c, 0.5) is None for c in range(200)] != [d is None for d in draws]  # per step
