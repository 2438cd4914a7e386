"""Stage 3 of docs/training.md: merging a read path with a fitted selector (tiny random Llama)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach
from deltamem_agents.patching.adapter_io import load_adapter, read_adapter_config, save_adapter
from lab.merge import is_gate_key, merge_selective
from lab.selector_fit import save_gates
from tests.conftest import randomize_adapter, tiny_llama

CFG = DeltaMemConfig(write_granularity="token", rank=4, center_inputs=True, beta_bias_init=1.0)


def _parts(tmp_path):
    read = attach(tiny_llama(), CFG)
    randomize_adapter(read, seed=1)
    sel = attach(tiny_llama(), CFG)
    randomize_adapter(sel, seed=2)
    with torch.no_grad():
        for a, b in zip(read.layers, sel.layers):
            a.input_center.normal_()
            b.input_center.copy_(a.input_center)
    save_adapter(read, tmp_path / "read")
    return read, sel, save_gates(sel, tmp_path / "gates.safetensors")


def _check(out, read, sel):
    w = load_file(str(out / "adapter.safetensors"))
    r, s = read.state_dict(), sel.state_dict()
    assert set(w) == set(r) and any(is_gate_key(k) for k in w)
    for k, t in w.items():
        assert torch.equal(t, (s if is_gate_key(k) else r)[k].float()), k


def test_merge_takes_gates_from_the_selector_and_the_rest_from_the_read_path(tmp_path):
    read, sel, gates = _parts(tmp_path)
    out, diff = merge_selective(tiny_llama(), tmp_path / "read", gates, tmp_path / "merged", threshold=0.8,
                                update_mode="no_lambda")
    assert diff == 0.0
    _check(out, read, sel)
    cfg = read_adapter_config(out)["config"]
    assert cfg.write_threshold == 0.8 and cfg.state_update_mode == "no_lambda" and cfg.rank == 4
    assert cfg.center_inputs and cfg.write_granularity == "token"
    assert load_adapter(tiny_llama(), out).config.write_threshold == 0.8  # loadable on the same backbone
    # a bare weights file (lab/scripts/oracle_write.py --save) gets the default token/centred config with `rank`
    save_file({k: v.contiguous() for k, v in read.state_dict().items()}, str(tmp_path / "read.safetensors"))
    out2, _ = merge_selective(tiny_llama(), tmp_path / "read.safetensors", gates, tmp_path / "merged2",
                              threshold=0.5, rank=4)
    _check(out2, read, sel)
    cfg2 = read_adapter_config(out2)["config"]
    assert cfg2.write_threshold == 0.5 and cfg2.state_update_mode == "standard" and cfg2.center_inputs


def test_merge_refuses_parts_with_other_input_centres(tmp_path):
    read, sel, gates = _parts(tmp_path)
    with torch.no_grad():
        for layer in sel.layers:
            layer.input_center.add_(torch.randn_like(layer.input_center))
    save_gates(sel, gates)
    with pytest.raises(ValueError, match="input centres"):
        merge_selective(tiny_llama(), tmp_path / "read", gates, tmp_path / "merged")
