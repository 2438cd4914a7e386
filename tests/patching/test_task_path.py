"""The optional task path (config.task_rank): a state-independent LoRA on q_proj/o_proj inside δ-mem calls.

Checked against a naive reference (the same low-rank update merged into copies of the projection weights),
forward and backward, at odd sizes; plus its boundaries: fresh = no change, outside a call / under disabled()
= the backbone, save/load round trip, and loading an adapter without a task path into one with it.
"""

from __future__ import annotations

import copy
import os
import stat

import pytest
import torch

from deltamem_agents.core.config import DeltaMemConfig, tsw
from deltamem_agents.errors import AdapterMismatchError
from deltamem_agents.patching import attach, disabled, forward_with_state
from deltamem_agents.patching.adapter_io import load_adapter, save_adapter
from deltamem_agents.train.trainer import init_adapter_weights
from tests.conftest import randomize_adapter, tiny_llama


def _ids(T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (1, T), generator=torch.Generator().manual_seed(seed))


def _merged_reference(model, adapter) -> torch.nn.Module:
    """A copy of the backbone whose q/o weights carry the task path merged in (the naive form), with the
    task tensors kept as graph leaves of the merge so gradients can be compared."""
    ref = copy.deepcopy(model)
    from deltamem_agents.patching import detach

    detach(ref)
    s = adapter.config.task_scaling
    for slot, i in enumerate(adapter.layer_ids):
        attn = ref.model.layers[i].self_attn
        lay = adapter.layers[slot]
        for name, down, up in (("q_proj", lay.task_q_down, lay.task_q_up), ("o_proj", lay.task_o_down, lay.task_o_up)):
            lin = getattr(attn, name)
            w = lin.weight.detach()
            del lin.weight
            lin.weight = w + s * up @ down  # a non-leaf tensor: the merge stays in the graph
    return ref


@pytest.mark.parametrize("rank,layers,T", [(3, (0, 2), 19), (5, (), 7)])
def test_task_path_matches_merged_weights_forward_and_backward(rank, layers, T):
    model = tiny_llama(seed=rank)
    adapter = attach(model, tsw(task_rank=rank, task_alpha=7.0, target_layers=layers))
    randomize_adapter(adapter, seed=rank)
    x = _ids(T, seed=T)
    # zero state, writes off: the state path reads 0, only the task path acts
    out = forward_with_state(model, x, adapter.zero_state(), write=False).outputs.logits
    ref_model = _merged_reference(model, adapter)
    ref = ref_model(x).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # backward: the same loss through both forms gives the same task-path gradients
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    params = [p for n, p in adapter.named_parameters() if ".task_" in n]
    assert len(params) == 4 * len(adapter.layer_ids)
    got = torch.autograd.grad((out * g).sum(), params)
    want = torch.autograd.grad((ref_model(x).logits * g).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        assert a.abs().sum() > 0


def test_fresh_task_path_changes_nothing_and_is_off_outside_calls(tiny):
    x = _ids(13)
    ref = tiny(x).logits
    adapter = attach(tiny, tsw(task_rank=4))
    assert torch.equal(forward_with_state(tiny, x, adapter.zero_state(), write=False).outputs.logits, ref)
    randomize_adapter(adapter)
    assert torch.equal(tiny(x).logits, ref)  # outside a δ-mem call: the backbone
    with disabled():
        assert torch.equal(forward_with_state(tiny, x, adapter.zero_state()).outputs.logits, ref)
    assert not torch.allclose(forward_with_state(tiny, x, adapter.zero_state(), write=False).outputs.logits, ref)


def test_task_path_save_load_round_trip(tmp_path):
    m1 = tiny_llama()
    a1 = attach(m1, tsw(task_rank=3))
    randomize_adapter(a1)
    save_adapter(m1, tmp_path / "ad")
    m2 = tiny_llama()
    a2 = load_adapter(m2, tmp_path / "ad")
    assert a2.config.task_rank == 3
    x = _ids(9)
    st = forward_with_state(m1, x, a1.zero_state()).state
    torch.testing.assert_close(forward_with_state(m2, x, st).outputs.logits,
                               forward_with_state(m1, x, st).outputs.logits, rtol=0, atol=0)
    # an adapter without a task path does not load into a model that has one attached with it
    m3 = tiny_llama()
    attach(m3, tsw())
    with pytest.raises(AdapterMismatchError):
        load_adapter(m3, tmp_path / "ad")


def test_strip_task_path_equals_the_adapter_with_its_task_path_zeroed(tmp_path):
    from deltamem_agents.patching.adapter_io import read_adapter_config
    from lab.surgery import strip_task_path

    m1 = tiny_llama()
    a1 = attach(m1, tsw(task_rank=3, task_alpha=5.0))
    randomize_adapter(a1)
    save_adapter(m1, tmp_path / "with", info={"steps": 7})
    strip_task_path(tmp_path / "with", tmp_path / "without", note="test")
    meta = read_adapter_config(tmp_path / "without")
    assert meta["config"].task_rank == 0 and meta["info"]["steps"] == 7
    assert meta["info"]["stripped_task_path"]["task_rank"] == 3
    umask = os.umask(0)
    os.umask(umask)
    for d in ("with", "without"):  # safetensors' private temp-file mode (0600) is not what a shipped file needs
        assert stat.S_IMODE((tmp_path / d / "adapter.safetensors").stat().st_mode) == 0o666 & ~umask
    m2 = tiny_llama()
    a2 = load_adapter(m2, tmp_path / "without")
    assert not [n for n, _ in a2.named_parameters() if ".task_" in n]
    with torch.no_grad():  # the reference: the original adapter with its task path's up-projections zeroed
        for n, p in a1.named_parameters():
            if n.endswith(("task_q_up", "task_o_up")):
                p.zero_()
    for T in (1, 11):
        x = _ids(T, seed=T)
        st1, st2 = forward_with_state(m1, x, a1.zero_state()), forward_with_state(m2, x, a2.zero_state())
        torch.testing.assert_close(st2.outputs.logits, st1.outputs.logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(st2.state.S, st1.state.S, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no task path"):
        strip_task_path(tmp_path / "without", tmp_path / "again")


def test_init_from_an_adapter_without_task_path_keeps_its_behaviour():
    m0 = tiny_llama()
    a0 = attach(m0, tsw())
    randomize_adapter(a0)
    m1 = tiny_llama()
    a1 = attach(m1, tsw(task_rank=4))
    init_adapter_weights(a1, a0.state_dict())
    x = _ids(15)
    st = forward_with_state(m0, x, a0.zero_state()).state
    torch.testing.assert_close(forward_with_state(m1, x, st).outputs.logits, forward_with_state(m0, x, st).outputs.logits)
    m2 = tiny_llama()
    a2 = attach(m2, tsw(rank=4, task_rank=4))  # another state-path shape: refused
    with pytest.raises((ValueError, RuntimeError)):
        init_adapter_weights(a2, a0.state_dict())


def test_task_path_config_validation_and_round_trip():
    c = DeltaMemConfig(task_rank=12, task_alpha=24.0)
    assert DeltaMemConfig.from_dict(c.to_dict()) == c and c.task_scaling == 2.0
    assert DeltaMemConfig().task_scaling == 0.0
    for bad in ({"task_rank": -1}, {"task_rank": 1.5}, {"task_alpha": 0}):
        with pytest.raises(ValueError):
            DeltaMemConfig(**bad)
