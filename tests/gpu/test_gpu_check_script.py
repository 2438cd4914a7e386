"""`benchmarks/gpu_check.py` (the second half of `make gpu-check`) on a machine without CUDA: says so, exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_the_check_says_so_and_exits_0(tmp_path):
    out = tmp_path / "report.md"
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no CUDA device" in res.stdout and "skipped" in res.stdout
    assert not out.exists()  # nothing measured, no report
