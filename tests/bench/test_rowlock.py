"""One writer per results file (bench/rowlock.py): a second run on the same rows is refused before it reads or
writes anything, and a writer killed with SIGKILL leaves no stale lock behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deltamem_agents.bench.rowlock import exclusive_rows
from deltamem_agents.errors import RunBusyError

HOLD = """
import sys, time
from pathlib import Path
from deltamem_agents.bench.rowlock import exclusive_rows
with exclusive_rows(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_writer_is_refused_and_the_lock_is_released(tmp_path):
    rows = tmp_path / "rows.jsonl"
    with exclusive_rows(rows):
        with pytest.raises(RunBusyError, match="another run is writing"):
            with exclusive_rows(rows):
                pass
        with exclusive_rows(tmp_path / "other.jsonl"):  # another file: no conflict
            pass
    with exclusive_rows(rows):  # released on exit
        pass


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    rows = tmp_path / "rows.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(rows)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusyError):
            with exclusive_rows(rows):
                pass
    finally:
        proc.kill()
        proc.wait()
    with exclusive_rows(rows):
        pass
