"""The selective-write recipe of docs/training.md through the CLI, 2 steps per stage, on a tiny random Llama
with the real tokenizer (`--backbone DIR`): train --writes value_only, fit-selector, merge-selective, train
--init-adapter."""

from __future__ import annotations

import json

from safetensors.torch import load_file
from typer.testing import CliRunner

from deltamem_agents.cli import app
from lab.cli import app as lab_app
from deltamem_agents.patching.adapter_io import read_adapter_config

DATA = ["--mix", "fact=1", "--value-kinds", "colour,food,sport,drink", "--in-window-frac", "0",
        "--budget-range", "128,128", "--distance-start", "0", "--distance-end", "0", "--diag-episodes", "1", "--diag-budget", "128",
        "--diag-distance", "60", "--diag-every", "1", "--threads", "1", "--steps", "2", "--grad-accum", "1",
        "--no-bf16"]


def _ok(res):
    assert res.exit_code == 0, (res.output, res.exception)
    return res


def test_four_stage_recipe_smoke(tiny_backbone_dir, tmp_path):
    run = CliRunner().invoke
    bb = ["--backbone", str(tiny_backbone_dir)]
    read, gates, merged, ft = (tmp_path / x for x in ("read", "gates.safetensors", "merged", "ft"))
    _ok(run(app, ["train", "--out-dir", str(read), "--writes", "value_only", "--granularity", "token",
                  "--beta-bias-init", "1.0", "--center-inputs", "--counterfactual", "--contrast-weight", "1",
                  "--lr", "3e-3", "--lr-schedule", "constant", "--max-grad-norm", "0", *DATA, *bb]))
    rows = [json.loads(x) for x in (read / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["train_gap"] is not None
    assert json.loads((read / "train_config.json").read_text())["writes"] == "value_only"

    res = _ok(run(lab_app, ["fit-selector", "--init-adapter", str(read / "checkpoint-last"), "--out", str(gates),
                        "--steps", "2", "--batch", "1", "--heldout", "1", "--threads", "1", "--no-progress", *bb]))
    lines = [json.loads(x[x.index("{"):]) for x in res.output.splitlines() if "{" in x]  # stderr bars mix in
    assert "recall" in lines[0] and [x["threshold"] for x in lines[1:]] == [0.5, 0.7, 0.8, 0.9]
    g = load_file(str(gates))
    assert g and all(k.endswith(("beta_proj", "beta_bias", "input_center")) for k in g)
    r = load_file(str(read / "checkpoint-last" / "adapter" / "adapter.safetensors"))
    assert all((g[k].float() == r[k].float()).all() for k in g if k.endswith("input_center"))

    _ok(run(lab_app, ["merge-selective", str(read / "checkpoint-last"), str(gates), str(merged), "--threshold", "0.8",
                  "--update-mode", "no_lambda", *bb]))
    cfg = read_adapter_config(merged)["config"]
    assert cfg.write_threshold == 0.8 and cfg.state_update_mode == "no_lambda"

    _ok(run(app, ["train", "--out-dir", str(ft), "--init-adapter", str(merged), "--counterfactual",
                  "--contrast-weight", "1", "--lr", "1e-3", "--lr-schedule", "constant", *DATA, *bb]))
    done = read_adapter_config(ft / "checkpoint-last" / "adapter")["config"]
    assert done.write_threshold == 0.8 and done.state_update_mode == "no_lambda" and done.center_inputs
    assert json.loads((ft / "train_config.json").read_text())["writes"] == "runtime"


def test_task_path_stage_from_an_adapter_without_one(tiny_backbone_dir, tmp_path):
    """`train --init-adapter A --task-rank 4`: A's state path is loaded, the task path starts fresh and trains."""
    run = CliRunner().invoke
    bb = ["--backbone", str(tiny_backbone_dir)]
    base, v2 = tmp_path / "base", tmp_path / "v2"
    _ok(run(app, ["train", "--out-dir", str(base), "--granularity", "token", "--center-inputs", *DATA, *bb]))
    _ok(run(app, ["train", "--out-dir", str(v2), "--init-adapter", str(base / "checkpoint-last"), "--task-rank", "4",
                  "--task-alpha", "8", "--counterfactual", "--contrast-weight", "1", "--preserve-weight", "1",
                  "--lr", "1e-2", *DATA, *bb]))
    cfg = read_adapter_config(v2 / "checkpoint-last" / "adapter")["config"]
    assert cfg.task_rank == 4 and cfg.task_alpha == 8 and cfg.center_inputs
    w = load_file(str(v2 / "checkpoint-last" / "adapter" / "adapter.safetensors"))
    ups = [k for k in w if k.endswith(("task_q_up", "task_o_up"))]
    assert len(ups) == 4 and all(w[k].abs().sum() > 0 for k in ups)  # zero-initialised, moved by training
    b = load_file(str(base / "checkpoint-last" / "adapter" / "adapter.safetensors"))
    assert all((w[k] == b[k]).all() for k in b if k.endswith("input_center"))  # carried over from the init adapter
