"""The trainer on the real backbone: only δ-mem trains, counterfactual twins run, checkpoints resume."""

from __future__ import annotations

import json

import pytest
import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.train.trainer import TrainConfig, Trainer

SAMPLER = {"budget_range": (128, 160), "distance_start": 10, "distance_end": 40, "in_window_frac": 0.0,
           "mix": {"fact": 1.0}}


def _config(out, **kw) -> TrainConfig:
    base = dict(out_dir=str(out), steps=2, grad_accum=1, lr=1e-2, diag_every=1, diag_episodes=2, diag_budget=128,
                diag_distance=60, counterfactual=True, contrast_weight=1.0, sparsity_weight=1.0, gate_weight=1.0, sampler=SAMPLER)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def fresh_backbone():
    return load_backbone()  # a private copy: the trainer casts to bf16 and attaches δ-mem in place


def test_twin_step_trains_only_the_adapter_and_resumes(tmp_path, fresh_backbone):
    model, tok = fresh_backbone
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "layers.3." in n}
    tr = Trainer(model, tok, _config(tmp_path, steps=1))
    before = {n: p.detach().clone() for n, p in tr.adapter.named_parameters()}
    tr.train()
    moved = [n for n, p in tr.adapter.named_parameters() if not torch.equal(p, before[n])]
    assert moved, "no δ-mem parameter changed"
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p.float(), frozen[n].to(p.dtype).float()), n
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert row["step"] == 1 and row["train_gap"] is not None  # the twin contrast ran
    assert row["gate_loss"] is not None and row["gate_loss"] > 0  # gate supervision ran
    for key in ("memory_gap", "counterfactual_gap", "diag_loss_counterfactual"):
        assert row[key] == row[key], key  # logged and not NaN
    # resume: a new trainer picks up the checkpoint and continues to step 2
    from deltamem_agents.patching import detach

    detach(model)
    tr2 = Trainer(model, tok, _config(tmp_path, steps=2))
    assert tr2.step == 1
    for n, p in tr2.adapter.named_parameters():
        assert torch.equal(p, dict(tr.adapter.named_parameters())[n]), n
    tr2.train()
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["wall_seconds"] > rows[0]["wall_seconds"]


def test_fact_messages_and_unit_order():
    from deltamem_agents.core.state import DeltaState
    from deltamem_agents.datasets.synthetic import generate
    from deltamem_agents.runtime.replay import closed_message_ids
    from deltamem_agents.train.gates import fact_messages

    upd = generate(1, seed=2, split="train", mix={"update": 1}, distance_range=(80, 80))[0]
    pos = fact_messages(upd)
    assert {upd.fact_index, upd.meta["old_fact_index"]} <= pos
    assert all(upd.meta["value"].lower() in upd.messages[i]["content"].lower()
               or upd.meta["old_value"].lower() in upd.messages[i]["content"].lower() for i in pos)
    multi = generate(1, seed=2, split="train", mix={"multi": 1}, distance_range=(80, 80))[0]
    assert set(multi.meta["fact_indices"]) <= fact_messages(multi)
    from deltamem_agents.core.segments import Segments

    def units(mids, pend_id, pend_count):
        st = DeltaState(torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 3), torch.tensor([float(pend_count)]),
                        torch.tensor([pend_id]))
        ids = torch.tensor([mids])
        seg = Segments.build(torch.ones_like(ids, dtype=torch.bool), ids, message_mode=True,
                             pend_id=st.pend_id, pend_count=st.pend_count)
        return closed_message_ids(seg.closed_mask[0], mids, st)

    assert units([-1, -1, 0, 0, 1, 2, 2], -1, 0) == [0, 1]  # first call: nothing carried; 2 stays open
    assert units([-1, 5, 5, 6], 4, 3) == [4, 5]  # carried 4 closes first, then 5; 6 stays open
    assert units([4, 4, 5, 6], 4, 3) == [4, 5]  # the call continues the carried message 4
    assert units([-1, -1, 7], 6, 0) == []  # nothing carried, the only new message stays open


def test_centred_inputs_are_calibrated_saved_and_keep_zero_state_exact(tmp_path):
    from safetensors.torch import load_file

    from deltamem_agents.patching import forward_with_state

    from deltamem_agents.patching import disabled

    model, tok = load_backbone()
    ids = torch.tensor([tok("Hello, I live in Porto.")["input_ids"]])
    delta = {"write_granularity": "message_mean", "beta_bias_init": -2.0, "center_inputs": True}
    tr = Trainer(model, tok, _config(tmp_path, steps=1, delta=delta, calibration_episodes=2, diag_every=0))
    centres = torch.stack([layer.input_center for layer in tr.adapter.layers])
    assert centres.norm(dim=1).min() > 0.1  # calibrated, one centre per layer, all different
    assert not torch.allclose(centres[0], centres[-1])
    with torch.no_grad():  # a zero state still reads nothing: the backbone's logits, whatever the centre
        out = forward_with_state(model, ids, None, write=False)
        with disabled():
            base = model(ids).logits
    assert torch.equal(out.outputs.logits, base)
    tr.train()
    saved = load_file(str(tmp_path / "checkpoint-last" / "adapter" / "adapter.safetensors"))
    torch.testing.assert_close(saved["layers.3.input_center"], tr.adapter.layers[3].input_center)


def test_recency_contrast_reads_old_and_new_answers_with_one_state(tmp_path, fresh_backbone):
    """Update episodes get the recency term (old value's answer CE − new value's, same state and prompt);
    fact episodes do not; an 'update' whose old value equals the new one has a gap of exactly 0."""
    import dataclasses

    from deltamem_agents.patching import detach
    from deltamem_agents.runtime.replay import build_passes
    from deltamem_agents.train.trainer import run_passes

    from deltamem_agents.patching.attach import ATTR

    model, tok = fresh_backbone
    if hasattr(model, ATTR):  # the first test leaves its trainer's adapter attached
        detach(model)
    upd = {**SAMPLER, "mix": {"update": 1.0}}
    tr = Trainer(model, tok, _config(tmp_path / "u", steps=1, recency_weight=1.0, gate_weight=0.0, sampler=upd))
    tr.train()
    row = json.loads((tmp_path / "u" / "log.jsonl").read_text().splitlines()[0])
    assert row["recency_gap"] is not None and row["recency_gap"] == row["recency_gap"]
    ep, pol = tr.sampler.sample(5, 0)
    assert ep.meta["old_value"].lower() != ep.meta["value"].lower()
    p = build_passes(ep, tr.renderer, pol)
    with torch.no_grad():
        new_loss, _, entering, _ = run_passes(model, p)
        gap = tr._recency_gap(ep, pol, new_loss, entering)
        same = dataclasses.replace(ep, meta={**ep.meta, "old_value": ep.meta["value"]})
        q = p.read_only()
        again = run_passes(model, q, state=entering.rebased())[0]
        assert torch.allclose(tr._recency_gap(same, pol, again, entering), torch.zeros(()), atol=1e-5)
    assert gap.abs() > 0
    detach(model)
    tr2 = Trainer(model, tok, _config(tmp_path / "f", steps=1, recency_weight=1.0, gate_weight=0.0))
    tr2.train()
    row = json.loads((tmp_path / "f" / "log.jsonl").read_text().splitlines()[0])
    assert row["recency_gap"] is None  # fact episodes: no old value, no term
    detach(model)


def test_frozen_gates_stay_put_while_the_read_path_trains(tmp_path, fresh_backbone):
    """`freeze_gates`: one step with token writes moves the read path and leaves every beta_proj / beta_bias
    exactly as initialised; asking for gate supervision at the same time is refused."""
    from deltamem_agents.patching import detach
    from deltamem_agents.patching.attach import ATTR

    model, tok = fresh_backbone
    if hasattr(model, ATTR):
        detach(model)
    delta = {"write_granularity": "token", "write_threshold": 0.5, "beta_bias_init": 0.5}
    with pytest.raises(ValueError, match="freeze_gates"):
        Trainer(model, tok, _config(tmp_path / "bad", steps=1, delta=delta, freeze_gates=True))  # before attaching
    tr = Trainer(model, tok, _config(tmp_path, steps=1, delta=delta, freeze_gates=True, gate_weight=0.0,
                                     sparsity_weight=0.0, diag_every=0))
    before = {n: p.detach().clone() for n, p in tr.adapter.named_parameters()}
    tr.train()
    gates = [n for n in before if n.endswith(("beta_proj", "beta_bias"))]
    moved = [n for n, p in tr.adapter.named_parameters() if not torch.equal(p, before[n])]
    assert gates and moved and not set(gates) & set(moved)
    assert any(n.endswith("memory_q_proj") for n in moved)
    detach(model)
