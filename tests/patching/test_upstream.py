"""Import of the reference implementation's adapter format (patching/upstream.py) on a tiny random Qwen3.

The test writes upstream-format files itself (spec §10: `delta_mem_config.json` with every upstream field,
`delta_mem_adapter.pt` with `model.layers.<i>.self_attn.<param>` bf16 tensors, unused k/v heads included),
imports them, and checks the loaded adapter gives exactly the corrections of manually-set weights; every
setting we do not implement is refused by name, before anything is written.
"""

from __future__ import annotations

import json

import pytest
import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.errors import AdapterMismatchError
from deltamem_agents.patching import attach, detach, forward_with_state
from deltamem_agents.patching.adapter_io import load_adapter, read_adapter_config
from deltamem_agents.patching.upstream import import_upstream_adapter

# the upstream config dataclass's fields and defaults (declare-lab/delta-Mem, deltamem/core/delta_impl.py)
UPSTREAM_DEFAULTS = {
    "rank": 8, "alpha": 16.0, "beta_bias_init": -1.5, "normalize_qk": True, "couple_lambda": True,
    "state_update_mode": "standard", "rankwise_gates": True, "output_init": "zero", "base_slice_ref_width": 8,
    "online_gain": 0.05, "num_state_heads": 1, "num_memory_partitions": 1, "num_global_memory_partitions": 0,
    "memory_partition_routing": "soft", "memory_partition_basis": "shared", "tie_memory_partition_read_write": False,
    "memory_partition_read_mode": "softmax", "memory_partition_sigmoid_gate_bias_init": -2.0, "slot_read_top_k": 0,
    "global_memory_mode": "shared_rw", "global_memory_read_top_k": 0, "global_memory_merge_mode": "gated_residual",
    "global_memory_gate_bias_init": -2.0, "global_memory_read_logit_bias": 0.0, "memory_reader_layers": [],
    "memory_reader_hidden_size": 1024, "memory_reader_residual_scale": 0.1, "memory_reader_read_only": True,
    "memory_readout_mode": "delta", "memory_write_source": "learned_hidden", "memory_write_granularity": "token",
    "memory_write_proposals_per_message": 2, "synthetic_memory_slots": 1, "latent_memory_layers": [],
    "latent_memory_hidden_size": 1024, "latent_memory_residual_scale": 0.1, "latent_memory_slots": 4,
    "latent_memory_init_std": 0.002, "latent_gate_init": 0.01, "target_modules": ["self_attn"], "target_layers": [],
    "delta_heads": ["q", "k", "v", "o"], "delta_o_rmsnorm": False, "delta_o_rmsnorm_eps": 1e-6,
    "trainable_delta_scale": False, "delta_scale_init": 1.0, "delta_scale_max": 2.0, "delta_scale_granularity": "layer",
    "delta_scale_parameterization": "alpha_over_rank",
}
RELEASED = {"output_init": "base_slice_fixed", "delta_heads": ["q", "o"]}  # the released TSW runs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, vocab_size=97, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return Qwen3ForCausalLM(cfg).eval()


def _write_upstream(path, model, overrides=None, extra_tensors=None, seed=0):
    """An upstream-format adapter for `model`; returns {layer id: {param: bf16 tensor}} as written."""
    cfg = {**UPSTREAM_DEFAULTS, **RELEASED, **(overrides or {})}
    r, H = cfg["rank"], cfg["num_state_heads"]
    R, G = r * H, r * H if cfg["rankwise_gates"] else H
    layers = cfg["target_layers"] or list(range(model.config.num_hidden_layers))
    g = torch.Generator().manual_seed(seed)
    written, flat = {}, {}
    for i in layers:
        attn = model.model.layers[i].self_attn
        d, qo, ko = attn.q_proj.in_features, attn.q_proj.out_features, attn.k_proj.out_features
        oo = attn.o_proj.out_features
        shapes = {"memory_q_proj": (R, d), "memory_k_proj": (R, d), "memory_v_proj": (R, d), "beta_proj": (G, d),
                  "beta_bias": (G,), "delta_q_proj": (qo, R), "delta_k_proj": (ko, R), "delta_v_proj": (ko, R),
                  "delta_o_proj": (oo, R)}
        written[i] = {}
        for name, shape in shapes.items():
            t = torch.randn(shape, generator=g) * 0.3 - (1.0 if name == "beta_bias" else 0.0)
            if name in ("delta_k_proj", "delta_v_proj") and name[6] not in cfg["delta_heads"]:
                t = torch.zeros(shape)  # inactive heads are saved as frozen zeros
            written[i][name] = t.to(torch.bfloat16)
            flat[f"model.layers.{i}.self_attn.{name}"] = written[i][name]
    flat.update(extra_tensors or {})
    path.mkdir(parents=True, exist_ok=True)
    (path / "delta_mem_config.json").write_text(json.dumps(cfg, indent=2))
    torch.save(flat, path / "delta_mem_adapter.pt")
    return written


CASES = {
    "tsw": {},
    "msw_scalar_gates": {"rank": 4, "num_state_heads": 2, "rankwise_gates": False, "alpha": 8},
    "ssw_o_only_layer1": {"memory_write_granularity": "message_mean", "delta_heads": "o", "target_layers": [1],
                          "state_update_mode": "lambda_outside"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_imported_adapter_equals_manually_set_weights(qwen3, tmp_path, case):
    written = _write_upstream(tmp_path / "up", qwen3, CASES[case])
    out = import_upstream_adapter(tmp_path / "up", tmp_path / "ours", qwen3)
    x = torch.randint(3, 97, (1, 14), generator=torch.Generator().manual_seed(1))
    mids = torch.tensor([[0] * 5 + [1] * 5 + [2] * 4])  # three messages (SSW closes the first two)

    adapter = load_adapter(qwen3, out)
    assert adapter.info["imported_from"] == "declare-lab/delta-Mem"
    got = forward_with_state(qwen3, x, adapter.zero_state(), message_ids=mids)
    got2 = forward_with_state(qwen3, x, got.state, message_ids=mids + 3)
    detach(qwen3)

    up = {**UPSTREAM_DEFAULTS, **RELEASED, **CASES[case]}
    heads = tuple(h for h in "qo" if h in up["delta_heads"])
    cfg = DeltaMemConfig(rank=up["rank"], alpha=up["alpha"], num_state_heads=up["num_state_heads"],
                         rankwise_gates=up["rankwise_gates"], state_update_mode=up["state_update_mode"],
                         write_granularity=up["memory_write_granularity"], delta_heads=heads,
                         target_layers=tuple(up["target_layers"]),
                         write_system=up["memory_write_granularity"] == "token")  # upstream TSW writes every token
    assert read_adapter_config(out)["config"] == cfg
    manual = attach(qwen3, cfg)
    with torch.no_grad():
        for slot, layer in enumerate(manual.layer_ids):
            for name, p in manual.layers[slot].named_parameters():
                p.copy_(written[layer][name].float())
    want = forward_with_state(qwen3, x, manual.zero_state(), message_ids=mids)
    want2 = forward_with_state(qwen3, x, want.state, message_ids=mids + 3)
    assert want.state.S.abs().sum() > 0
    for a, b in ((got, want), (got2, want2)):
        assert torch.equal(a.outputs.logits, b.outputs.logits)
        assert torch.equal(a.state.S, b.state.S)


@pytest.mark.parametrize("setting, value", [
    ("couple_lambda", False),
    ("delta_heads", ["q", "k", "v", "o"]),
    ("memory_readout_mode", "synthetic_kv"),
    ("num_memory_partitions", 4),
    ("trainable_delta_scale", True),
    ("delta_o_rmsnorm", True),
    ("memory_write_granularity", "sentence_mean"),
    ("some_future_option", 1),
])
def test_unimplemented_setting_is_refused_by_name(qwen3, tmp_path, setting, value):
    _write_upstream(tmp_path / "up", qwen3, {setting: value})
    with pytest.raises(AdapterMismatchError, match=setting):
        import_upstream_adapter(tmp_path / "up", tmp_path / "ours", qwen3)
    assert not (tmp_path / "ours").exists()


def test_unexpected_tensor_or_shape_is_refused(qwen3, tmp_path):
    _write_upstream(tmp_path / "a", qwen3, extra_tensors={"model.layers.0.self_attn.lambda_proj": torch.zeros(8, 64)})
    with pytest.raises(AdapterMismatchError, match="lambda_proj"):
        import_upstream_adapter(tmp_path / "a", tmp_path / "out_a", qwen3)
    _write_upstream(tmp_path / "b", qwen3, {"target_layers": [0]},
                    extra_tensors={"model.layers.0.self_attn.memory_v_proj": torch.zeros(8, 32)})
    with pytest.raises(AdapterMismatchError, match="memory_v_proj"):
        import_upstream_adapter(tmp_path / "b", tmp_path / "out_b", qwen3)
    assert not (tmp_path / "out_a").exists() and not (tmp_path / "out_b").exists()


def test_import_adapter_command(qwen3, tmp_path, monkeypatch):
    """`deltamem-agents import-adapter DIR --out OUT --model PATH` writes an adapter that loads on that backbone;
    a refused setting is a usage error naming it, and nothing is written."""
    from typer.testing import CliRunner

    import deltamem_agents.backbone as bb
    from deltamem_agents.cli import app
    from deltamem_agents.patching.adapter_io import load_adapter, read_adapter_config

    qwen3.save_pretrained(tmp_path / "qwen3")
    monkeypatch.setattr(bb, "load_tokenizer", lambda path: None)  # the tiny model has no tokenizer
    _write_upstream(tmp_path / "up", qwen3)
    res = CliRunner().invoke(app, ["import-adapter", str(tmp_path / "up"), "--out", str(tmp_path / "ours"),
                                   "--model", str(tmp_path / "qwen3")])
    assert res.exit_code == 0, res.output
    assert read_adapter_config(tmp_path / "ours")["config"].rank == RELEASED.get("rank", 8)
    load_adapter(bb.load_backbone(tmp_path / "qwen3")[0], tmp_path / "ours")
    _write_upstream(tmp_path / "bad", qwen3, overrides={"couple_lambda": False})
    res = CliRunner().invoke(app, ["import-adapter", str(tmp_path / "bad"), "--out", str(tmp_path / "no"),
                                   "--model", str(tmp_path / "qwen3")])
    assert res.exit_code != 0 and "couple_lambda" in res.output and not (tmp_path / "no").exists()
