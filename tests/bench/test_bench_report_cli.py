"""Report tables from hand-made rows, the `bench` CLI wiring, and the bench package's import layering."""

from __future__ import annotations

from dataclasses import replace

import ast
import json
from pathlib import Path

from typer.testing import CliRunner

from deltamem_agents import cli
from deltamem_agents.bench.report import ORDER, by_cell, cells_of, render
from deltamem_agents.bench.tasks import TASKS

BENCH = Path(__file__).resolve().parents[2] / "deltamem_agents" / "bench"


def _rows() -> list[dict]:
    rows = []
    scores = {"window": [0, 1, 0, 0], "deltamem": [1, 1, 0, 1], "deltamem_shuffled": [0, 1, 0, 1]}
    for backend, xs in scores.items():
        for i, s in enumerate(xs):
            rows.append({"task": "synthetic-distance", "item_id": f"d500/out_of_window/{i}", "backend": backend,
                         "condition": "out_of_window", "distance": 500, "score": float(s), "skipped": None,
                         "prompt_tokens": 100, "latency_s": 1.0, "prep_s": 0.5, "memory_bytes": 76812,
                         "memory_kind": "delta_state", "kv_bytes": 4_608_000, "history_tokens": 700, "budget": 256})
    rows.append({"task": "synthetic-distance", "item_id": "d500/out_of_window/0", "backend": "full",
                 "condition": "out_of_window", "distance": 500, "score": None, "skipped": "does not fit",
                 "history_tokens": 700})
    rows.append({"task": "locomo", "item_id": "conv-1/q0", "backend": "window", "category": 2, "score": 0.5,
                 "skipped": None})
    return rows


def test_cells_and_paired_differences():
    rows = _rows()
    assert cells_of(rows[-1]) == ["cat 1-4 (F1)", "cat 2 (F1)"]
    assert cells_of({"task": "locomo", "category": 5}) == ["cat 5 adversarial (acc)"]
    cells = by_cell(rows)
    assert "full" not in cells[("synthetic-distance", "out_of_window")]  # skipped rows are never scored
    text = render(rows)
    assert "0.750 [" in text and "0.250 [" in text  # δ-mem and window means
    line = next(x for x in text.splitlines() if x.startswith("| synthetic-distance | out_of_window | +"))
    assert "+0.500 [" in line and "×3.00" in line  # δ-mem − window: paired mean and ratio of means
    assert "+0.250 [" in line  # δ-mem − shuffled
    assert "| full | 0 | 1 |" in text  # cost table counts the skipped row


def test_task_conditions_select_items_and_are_validated():
    import pytest

    from deltamem_agents.bench.tasks import TaskConfig, build_items

    count = lambda s: len(s.split())  # noqa: E731  (item selection only; no model needed)
    its = build_items("synthetic-distance", TaskConfig(limit=2, distances=(50,), conditions=("in_window",)), count)
    assert len(its) == 2 and {i.fields["condition"] for i in its} == {"in_window"}
    kinds = ("colour", "food")
    its = build_items("synthetic-distance", TaskConfig(limit=3, distances=(50,), value_kinds=kinds), count)
    assert len(its) == 6 and {i.fields["value_kind"] for i in its} <= set(kinds)
    # capacity: the asked fact is of the kinds, the others of any kind; without kinds the items are unchanged
    cap = TaskConfig(limit=3, n_facts=(1, 4), capacity_distance=60, value_kinds=kinds)
    its = build_items("synthetic-capacity", cap, count)
    assert len(its) == 6 and {i.fields["value_kind"] for i in its} <= set(kinds)
    assert sorted({i.fields["n_facts"] for i in its}) == [1, 4]
    plain = build_items("synthetic-capacity", replace(cap, value_kinds=None), count)
    again = build_items("synthetic-capacity", replace(cap, value_kinds=None), count)
    assert len(plain) == 6 and plain != its and plain == again
    for bad in ((), ("inside",)):
        with pytest.raises(ValueError, match="conditions"):
            TaskConfig(conditions=bad)


def test_cli_lists_match_the_package():
    from deltamem_agents.bench.backends import BACKENDS

    from deltamem_agents.cli import bench as cli_bench  # kept as literals there so `--help` needs no torch

    assert cli_bench.BENCH_TASKS == TASKS and cli_bench.BENCH_BACKENDS == tuple(BACKENDS) == ORDER


def test_cli_report_and_help(tmp_path):
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in _rows()) + "\n")
    runner = CliRunner()
    res = runner.invoke(cli.app, ["bench", "report", str(tmp_path), "--out-dir", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "## Paired differences" in (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "plots" / "accuracy_vs_distance.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "plots" / "locomo_by_category.png").stat().st_size > 1000  # the one LoCoMo row
    res = runner.invoke(cli.app, ["bench", "--help"])
    assert res.exit_code == 0 and "--budget" in res.output and "report" in res.output


def test_bench_never_imports_integrations():
    bad = []
    for f in BENCH.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{f.name}: {n}" for n in names if n.split(".")[0] in
                    ("langchain_deltamem", "llama_index_deltamem", "langchain", "llama_index", "integrations")]
    assert not bad, bad


def test_resume_key_survives_its_json_round_trip(tmp_path):
    import pytest

    from deltamem_agents.bench.runner import BenchConfig, _check_config
    from deltamem_agents.bench.tasks import TaskConfig

    cfg = BenchConfig(out=tmp_path, task=TaskConfig(value_kinds=("colour", "food")))
    _check_config(cfg)
    _check_config(cfg)  # the same settings resume (tuples are stored as lists)
    with pytest.raises(ValueError, match="value_kinds"):
        _check_config(BenchConfig(out=tmp_path, task=TaskConfig(value_kinds=("colour",))))


def test_control_pairs_appear_when_their_rows_do():
    rows = _rows()
    extra = {"lora_window": [0, 0, 1, 0], "deltamem_frozen": [1, 1, 0, 1], "lora_deltamem": [1, 0, 0, 0]}
    for backend, xs in extra.items():
        for i, s in enumerate(xs):
            rows.append({**rows[0], "backend": backend, "item_id": f"d500/out_of_window/{i}", "score": float(s)})
    text = render(rows)
    assert "δ-mem − LoRA (window)" in text and "δ-mem frozen − shuffled" in text
    assert "δ-mem+RAG − shuffled+RAG" not in text  # no hybrid rows: no such column
    assert "| LoRA+δ-mem |" in text  # δ-mem stacked on the LoRA-merged backbone
    by_distance = text.split("Paired differences by distance:")[1]
    assert by_distance.count("| 500 | +0.500 [") == 1  # per distance: δ-mem − window first
    line = next(x for x in text.splitlines() if x.startswith("| synthetic-distance | out_of_window | +"))
    assert "+0.500 [" in line  # δ-mem (0.75) − LoRA (0.25)
