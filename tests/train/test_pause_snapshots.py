"""`stop_at` pauses a run on the schedule of its full `steps` and `snapshot_every` keeps intermediate adapters:
a run paused at step 2 and resumed to 3 ends with exactly the adapter of a run that never paused, and the kept
step-2 adapter is the paused run's (an ablation arm can be stopped where its baseline was measured)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from deltamem_agents.train.trainer import Trainer
from tests.train.conftest import tiny_real_vocab
from tests.train.test_value_only_writes import _cfg


def _run(tok, out, **kw) -> Trainer:
    tr = Trainer(tiny_real_vocab(tok, seed=2), tok, _cfg(out, steps=3, diag_every=0, lr_schedule="cosine",
                                                           warmup_frac=0.34, **kw))
    tr.train()
    return tr


def test_paused_and_resumed_run_equals_an_uninterrupted_one(real_tokenizer, tmp_path):
    straight = _run(real_tokenizer, tmp_path / "a")
    paused = _run(real_tokenizer, tmp_path / "b", stop_at=2, snapshot_every=1)
    assert paused.step == 2
    assert json.loads((tmp_path / "b/checkpoint-last/trainer_state.json").read_text())["step"] == 2
    assert sorted(p.name for p in (tmp_path / "b").glob("adapter-step*")) == ["adapter-step1", "adapter-step2"]
    kept = load_file(str(tmp_path / "b/adapter-step2/adapter.safetensors"))
    for n, p in paused.adapter.state_dict().items():
        assert torch.equal(kept[n], p.float()), n
    resumed = _run(real_tokenizer, tmp_path / "b")  # same command without stop_at: continues to step 3
    assert resumed.step == 3
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "a/log.jsonl").read_text().splitlines()]
    assert [json.loads(x)["lr"] for x in (tmp_path / "b/log.jsonl").read_text().splitlines()] == lrs
    want = straight.adapter.state_dict()
    moved = False
    for n, p in resumed.adapter.state_dict().items():
        torch.testing.assert_close(p, want[n], rtol=0, atol=1e-6, msg=n)
        moved |= not torch.equal(p, kept[n].to(p.dtype))
    assert moved, "step 3 changed nothing: the resume would not be tested"
