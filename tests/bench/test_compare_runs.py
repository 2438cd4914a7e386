"""`bench compare`: paired differences across two runs' rows (hand-made rows; the pairing and the control)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deltamem_agents import cli
from deltamem_agents.bench.compare_runs import Arm, arm_scores, compare_runs, plot_runs


def _run(path: Path, scores: dict[str, dict[int, list[int]]], gold: str = "red") -> Path:
    """rows.jsonl with `scores[backend][n_facts]` = per-item scores (item ids k{n}/i)."""
    path.mkdir(parents=True)
    rows = [{"task": "synthetic-capacity", "item_id": f"k{n}/{i}", "backend": b, "n_facts": n, "gold": gold,
             "score": float(s), "skipped": None}
            for b, by_n in scores.items() for n, xs in by_n.items() for i, s in enumerate(xs)]
    rows.append({"task": "synthetic-capacity", "item_id": "k4/0", "backend": "full", "n_facts": 4, "score": None,
                 "skipped": "does not fit"})
    (path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_memory_arms_pair_items_across_runs(tmp_path):
    a = _run(tmp_path / "r8", {"deltamem": {4: [1, 1, 0, 0], 16: [1, 0, 0, 0]},
                               "deltamem_shuffled": {4: [0, 1, 0, 0], 16: [0, 0, 0, 0]}})
    b = _run(tmp_path / "r16", {"deltamem": {4: [1, 1, 1, 0], 16: [1, 1, 1, 0, 1]},  # item k16/4 only here
                                "deltamem_shuffled": {4: [0, 0, 0, 0], 16: [0, 0, 0, 0, 0]}})
    scores, _ = arm_scores(Arm.parse(f"r8={a}:deltamem-deltamem_shuffled"), "n_facts")
    assert scores[("synthetic-capacity", "4", "k4/1")] == 0.0 and scores[("synthetic-capacity", "4", "k4/0")] == 1.0
    text = compare_runs([Arm.parse(f"r8={a}:deltamem-deltamem_shuffled"),
                         Arm.parse(f"r16={b}:deltamem-deltamem_shuffled")], by="n_facts")
    rows = {ln.split(" | ")[1]: ln for ln in text.splitlines() if ln.startswith("| synthetic-capacity")}
    # 4 facts: memory 0.25 (r8) vs 0.75 (r16), difference +0.50 over the 4 shared items
    assert rows["4"].split(" | ")[2] == "4" and "+0.250 [" in rows["4"] and "+0.750 [" in rows["4"]
    assert rows["4"].rstrip(" |").split(" | ")[-1].startswith("+0.500 [")
    # 16 facts: only the 4 items both runs answered are paired (the fifth is r16's alone)
    assert rows["16"].split(" | ")[2] == "4" and rows["16"].rstrip(" |").split(" | ")[-1].startswith("+0.500 [")
    png = plot_runs([Arm.parse(f"r8={a}:deltamem-deltamem_shuffled"), Arm.parse(f"r16={b}:deltamem")],
                    tmp_path / "p.png", by="n_facts", title="t")
    assert png.exists() and png.stat().st_size > 1000


def test_refuses_other_items_and_bad_arms(tmp_path):
    a = _run(tmp_path / "a", {"deltamem": {4: [1, 0]}})
    b = _run(tmp_path / "b", {"deltamem": {4: [1, 0]}}, gold="blue")
    with pytest.raises(ValueError, match="not the same items"):
        compare_runs([Arm.parse(f"a={a}:deltamem"), Arm.parse(f"b={b}:deltamem")], by="n_facts")
    with pytest.raises(ValueError, match="no scored rows of backend 'rag'"):
        compare_runs([Arm.parse(f"a={a}:deltamem"), Arm.parse(f"b={b}:rag")])
    with pytest.raises(ValueError, match="expected LABEL=RUN:BACKEND"):
        Arm.parse("just-a-path")
    with pytest.raises(FileNotFoundError):
        compare_runs([Arm.parse(f"a={a}:deltamem"), Arm.parse(f"c={tmp_path / 'nope'}:deltamem")])


def test_cli_prints_the_table(tmp_path):
    a = _run(tmp_path / "a", {"deltamem": {4: [1, 0, 1]}, "window": {4: [0, 0, 1]}})
    b = _run(tmp_path / "b", {"deltamem": {4: [1, 1, 1]}})
    res = CliRunner().invoke(cli.app, ["bench", "compare", f"v1={a}:deltamem", f"v2={b}:deltamem",
                                       f"buf={a}:window", "--by", "n_facts"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("| synthetic-capacity"))
    assert "| 3 |" in line and "+0.333 [" in line and "-0.333 [" in line  # v2 − v1, buf − v1
    bad = CliRunner().invoke(cli.app, ["bench", "compare", f"v1={a}:deltamem", f"x={a}:rag"])
    assert bad.exit_code != 0 and "no scored rows" in bad.output
