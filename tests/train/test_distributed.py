"""Data-parallel training (train/distributed.py) on CPU: two gloo processes started by `accelerate launch` give the
adapter of one process with the same global batch, and a paused run resumes to the uninterrupted run's adapter in
both modes. A tiny random Llama over the real tokenizer (`--model DIR`), 3 steps of 4 short episodes.

Run as a script, this file is the worker `accelerate launch` starts: the `train` command twice in one launch
(pause after step 2, then resume to step 3), which saves starting the processes twice.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ARGS = ["--device", "cpu", "--steps", "3", "--grad-accum", "4", "--lr", "1e-2", "--warmup-frac", "0",
        "--lr-schedule", "constant", "--diag-every", "0", "--threads", "1", "--snapshot-every", "1", "--no-bf16",
        "--center-inputs", "--calibration-episodes", "2", "--budget-range", "64,96", "--distance-start", "10",
        "--distance-end", "40", "--mix", "fact=0.5,update=0.5", "--in-window-frac", "0.25"]
ATOL = 1e-5  # an Adam step moves these weights by ~1e-2; fp32 all-reduce vs one sum differ by ~1e-7


def _train_argv(out: Path, model: Path, *extra: str) -> list[str]:
    return ["train", "--out-dir", str(out), "--model", str(model), *ARGS, *extra]


def _worker(out: str, model: str) -> None:
    from deltamem_agents.cli import app

    for extra in (["--stop-at", "2"], []):  # pause after step 2, then resume (the same command) to step 3
        app(_train_argv(Path(out), Path(model), *extra), standalone_mode=False)


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
    sys.exit(0)

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from deltamem_agents.cli import app  # noqa: E402
from deltamem_agents.patching.adapter_io import read_adapter_config  # noqa: E402


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter.safetensors"))


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


def _steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]


def _run(*argv: str) -> None:
    res = CliRunner().invoke(app, list(argv))
    assert res.exit_code == 0, (res.output, res.exception)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_process(tiny_backbone_dir, tmp_path_factory, one_thread) -> Path:
    """The uninterrupted single-process run (adapters after steps 1, 2 and 3)."""
    out = tmp_path_factory.mktemp("one-process")
    _run(*_train_argv(out, tiny_backbone_dir))
    assert _steps(out) == [1, 2, 3]
    return out


@pytest.fixture(scope="module")
def two_processes(tiny_backbone_dir, tmp_path_factory) -> Path:
    """Two gloo processes: paused after step 2, resumed to step 3 (both in one `accelerate launch`)."""
    out = tmp_path_factory.mktemp("two-processes")
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), __file__, str(out), str(tiny_backbone_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return out


def test_two_processes_train_the_adapter_of_one(one_process, two_processes):
    info = read_adapter_config(two_processes / "checkpoint-last" / "adapter")["info"]
    assert info["processes"] == 2 and info["steps"] == 3  # really two processes, not one run twice
    for step in (1, 2):  # before the pause: the same global batch gives the same adapter
        a, b = one_process / f"adapter-step{step}", two_processes / f"adapter-step{step}"
        assert _max_diff(a, b) < ATOL, step
    assert _max_diff(one_process / "adapter-step1", one_process / "adapter-step2") > 100 * ATOL  # steps do move it
    # resumed in two processes: the uninterrupted run's step 3
    assert _max_diff(one_process / "adapter-step3", two_processes / "checkpoint-last" / "adapter") < ATOL
    assert _steps(two_processes) == [1, 2, 3]  # one log line per step: only the main process writes
    assert not list(two_processes.glob(".ckpt-*"))  # no half-written checkpoint left behind


def test_one_process_resumes_to_the_uninterrupted_run(one_process, tiny_backbone_dir, tmp_path, one_thread):
    _run(*_train_argv(tmp_path, tiny_backbone_dir, "--stop-at", "2"))
    assert _steps(tmp_path) == [1, 2]
    _run(*_train_argv(tmp_path, tiny_backbone_dir))
    assert _steps(tmp_path) == [1, 2, 3]
    assert _max_diff(one_process / "adapter-step3", tmp_path / "checkpoint-last" / "adapter") < ATOL
    assert read_adapter_config(tmp_path / "checkpoint-last" / "adapter")["info"]["processes"] == 1


def test_global_batch_must_split_evenly():
    from deltamem_agents.train.distributed import local_micros

    assert [list(local_micros(8, 2, r)) for r in (0, 1)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert list(local_micros(4, 1, 0)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        local_micros(6, 4, 0)


def test_bf16_default_follows_the_device_policy(monkeypatch):
    from deltamem_agents.patching import device as dev
    from deltamem_agents.train.trainer import weight_dtype

    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: False)
    assert weight_dtype(None, torch.device("cpu")) == torch.float32  # emulated bf16 is several times slower
    assert weight_dtype(None, torch.device("cuda", 0)) == torch.bfloat16
    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: True)
    assert weight_dtype(None, torch.device("cpu")) == torch.float32  # bf16 on a CPU is opt-in, native or not
    assert weight_dtype(False, torch.device("cuda", 0)) == torch.float32  # the user's choice wins
    assert weight_dtype(True, torch.device("cpu")) == torch.bfloat16
