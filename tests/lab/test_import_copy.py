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
    _lab_run(tmp_path / "match", d=64)  # a lab-only read: a clear refusal
    meta = json.loads((tmp_path / "match" / "meta.json").read_text()) | {"gain": "match"}
    (tmp_path / "match" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not have yet"):
        import_copy_head(base_dir, tmp_path / "match", tmp_path / "x")
    _lab_run(tmp_path / "tok", d=64)  # token keys announced in meta.json, W_t missing
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text()) | {"tok_rank": 4}
    (tmp_path / "tok" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="missing.*copy.wt.weight"):
        import_copy_head(base_dir, tmp_path / "tok", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _lab_gate(path, width: int, hidden: int = 10, seed: int = 1):
    """A gate checkpoint as lab.copy_gate saves it (`MessageGate.state_dict()`: the MLP under `net.`)."""
    g = torch.Generator().manual_seed(seed)
    t = {"net.0.weight": torch.randn(hidden, width, generator=g) * width ** -0.5,
         "net.0.bias": torch.randn(hidden, generator=g) * 0.1,
         "net.2.weight": torch.randn(1, hidden, generator=g), "net.2.bias": torch.tensor([-1.0])}
    torch.save(t, path)
    return t


def test_import_with_a_message_gate_and_refuse_a_role_aware_one(tmp_path):
    import torch.nn as nn

    from deltamem_agents.core import copy as cp

    model = tiny_llama(layers=2)
    save_adapter(attach(model, DeltaMemConfig(rank=3)), tmp_path / "base")
    detach(model)
    _lab_run(tmp_path / "run", d=64)
    gate = _lab_gate(tmp_path / "gate.pt", width=3 * 64)
    out = import_copy_head(tmp_path / "base", tmp_path / "run", tmp_path / "gated", gate=tmp_path / "gate.pt")
    meta = read_adapter_config(out)
    assert meta["config"] == DeltaMemConfig(rank=3, copy_rank=RANK, copy_gate="message", copy_gate_hidden=10)
    assert meta["info"]["copy_channel"]["gate_from"] == str(tmp_path / "gate.pt")
    loaded = load_adapter(model, out)
    assert {k for k in loaded.state_dict() if k.startswith("copy.")} == {f"copy.{n}" for n in
                                                                        cp.copy_params("message")}
    for k, v in gate.items():
        assert torch.equal(loaded.state_dict()["copy.mgate." + k[4:]], v), k
    # the product's gate is the lab's MLP (net: Linear, GELU, Linear) on the gate inputs
    lab_net = nn.Sequential(nn.Linear(3 * 64, 10), nn.GELU(), nn.Linear(10, 1))
    lab_net.load_state_dict({k[4:]: v for k, v in gate.items()})
    x = torch.randn(2, 5, 3 * 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.copy.mgate(x), lab_net(x))
        ids = torch.randint(0, 97, (1, 9))
        o = forward_with_state(model, ids, None, message_ids=torch.zeros_like(ids))
    assert o.state.C.abs().max() > 0
    detach(model)
    copy_only = import_copy_head(None, tmp_path / "run", tmp_path / "gated_only", model=model,
                                 gate=tmp_path / "gate.pt")
    assert read_adapter_config(copy_only)["config"].copy_gate == "message"
    _lab_gate(tmp_path / "role.pt", width=3 * 64 + 3)
    with pytest.raises(ValueError, match="--no-role"):
        import_copy_head(tmp_path / "base", tmp_path / "run", tmp_path / "x", gate=tmp_path / "role.pt")
    _lab_gate(tmp_path / "narrow.pt", width=3 * 32)
    with pytest.raises(ValueError, match="hidden size 64"):
        import_copy_head(tmp_path / "base", tmp_path / "run", tmp_path / "x", gate=tmp_path / "narrow.pt")
    assert not (tmp_path / "x").exists()


def test_token_keys_are_imported(tmp_path):
    """A run with token keys (`copy_read --tok-rank`): W_t and α carried, config copy_tok_rank set, and the product's
    read equals the lab's formula q = [cos α·norm(W_q h_p), sin α·norm(W_t ê(x_p))]."""
    model = tiny_llama(layers=2)
    save_adapter(attach(model, DeltaMemConfig(rank=2, output_init="zero")), tmp_path / "base")
    detach(model)
    lab = _lab_run(tmp_path / "run", d=64)
    g = torch.Generator().manual_seed(9)
    lab |= {"p.wt.weight": torch.randn(4, 64, generator=g) * 0.125, "p.mix": torch.tensor(0.6)}
    save_file(lab, str(tmp_path / "run" / "ckpt.safetensors"))
    meta = json.loads((tmp_path / "run" / "meta.json").read_text()) | {"tok_rank": 4}
    (tmp_path / "run" / "meta.json").write_text(json.dumps(meta))
    out = import_copy_head(tmp_path / "base", tmp_path / "run", tmp_path / "merged")
    assert read_adapter_config(out)["config"] == DeltaMemConfig(rank=2, output_init="zero", copy_rank=RANK,
                                                                copy_tok_rank=4)
    load_adapter(model, out)
    ids = torch.randint(0, 97, (1, 10), generator=g)
    with torch.no_grad():
        o = forward_with_state(model, ids, None, message_ids=torch.zeros_like(ids))
        h, E = o.copy.h[0, -1], model.get_input_embeddings().weight
        En, a = F.normalize(E, dim=-1), lab["p.mix"]
        q = torch.cat([F.normalize(h @ lab["p.wq.weight"].T, dim=-1) * torch.cos(a),
                       F.normalize(En[ids[0, -1]] @ lab["p.wt.weight"].T, dim=-1) * torch.sin(a)])
        gain = F.softplus(h @ lab["p.gate.weight"][0] + lab["p.gate.bias"]) * lab["p.log_tau"].exp()
        want = model.lm_head.base(h) + gain * ((o.state.C[0] @ q) @ En.T)
    assert o.state.C.shape == (1, 64, RANK + 4) and o.state.C.abs().max() > 0
    torch.testing.assert_close(o.outputs.logits[0, -1], want, rtol=1e-5, atol=1e-5)
    detach(model)
