"""`bench merge`: runs of one benchmark split by backend join into one run; other settings are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deltamem_agents import cli
from deltamem_agents.bench.merge_runs import merge_runs
from deltamem_agents.bench.report import read_rows


def _run(d: Path, backends: dict[str, list[float]], budget: int = 512) -> Path:
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"resume_key": {"budget": budget, "adapter": "default", "seed": 0}}))
    rows = [{"task": "locomo", "item_id": f"conv-1/q{i}", "backend": b, "category": 2, "score": s, "skipped": None}
            for b, xs in backends.items() for i, s in enumerate(xs)]
    (d / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_merge_joins_backends_and_drops_duplicates(tmp_path):
    a = _run(tmp_path / "a", {"deltamem": [1.0, 0.0, 1.0], "window": [0.0]})
    b = _run(tmp_path / "b", {"window": [0.0, 1.0, 0.0], "rag": [1.0, 1.0, 0.0]})
    m = merge_runs([a, b], tmp_path / "all")
    assert (m.rows, m.duplicates, m.disagreeing) == (9, 1, 0)
    rows = read_rows(tmp_path / "all" / "rows.jsonl")
    assert sorted({(r["backend"], r["item_id"]) for r in rows}) == sorted(
        {(bk, f"conv-1/q{i}") for bk in ("deltamem", "window", "rag") for i in range(3)})
    assert json.loads((tmp_path / "all" / "config.json").read_text())["resume_key"]["budget"] == 512
    c = _run(tmp_path / "c", {"window": [1.0]})  # the same row with another score is counted, first one kept
    assert merge_runs([a, c], tmp_path / "ac").disagreeing == 1
    assert next(r for r in read_rows(tmp_path / "ac" / "rows.jsonl") if r["backend"] == "window")["score"] == 0.0


def test_merge_refuses_other_settings_an_existing_output_and_non_runs(tmp_path):
    a = _run(tmp_path / "a", {"deltamem": [1.0]})
    other = _run(tmp_path / "o", {"window": [0.0]}, budget=256)
    with pytest.raises(ValueError, match="other settings.*budget"):
        merge_runs([a, other], tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing written
    with pytest.raises(ValueError, match="exists"):
        merge_runs([a, a], a)
    with pytest.raises(ValueError, match="not a bench run"):
        merge_runs([a, tmp_path], tmp_path / "y")
    with pytest.raises(ValueError, match="two or more"):
        merge_runs([a], tmp_path / "z")


def test_cli_merge_writes_the_report(tmp_path):
    a = _run(tmp_path / "a", {"deltamem": [1.0, 0.0], "deltamem_shuffled": [0.0, 0.0]})
    b = _run(tmp_path / "b", {"window": [0.0, 0.0]})
    res = CliRunner().invoke(cli.app, ["bench", "merge", str(tmp_path / "all"), str(a), str(b)])
    assert res.exit_code == 0, res.output
    assert "6 rows into" in res.output and "δ-mem − shuffled" in (tmp_path / "all" / "report.md").read_text()
    bad = CliRunner().invoke(cli.app, ["bench", "merge", str(tmp_path / "all2"), str(a)])
    assert bad.exit_code == 2 and "two or more" in bad.output
