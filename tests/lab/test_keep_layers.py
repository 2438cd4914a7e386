"""`keep-layers`: an adapter restricted to a band of layers is the source with the other layers' read-out off.

Layers outside the band become the frozen backbone, so the band adapter must give exactly the logits of the
source adapter with B_q / B_o zeroed outside the band (the inference-time band ablation), and its states must be
the source's states of the kept layers — which also checks that the re-indexed tensors land on the right layers.
"""

from __future__ import annotations

import pytest
import torch

from deltamem_agents.core.config import tsw
from deltamem_agents.patching import attach, forward_with_state, get_adapter
from deltamem_agents.patching.adapter_io import load_adapter, read_adapter_config, save_adapter
from lab.surgery import keep_layers
from tests.conftest import randomize_adapter, tiny_llama


def _run(model, calls):
    state, logits = None, []
    with torch.no_grad():
        for x in calls:
            out = forward_with_state(model, x, state)
            logits.append(out.outputs.logits)
            state = out.state
    return logits, state


@pytest.mark.parametrize("band", [(1, 3), (2,)])
def test_band_adapter_is_the_source_with_other_layers_read_out_off(tmp_path, band):
    src = tiny_llama(seed=3, layers=4)
    randomize_adapter(attach(src, tsw(rank=5, write_threshold=0.15, state_update_mode="no_lambda")), seed=4)
    save_adapter(src, tmp_path / "src")
    keep_layers(tmp_path / "src", tmp_path / "band", band, note="test")
    meta = read_adapter_config(tmp_path / "band")
    assert meta["layer_ids"] == list(band) and meta["config"].target_layers == band
    assert meta["info"]["kept_layers"]["dropped"] == [i for i in range(4) if i not in band]

    with torch.no_grad():  # the reference: the source with B_q / B_o zero outside the band
        for lid, lay in zip(get_adapter(src).layer_ids, get_adapter(src).layers):
            if lid not in band:
                lay.delta_q_proj.zero_()
                lay.delta_o_proj.zero_()
    calls = [torch.randint(0, 97, (1, T), generator=torch.Generator().manual_seed(T)) for T in (9, 4, 15)]
    want, s_src = _run(src, calls)
    banded = tiny_llama(seed=3, layers=4)
    load_adapter(banded, tmp_path / "band")
    got, s_band = _run(banded, calls)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert s_band.S.abs().sum() > 0
    torch.testing.assert_close(s_band.S, s_src.S[list(band)], rtol=1e-5, atol=1e-6)


def test_keep_layers_refuses_unknown_or_empty_bands(tmp_path):
    model = tiny_llama(layers=3)
    save_adapter(attach(model, tsw(target_layers=(0, 1))), tmp_path / "src")
    for bad in ((2,), (), (0, 5)):
        with pytest.raises(ValueError, match="not among"):
            keep_layers(tmp_path / "src", tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()
