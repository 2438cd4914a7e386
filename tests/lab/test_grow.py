"""Growing an adapter into more state heads (`add-state-heads`, TSW -> MSW) keeps what it computes.

The grown adapter must give the source's logits over a multi-call conversation (selective writes on, centred
inputs, odd sizes), its old heads' states must be the source's states, and its new heads must write, read and
receive gradients — otherwise the MSW arm of the ablation would be the TSW adapter with dead weight.
"""

from __future__ import annotations

import pytest
import torch

from deltamem_agents.core.config import msw, ssw, tsw
from deltamem_agents.patching import attach, forward_with_state
from deltamem_agents.patching.adapter_io import load_adapter, read_adapter_config, save_adapter
from lab.grow import add_state_heads, grow_rank
from tests.conftest import randomize_adapter, tiny_llama


def _ids(T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 97, (1, T), generator=torch.Generator().manual_seed(seed))


def _conversation(model, calls):
    """Logits of every call and the final state, calling turn by turn with the state carried."""
    state, logits = None, []
    for x in calls:
        out = forward_with_state(model, x, state)
        logits.append(out.outputs.logits)
        state = out.state
    return logits, state


def _shipped_and_derived(derive):
    """(logits, state) of a three-call conversation on the real backbone with the shipped adapter, then with the
    adapter `derive(shipped_path)` writes (it returns its directory)."""
    from deltamem_agents.backbone import load_backbone
    from deltamem_agents.chat.loading import DEFAULT_ADAPTER
    from deltamem_agents.patching import detach

    model, tok = load_backbone()
    calls = [tok(t, return_tensors="pt")["input_ids"] for t in
             ("My favourite colour is teal, by the way.", "Noted. Anything else?", "What is my favourite colour?")]
    results = []
    for path in (DEFAULT_ADAPTER, derive(DEFAULT_ADAPTER)):
        load_adapter(model, path)
        try:
            with torch.no_grad():
                results.append(_conversation(model, calls))
        finally:
            detach(model)
    return results


@pytest.mark.parametrize("rank,heads,layers", [(3, 3, (0, 2)), (5, 4, ())])
def test_grown_adapter_computes_the_same_and_its_new_heads_learn(tmp_path, rank, heads, layers):
    src_model = tiny_llama(seed=rank)
    cfg = tsw(rank=rank, write_threshold=0.15, state_update_mode="no_lambda", center_inputs=True,
              target_layers=layers)
    adapter = attach(src_model, cfg)
    randomize_adapter(adapter, seed=heads)
    with torch.no_grad():
        for lay in adapter.layers:
            lay.input_center.copy_(torch.randn(lay.input_center.shape, generator=torch.Generator().manual_seed(7)))
    save_adapter(adapter, tmp_path / "src")
    add_state_heads(tmp_path / "src", tmp_path / "grown", heads, seed=1, note="test")

    meta = read_adapter_config(tmp_path / "grown")
    assert meta["config"].num_state_heads == heads and meta["config"].rank == rank
    assert meta["info"]["grown_state_heads"]["heads"] == [1, heads]

    grown_model = tiny_llama(seed=rank)
    grown = load_adapter(grown_model, tmp_path / "grown")
    calls = [_ids(T, seed=T) for T in (11, 6, 17)]
    with torch.no_grad():
        want, s_src = _conversation(src_model, calls)
        got, s_grown = _conversation(grown_model, calls)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the old head's state is the source's state; the new heads wrote something of their own
    torch.testing.assert_close(s_grown.S[:, :, :1], s_src.S, rtol=1e-5, atol=1e-6)
    assert s_src.S.abs().sum() > 0, "no token passed the write threshold: the test would not test writes"
    assert (s_grown.S[:, :, 1:].flatten(2).abs().sum(-1) > 0).all()

    # the new heads' output columns get gradients at once (no zero saddle)
    out = forward_with_state(grown_model, calls[-1], s_grown)
    out.outputs.logits.square().mean().backward()
    for lay in grown.layers:
        for B in (lay.delta_q_proj, lay.delta_o_proj):
            assert B.grad[:, rank:].abs().sum() > 0


def test_growing_refuses_message_writes_and_fewer_heads(tmp_path):
    model = tiny_llama()
    save_adapter(attach(model, ssw()), tmp_path / "ssw")
    with pytest.raises(ValueError, match="token writes"):
        add_state_heads(tmp_path / "ssw", tmp_path / "out", 4)
    model = tiny_llama()
    save_adapter(attach(model, tsw()), tmp_path / "tsw")
    with pytest.raises(ValueError, match="already has 1 state heads"):
        add_state_heads(tmp_path / "tsw", tmp_path / "out", 1)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_shipped_adapter_grown_to_msw_gives_the_same_logits_on_the_real_backbone(tmp_path):
    (want, s_src), (got, s_grown) = _shipped_and_derived(lambda src: add_state_heads(src, tmp_path / "msw", 4))
    assert s_src.S.abs().sum() > 0  # the shipped adapter wrote something
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rank,mult,heads,eps", [(3, 2, 1, 0.05), (5, 3, 2, 0.02)])
def test_grown_rank_computes_nearly_the_same_and_its_new_coordinates_learn(tmp_path, rank, mult, heads, eps):
    src_model = tiny_llama(seed=rank)
    cfg = msw(rank=rank, num_state_heads=heads, write_threshold=0.15, state_update_mode="no_lambda",
              center_inputs=True)
    adapter = attach(src_model, cfg)
    randomize_adapter(adapter, seed=mult)
    save_adapter(adapter, tmp_path / "src")
    grow_rank(tmp_path / "src", tmp_path / "grown", rank * mult, eps=eps, seed=2, note="test")

    meta = read_adapter_config(tmp_path / "grown")
    assert meta["config"].rank == rank * mult and meta["config"].scaling == pytest.approx(cfg.scaling)
    assert meta["info"]["grown_rank"]["rank"] == [rank, rank * mult]

    grown_model = tiny_llama(seed=rank)
    grown = load_adapter(grown_model, tmp_path / "grown")
    calls = [_ids(T, seed=T + 1) for T in (13, 5, 19)]
    with torch.no_grad():
        want, s_src = _conversation(src_model, calls)
        got, s_grown = _conversation(grown_model, calls)
    assert s_src.S.abs().sum() > 0, "no token passed the write threshold: the test would not test writes"
    # approximately the same function: only the q̂/k̂ normalisation moved, by O(eps²)
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= 50 * eps ** 2 * b.abs().max()
    # the old r×r block of each head's state is (nearly) the source's state
    torch.testing.assert_close(s_grown.S[..., :rank, :rank], s_src.S, rtol=0, atol=50 * eps ** 2 * s_src.S.abs().max())
    assert s_grown.S[..., rank:, :].abs().sum() > 0 and s_grown.S[..., :, rank:].abs().sum() > 0

    # the new output columns and q/k rows get gradients at once (no zero saddle); the new v rows get theirs once the
    # output columns have moved (LoRA-like: what they write is read only through those columns)
    out = forward_with_state(grown_model, calls[-1], s_grown)
    out.outputs.logits.square().mean().backward()
    for lay in grown.layers:
        for B in (lay.delta_q_proj, lay.delta_o_proj):
            assert B.grad.view(B.shape[0], heads, -1)[..., rank:].abs().sum() > 0
        for P in (lay.memory_q_proj, lay.memory_k_proj):
            assert (P.grad.view(heads, rank * mult, -1)[:, rank:].abs().sum(-1) > 0).all()


def test_growing_rank_refuses_non_multiples(tmp_path):
    model = tiny_llama()
    save_adapter(attach(model, tsw(rank=4)), tmp_path / "tsw")
    for bad in (4, 6, 2):
        with pytest.raises(ValueError, match="multiple"):
            grow_rank(tmp_path / "tsw", tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_shipped_adapter_grown_to_rank_16_nearly_keeps_its_logits_on_the_real_backbone(tmp_path):
    (want, s_src), (got, s_grown) = _shipped_and_derived(lambda src: grow_rank(src, tmp_path / "r16", 16))
    assert s_src.S.abs().sum() > 0
    # the same next-token choice everywhere and log-probabilities within 0.05 nats
    for a, b in zip(got, want):
        assert torch.equal(a.argmax(-1), b.argmax(-1))
        assert (a.log_softmax(-1) - b.log_softmax(-1)).abs().max() < 0.05
