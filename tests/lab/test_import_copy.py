"""`python -m lab import-copy-head`: a lab copy-head checkpoint (written here in the lab's format) merged into an
adapter, or alone beside an inert δ layer; the result loads and computes what the lab head computes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach, detach, forward_with_state
from deltamem_agents.patching.adapter_io import load_adapter, read_adapter_config, save_adapter
from lab.import_copy import import_copy_head
from tests.conftest import randomize_adapter, tiny_llama

RANK = 6


def _lab_run(path, d: int, rank: int = RANK, seed: int = 0):
    """A run directory as lab.openset_copyhead saves it: head parameters under `p.`, optimiser state beside."""
    g = torch.Generator().manual_seed(seed)
    t = {"p.wk.weight": torch.randn(rank, d, generator=g) * d ** -0.5,
         "p.wq.weight": torch.randn(rank, d, generator=g) * d ** -0.5,
         "p.beta.weight": torch.randn(1, d, generator=g) * 0.1, "p.beta.bias": torch.tensor([1.5]),
         "p.gate.weight": torch.randn(1, d, generator=g) * 0.1, "p.gate.bias": torch.tensor([0.5]),
         "p.log_tau": torch.tensor(2.0), "o.state.0.exp_avg": torch.zeros(3)}
    path.mkdir(parents=True)
    save_file(t, str(path / "ckpt.safetensors"))
    (path / "meta.json").write_text(json.dumps({"rank": rank, "bytes": d * rank * 4}))
    return t


def test_merge_into_an_adapter_round_trip(tmp_path):
    model = tiny_llama(layers=2)
    adapter = attach(model, DeltaMemConfig(rank=3))
    randomize_adapter(adapter, seed=2)
    save_adapter(model, tmp_path / "base", info={"trained": "yes"})
    detach(model)
    lab = _lab_run(tmp_path / "run", d=64)
    out = import_copy_head(tmp_path / "base", tmp_path / "run", tmp_path / "merged", note="test")
    meta = read_adapter_config(out)
    assert meta["config"] == DeltaMemConfig(rank=3, copy_rank=RANK)
    assert meta["info"]["trained"] == "yes" and meta["info"]["copy_channel"]["copy_rank"] == RANK
    loaded = load_adapter(model, out)
    for k, v in adapter.state_dict().items():  # the δ layers untouched
        assert torch.equal(loaded.state_dict()[k], v), k
    for k, v in lab.items():
        if k.startswith("p."):
            assert torch.equal(loaded.state_dict()["copy." + k[2:]], v), k
    # the product's read equals the lab head's formula on the same hidden states and state
    ids = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        o = forward_with_state(model, ids, None, message_ids=torch.zeros_like(ids))
        h = o.copy.h[0, -1]
        q = F.normalize(h @ lab["p.wq.weight"].T, dim=-1)
        g = F.softplus(h @ lab["p.gate.weight"][0] + lab["p.gate.bias"]) * lab["p.log_tau"].exp()
        E = model.get_input_embeddings().weight
        want = model.lm_head.base(h) + g * ((o.state.C[0] @ q) @ F.normalize(E, dim=-1).T)
    torch.testing.assert_close(o.outputs.logits[0, -1], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already has a copy channel"):
        import_copy_head(out, tmp_path / "run", tmp_path / "again")
    detach(model)


def test_copy_only_adapter_and_bad_runs(tmp_path):
    model = tiny_llama(layers=2)
    _lab_run(tmp_path / "run", d=64)
    out = import_copy_head(None, tmp_path / "run", tmp_path / "copy_only", model=model)
    assert not hasattr(model, "deltamem")  # the model is left as it was
    ids = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        load_adapter(model, out)
        o = forward_with_state(model, ids, None, message_ids=torch.full_like(ids, -1))  # nothing written
    assert torch.equal(o.outputs.logits, base) and not o.state.S.any()  # the inert δ layer changes nothing
    _lab_run(tmp_path / "wide", d=32)
    base_dir = tmp_path / "plain"
    detach(model)
    save_adapter(attach(model, DeltaMemConfig(rank=2)), base_dir)
    with pytest.raises(ValueError, match="hidden size 64"):
        import_copy_head(base_dir, tmp_path / "wide", tmp_path / "x")
    (tmp_path / "broken").mkdir()
    with pytest.raises(FileNotFoundError):
        import_copy_head(base_dir, tmp_path / "broken", tmp_path / "x")
