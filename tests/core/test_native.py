"""The compiled decode step (core/native.py) against the eager fast path's one-token route and the reference
`DeltaMemLayer.step`, on random inputs at odd sizes: every gate layout, update mode, head/rank shape, threshold,
zero and non-zero states, written and read-only tokens, q-only / o-only / both correction heads; then whole tiny
models (the compiled and eager routes give the same logits and state), the fallbacks, and the build cache."""

from __future__ import annotations

import itertools

import pytest
import torch

from deltamem_agents.core import fastpath, native
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.core.segments import Segments
from deltamem_agents.patching import attach
from deltamem_agents.patching.forward import forward_with_state
from deltamem_agents.patching.hf_cache import cache_kwargs, output_cache

from tests.conftest import randomize_adapter, tiny_llama
from tests.patching.test_fastpath import D, QO, _layer  # odd sizes; a layer with random parameters

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the compiled step is not built")


def _one_token() -> Segments:
    return Segments.build(torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.long), message_mode=False)


SHAPES = [(1, 8, True), (2, 3, False), (3, 5, True), (4, 1, False)]  # (heads, rank, rank-wise gates)
MODES = ["no_lambda", "standard", "lambda_outside"]
HEADS = [("q", "o"), ("q",), ("o",)]


@pytest.mark.parametrize("shape,mode,heads", list(itertools.product(SHAPES, MODES, HEADS))[::2] + [
    ((1, 8, True), "no_lambda", ("q", "o"))], ids=lambda v: str(v).replace(" ", ""))
def test_compiled_step_matches_eager_and_reference(shape, mode, heads):
    H, r, rankwise = shape
    for thr, norm, center in ((0.0, True, True), (0.5, True, False), (0.0, False, True)):
        cfg = DeltaMemConfig(num_state_heads=H, rank=r, rankwise_gates=rankwise, state_update_mode=mode,
                             write_threshold=thr, normalize_qk=norm, center_inputs=center, delta_heads=heads)
        layer = _layer(cfg, seed=H * 7 + r)
        fw = fastpath.fused_weights(layer)
        with torch.no_grad():
            for seed, zero, write in itertools.product(range(3), (False, True), (True, False)):
                g = torch.Generator().manual_seed(seed)
                x = torch.randn(1, 1, D, generator=g)
                S = torch.zeros(1, H, r, r) if zero else torch.randn(1, H, r, r, generator=g) * 0.5
                base = torch.randn(1, 1, QO, generator=g)
                out = base.clone()
                S_new, do = native.decode_step(layer, fw, x, S, out, write, zero)

                seg = _one_token()
                ref = layer.step(x, S, torch.zeros(1, D), seg, write)
                torch.testing.assert_close(S_new, ref.S.float(), atol=1e-5, rtol=1e-5)
                dq, do_ref = layer.delta_q(ref.read), layer.delta_o(ref.read)
                torch.testing.assert_close(out, base + dq if dq is not None else base, atol=1e-5, rtol=1e-5)
                if do_ref is None or zero:  # no o head, or a zero state reads exactly zero
                    assert do is None
                else:
                    torch.testing.assert_close(do, do_ref, atol=1e-5, rtol=1e-5)

                eager = fastpath.step(layer, x, S, torch.zeros(1, D), seg, write, zero, fw)
                torch.testing.assert_close(S_new, eager.S, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_rows_side_by_side_match_the_eager_batch(mode):
    """Several conversations in one call (batched decoding): a padding row, a row that is not a write candidate and
    written rows, with zero and non-zero states: the same reads, corrections and states as the eager batch."""
    cfg = DeltaMemConfig(num_state_heads=2, rank=3, state_update_mode=mode, write_threshold=0.3, center_inputs=True)
    layer = _layer(cfg, seed=11)
    fw = fastpath.fused_weights(layer)
    B = 5
    g = torch.Generator().manual_seed(2)
    valid = torch.tensor([True, True, False, True, True])
    written = torch.tensor([True, False, True, True, True])
    with torch.no_grad():
        for zero in (False, True):
            x = torch.randn(B, 1, D, generator=g)
            S = torch.zeros(B, 2, 3, 3) if zero else torch.randn(B, 2, 3, 3, generator=g) * 0.5
            base = torch.randn(B, 1, QO, generator=g)
            out = base.clone()
            S_new, do = native.decode_step(layer, fw, x, S, out, written, zero, valid)
            ids = torch.where(written, 0, -1)[:, None]
            seg = Segments.build(valid[:, None], ids, message_mode=False)
            eager = fastpath.step(layer, x, S, torch.zeros(B, D), seg, True, zero, fw)
            torch.testing.assert_close(S_new, eager.S, atol=1e-5, rtol=1e-5)
            assert torch.equal(S_new[2], S[2]) and torch.equal(S_new[1], S[1])  # padding / not a candidate
            if zero:
                assert do is None and torch.equal(out, base)
                continue
            dq, do_ref = fastpath.corrections(fw, eager.read)
            torch.testing.assert_close(out, base + dq, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(do, do_ref, atol=1e-5, rtol=1e-5)
            assert torch.equal(out[2], base[2]) and not do[2].any()  # the padding row reads nothing


def test_the_threshold_decides_writes_as_the_eager_path():
    """Gates around the threshold: the compiled step writes exactly the tokens the eager path writes."""
    probe = _layer(DeltaMemConfig(rank=8, state_update_mode="no_lambda", center_inputs=True), seed=3)
    xs = torch.randn(40, 1, 1, D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        means = probe.project(xs)[3].mean(dim=(-2, -1)).flatten().sort().values
    median = float(means[19] + means[20]) / 2  # the threshold between the two middle mean gates: no ties
    cfg = DeltaMemConfig(rank=8, state_update_mode="no_lambda", write_threshold=median, center_inputs=True)
    layer = _layer(cfg, seed=3)
    fw = fastpath.fused_weights(layer)
    seg = _one_token()
    written = []
    with torch.no_grad():
        for x in xs:
            S = torch.randn(1, 1, 8, 8) * 0.3
            S_new, _ = native.decode_step(layer, fw, x, S, torch.zeros(1, 1, QO), True, False)
            eager = fastpath.step(layer, x, S, torch.zeros(1, D), seg, True, False, fw)
            assert torch.equal(S_new, S) == torch.equal(eager.S, S)
            written.append(not torch.equal(S_new, S))
    assert sum(written) == 20  # half the tokens pass


def test_parameter_changes_rebuild_the_compiled_arguments():
    cfg = DeltaMemConfig(rank=4, state_update_mode="standard")
    layer = _layer(cfg, seed=1)
    x, S = torch.randn(1, 1, D), torch.randn(1, 1, 4, 4)
    with torch.no_grad():
        before = native.decode_step(layer, fastpath.fused_weights(layer), x, S, torch.zeros(1, 1, QO), True, False)
        layer.delta_o_proj.mul_(2.0)
        layer.memory_v_proj.add_(0.5)
        after = native.decode_step(layer, fastpath.fused_weights(layer), x, S, torch.zeros(1, 1, QO), True, False)
        seg = _one_token()
        ref = layer.step(x, S, torch.zeros(1, D), seg, True)
    torch.testing.assert_close(after[1], layer.delta_o(ref.read), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after[0], ref.S, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before[1], after[1])


def test_bad_inputs_are_refused_not_read():
    layer = _layer(DeltaMemConfig(rank=4), seed=1)
    fw = fastpath.fused_weights(layer)
    S = torch.zeros(1, 1, 4, 4)
    for x, out in ((torch.randn(1, 1, D).double(), torch.zeros(1, 1, QO)),
                   (torch.randn(1, 1, 2 * D)[..., ::2], torch.zeros(1, 1, QO)),
                   (torch.randn(1, 1, D + 1), torch.zeros(1, 1, QO)),
                   (torch.randn(2, 1, D), torch.zeros(2, 1, QO))):  # two rows, one state
        with pytest.raises(ValueError, match="native step"):
            native.decode_step(layer, fw, x, S, out, True, False)


def _model(cfg: DeltaMemConfig, seed: int):
    model = tiny_llama(seed=seed, layers=3)
    adapter = attach(model, cfg)
    randomize_adapter(adapter, seed=seed, scale=0.6)
    with torch.no_grad():
        for layer in adapter.layers:
            layer.beta_bias.add_(1.0)  # gates around the threshold: some tokens written, some not
    return model


@pytest.mark.parametrize("cfg,B", [
    (DeltaMemConfig(rank=8, state_update_mode="no_lambda", write_threshold=0.45, center_inputs=True), 1),
    (DeltaMemConfig(rank=8, state_update_mode="no_lambda", write_threshold=0.45, center_inputs=True), 3),
    (DeltaMemConfig(rank=3, num_state_heads=2, rankwise_gates=False, state_update_mode="lambda_outside"), 2),
    (DeltaMemConfig(rank=5, task_rank=3, delta_heads=("o",)), 1),
], ids=["shipped-mode", "shipped-mode-B3-padded", "H2-lambda-outside-B2", "o-only-task-path"])
def test_model_decode_compiled_equals_eager(cfg, B, one_thread):
    """Prefill, then token-by-token decoding (written and unwritten tokens; with B > 1 a left-padded row and rows
    written at different steps) with the compiled step and without."""
    from transformers import DynamicCache

    model = _model(cfg, seed=5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 97, (B, 9), generator=g)
    mids = torch.tensor([[-1] * 2 + [0] * 7] * B)
    att = torch.ones(B, 9, dtype=torch.long)
    att[-1, :3] = 0 if B > 1 else 1

    def run():
        out = forward_with_state(model, ids, None, message_ids=mids, attention_mask=att,
                                 **cache_kwargs(model, DynamicCache(config=model.config)))
        logits, state, mask = [], out.state, att
        for step in range(7):
            nxt = torch.randint(0, 97, (B, 1), generator=torch.Generator().manual_seed(step))
            step_ids = torch.tensor([[1 if (step + b) % 3 else -1] for b in range(B)])
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], dim=1)
            out = forward_with_state(model, nxt, state, message_ids=step_ids, attention_mask=mask,
                                     **cache_kwargs(model, output_cache(out.outputs)))
            logits.append(out.outputs.logits)
            state = out.state
        return logits, state

    with torch.no_grad():
        old = native.set_enabled(False)
        try:
            eager_logits, eager_state = run()
        finally:
            native.set_enabled(old)
        logits, state = run()
    for a, b in zip(logits, eager_logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state.S, eager_state.S, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state.pend_sum, eager_state.pend_sum)
    assert state.S.abs().sum() > 0


def test_a_layer_that_cannot_take_the_compiled_step_falls_back(one_thread, monkeypatch):
    """A call set up for the compiled step, one of whose layers gets an input it cannot take, still returns every
    layer's new state (the eager route's result copied into the call's new S)."""
    from transformers import DynamicCache

    model = _model(DeltaMemConfig(rank=4, center_inputs=True), seed=2)
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(3))
    slot_inputs = []
    real = native.usable

    def second_refused(x, out):
        slot_inputs.append(x)
        return real(x, out) and len(slot_inputs) % 3 != 2  # the middle layer of each call is refused

    with torch.no_grad():
        out = forward_with_state(model, ids, None, **cache_kwargs(model, DynamicCache(config=model.config)))
        nxt = ids[:, :1]
        monkeypatch.setattr(native, "usable", second_refused)
        mixed = forward_with_state(model, nxt, out.state, **cache_kwargs(model, output_cache(out.outputs)))
        monkeypatch.setattr(native, "usable", real)
        old = native.set_enabled(False)
        try:
            out2 = forward_with_state(model, ids, None, **cache_kwargs(model, DynamicCache(config=model.config)))
            eager = forward_with_state(model, nxt, out2.state, **cache_kwargs(model, output_cache(out2.outputs)))
        finally:
            native.set_enabled(old)
    assert len(slot_inputs) == 3
    torch.testing.assert_close(mixed.state.S, eager.state.S, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed.outputs.logits, eager.outputs.logits, atol=1e-4, rtol=1e-4)


def test_build_is_cached_and_a_missing_compiler_falls_back(tmp_path, monkeypatch):
    """A fresh cache builds the library once; without a compiler the step is unavailable, not an error."""
    monkeypatch.setenv("DELTAMEM_CACHE", str(tmp_path))
    path = native._build()
    assert path.exists() and path.parent == tmp_path / "kernels"
    mtime = path.stat().st_mtime_ns
    assert native._build() == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    monkeypatch.setenv("DELTAMEM_CACHE", str(tmp_path / "other"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "_LIB", None)
    monkeypatch.setattr(native, "_TRIED", False)
    assert not native.available()
    assert native._TRIED and native._LIB is None
