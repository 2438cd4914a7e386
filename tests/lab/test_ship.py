"""ship-adapter: copies an adapter with a model card that says how it was made; refuses one that does not."""
from __future__ import annotations

import json

import pytest
import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach
from deltamem_agents.patching.adapter_io import load_adapter, save_adapter
from lab.ship import ship
from tests.conftest import randomize_adapter, tiny_llama


def _adapter_dir(tmp_path, info=None):
    model = tiny_llama()
    ad = attach(model, DeltaMemConfig(write_granularity="token", write_threshold=0.8, state_update_mode="no_lambda",
                                      center_inputs=True))
    randomize_adapter(ad, seed=5)
    src = tmp_path / "run" / "adapter"
    save_adapter(ad, src, info=info or {})
    return src, ad


def test_ship_copies_weights_and_writes_the_recipe_into_the_card(tmp_path):
    src, ad = _adapter_dir(tmp_path)
    (src / "RECIPE.md").write_text("Stage 1: oracle writes, 150 steps.\nStage 2: selector.")
    eval_md = tmp_path / "eval.md"
    eval_md.write_text("| distance | δ-mem |\n|---|---|\n| 150 | 0.20 |\n")
    dest = ship(src.parent, eval_md, "deltamem-agents eval-memory ...", "Reading.", dest=tmp_path / "pkg")
    assert {p.name for p in dest.iterdir()} == {"adapter_config.json", "adapter.safetensors", "README.md"}
    card = (dest / "README.md").read_text()
    assert "Stage 1: oracle writes, 150 steps." in card and "| 150 | 0.20 |" in card and "Reading." in card
    cfg = json.loads(card.split("**δ-mem config**: ")[1].split("\n")[0])
    assert cfg["write_threshold"] == 0.8 and cfg["state_update_mode"] == "no_lambda"
    fresh = tiny_llama()
    loaded = load_adapter(fresh, dest)
    for (n1, p1), (n2, p2) in zip(ad.named_parameters(), loaded.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_ship_refuses_an_adapter_that_does_not_say_how_it_was_made(tmp_path):
    src, _ = _adapter_dir(tmp_path)
    with pytest.raises(ValueError, match="RECIPE.md"):
        ship(src, None, "", "", dest=tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()
    with pytest.raises(FileNotFoundError, match="holds no adapter"):
        ship(tmp_path, None, "", "", dest=tmp_path / "pkg")


def test_ship_accepts_a_trainer_checkpoint(tmp_path):
    src, _ = _adapter_dir(tmp_path, info={"train_config": {"lr": 1e-3, "grad_accum": 4}, "steps": 10,
                                          "wall_seconds": 3600, "threads": 1})
    card = (ship(src.parent, None, "", "", dest=tmp_path / "pkg") / "README.md").read_text()
    assert "AdamW lr 0.001" in card and "10 steps" in card and "1.00 h" in card
