"""`TrainConfig.writes="value_only"` (stage 1 of docs/training.md): the history passes write only the asked
value's tokens, the final pass writes nothing; the trainer runs with it on a tiny model and the real tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach, detach, forward_with_state
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import build_passes
from deltamem_agents.train.gates import asked_values, token_classes, value_token_labels
from deltamem_agents.datasets.sampler import EpisodeSampler
from deltamem_agents.train.trainer import TrainConfig, Trainer, run_passes
from deltamem_agents.train.writes import select_writes, value_only_passes
from tests.conftest import randomize_adapter
from tests.train.conftest import tiny_real_vocab

KINDS = ["colour", "food", "sport", "drink"]


def _run(model, passes, state):
    for ids, mids in passes:
        state = forward_with_state(model, torch.tensor([ids]), state, message_ids=torch.tensor([mids]),
                                   skip_lm_head=True, use_cache=False).state
    return state


@pytest.mark.parametrize("seed", [3, 11])
def test_value_only_state_is_the_value_tokens_write(real_tokenizer, seed):
    tok = real_tokenizer
    model = tiny_real_vocab(tok)
    adapter = attach(model, DeltaMemConfig(write_granularity="token", rank=4))
    randomize_adapter(adapter, seed=1)
    r = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    sampler = EpisodeSampler(tok, value_kinds=KINDS, mix={"fact": 1.0}, in_window_frac=0.0)
    ep = sampler.generate_one(seed, "train", mix={"fact": 1.0}, distance_range=(120, 120))
    p = build_passes(ep, r, WindowPolicy(budget=128, reserve=48))
    assert p.write_passes and not p.fact_in_window
    v = value_only_passes(p, ep, r)
    assert select_writes(p, ep, r, "runtime") is p
    # the written tokens, over every runtime pass, are exactly the asked value's tokens
    labels = value_token_labels(ep, r, asked_values(ep))
    masked = [(ids, [m if c == 1 else -1 for m, c in zip(mids, token_classes(mids, labels, len(ep.messages)))])
              for ids, mids in p.write_passes]
    written = [t for ids, mids in masked for t, m in zip(ids, mids) if m >= 0]
    assert 1 <= len(written) <= 8
    value = ep.meta["value"].lower()
    assert value in tok.decode(written).lower()
    assert all(tok.decode([t]).strip().lower() in value for t in written)
    assert [t for ids, mids in v.write_passes for t, m in zip(ids, mids) if m >= 0] == written
    assert len(v.write_passes) <= len(p.write_passes) and all(m < 0 for m in v.read_mids)
    with torch.no_grad():
        zero = adapter.zero_state(1)
        st = run_passes(model, v)[2]  # the state entering the final pass
        ref = _run(model, masked, zero)  # full runtime passes, every non-value token unwritten
        dense = _run(model, p.write_passes, zero)
        assert st.S.abs().max() > 0
        assert torch.allclose(st.S, ref.S, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(st.S, dense.S, atol=1e-4)  # the runtime's writes would differ
        # the final pass reads but leaves the state unchanged (the runtime's final pass writes the question)
        after = _run(model, [(v.read_ids, v.read_mids)], st)
        assert torch.equal(after.S, st.S)
        assert not torch.equal(_run(model, [(p.read_ids, p.read_mids)], st).S, st.S)


def _cfg(out, **kw) -> TrainConfig:
    base = dict(out_dir=str(out), steps=1, grad_accum=1, lr=1e-2, bf16=False, diag_every=1, diag_episodes=1,
                diag_budget=128, diag_distance=60, counterfactual=True, contrast_weight=1.0, writes="value_only",
                lr_schedule="constant", max_grad_norm=0.0, calibration_episodes=2,
                delta={"write_granularity": "token", "rank": 4, "beta_bias_init": 1.0, "center_inputs": True},
                sampler={"budget_range": (128, 128), "distance_start": 0, "distance_end": 0, "in_window_frac": 0.0,
                         "mix": {"fact": 1.0}, "value_kinds": KINDS})
    return TrainConfig(**{**base, **kw})


def test_trainer_value_only_step(real_tokenizer, tmp_path):
    model = tiny_real_vocab(real_tokenizer)
    tr = Trainer(model, real_tokenizer, _cfg(tmp_path))
    before = {n: p.detach().clone() for n, p in tr.adapter.named_parameters()}
    tr.train()
    assert any(not torch.equal(p, before[n]) for n, p in tr.adapter.named_parameters())
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert row["train_gap"] is not None and row["lr"] == 1e-2  # twin contrast ran; constant schedule
    assert row["counterfactual_gap"] == row["counterfactual_gap"]  # held-out twin diagnostic, not NaN
    detach(model)
    with pytest.raises(ValueError, match="token writes"):
        Trainer(model, real_tokenizer, _cfg(tmp_path / "b", delta={"write_granularity": "message_mean"}))
