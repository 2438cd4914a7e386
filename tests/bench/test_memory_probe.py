"""The memory probe on the real backbone with a random SSW adapter: conditions, controls, summary table."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import randomize_adapter


@pytest.fixture(scope="module")
def probe_setup():
    from deltamem_agents.backbone import load_backbone
    from deltamem_agents.bench.probe import MemoryProbe
    from deltamem_agents.core.config import DeltaMemConfig
    from deltamem_agents.patching import attach
    from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer

    model, tok = load_backbone()
    randomize_adapter(attach(model, DeltaMemConfig(write_granularity="message_mean", beta_bias_init=-1.0)), seed=3,
                      scale=0.05)
    renderer = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    return model, tok, renderer, MemoryProbe(model, tok, renderer, max_new_tokens=4)


def _episodes(tok, n=2):
    from deltamem_agents.datasets.synthetic import generate

    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    return generate(n, seed=5, split="heldout", mix={"fact": 1.0}, distance_range=(160, 160), count_tokens=count)


def test_conditions_rows_and_prompt_sizes(probe_setup):
    from deltamem_agents.runtime.window import WindowPolicy

    model, tok, renderer, probe = probe_setup
    eps = _episodes(tok)
    rows = probe.run(eps, WindowPolicy(budget=128, reserve=48), score={0})
    by = {r["condition"]: r for r in rows}
    assert set(by) == {"window", "deltamem", "shuffled", "counterfactual", "empty", "full"}
    assert all(r["episode"] == 0 and not r["fact_in_window"] for r in rows)
    assert by["full"]["prompt_tokens"] > by["window"]["prompt_tokens"] == by["deltamem"]["prompt_tokens"]
    assert by["full"]["prompt_tokens"] >= eps[0].tokens_after_fact(lambda s: len(tok(s)["input_ids"]))


def test_control_states_differ_from_the_own_state(probe_setup):
    from deltamem_agents.datasets.counterfactual import counterfactual
    from deltamem_agents.runtime.window import WindowPolicy
    from deltamem_agents.runtime.replay import history_passes

    model, tok, renderer, probe = probe_setup
    policy = WindowPolicy(budget=128, reserve=48)
    ep, other = _episodes(tok)
    own = probe.build_state(history_passes(ep, renderer, policy))
    twin = probe.build_state(history_passes(counterfactual(ep, 1), renderer, policy))
    shuf = probe.build_state(history_passes(other, renderer, policy))
    assert own.S.abs().sum() > 0
    assert not torch.allclose(own.S, twin.S) and not torch.allclose(own.S, shuf.S)
    # the twin differs only in the fact and its acknowledgement, so it is closer to the own state than a stranger
    assert (own.S - twin.S).norm() < (own.S - shuf.S).norm()


def test_summary_has_memory_columns(tmp_path):
    from deltamem_agents.bench.run_probe import summarize

    rows = []
    for i in range(6):
        for cond, ok in (("window", 0), ("deltamem", i % 2), ("shuffled", 0), ("counterfactual", 0)):
            rows.append({"distance": 500, "episode": i, "condition": cond, "correct": bool(ok)})
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    text = summarize(path)
    assert "δ-mem − counterfactual" in text and "δ-mem − shuffled" in text
    assert "| 500 | 6 | 0.00" in text and "+0.50" in text
    # a backbone-only run (e.g. the full-history ceiling) has no δ-mem differences and no empty columns
    path.write_text("\n".join(json.dumps(r) for r in rows if r["condition"] == "window"))
    lines = summarize(path).splitlines()
    assert lines[0] == "| distance | n | window |" and lines[2] == "| 500 | 6 | 0.00 [0.00, 0.00] |"


def test_read_only_cursor_reads_the_state_but_never_writes_it(probe_setup):
    from deltamem_agents.runtime.decode import Engine

    model, tok, renderer, probe = probe_setup
    eng = Engine(model, tok)
    ids = tok("My favourite colour is teal and I like tea.", add_special_tokens=False)["input_ids"]
    cur = eng.new_cursor(model.deltamem.zero_state(1))
    eng.forward(cur, ids, [0] * len(ids))
    state = cur.state.rebased()
    ro, rw = eng.new_cursor(state, write=False), eng.new_cursor(state)
    lo_ro, lo_rw = eng.forward(ro, ids, [1] * len(ids)), eng.forward(rw, ids, [1] * len(ids))
    assert ro.state is state and torch.equal(ro.state.S, state.S)
    assert not torch.equal(rw.state.S, state.S)
    assert not torch.allclose(lo_ro, lo_rw)  # the written tokens change what later tokens read


def test_frozen_controls_in_the_window(probe_setup):
    from deltamem_agents.runtime.window import WindowPolicy
    from deltamem_agents.runtime.replay import history_passes

    model, tok, renderer, probe = probe_setup
    eps = _episodes(tok)
    policy = WindowPolicy(budget=2048, reserve=48)
    rows = probe.run(eps, policy, ["deltamem", "shuffled", "deltamem_frozen", "shuffled_frozen"], score={0})
    assert {r["condition"] for r in rows} == {"deltamem", "shuffled", "deltamem_frozen", "shuffled_frozen"}
    assert all(r["fact_in_window"] for r in rows)
    # in the window there are no history epochs: the plain shuffled state is empty (so no control), while the
    # frozen states hold each whole episode and differ
    p0, p1 = (history_passes(e, renderer, policy) for e in eps)
    assert not p0.write_passes and float(probe.build_state(p1).S.abs().sum()) == 0.0
    f0, f1 = probe.build_full_state(p0), probe.build_full_state(p1)
    assert float(f0.S.abs().sum()) > 0 and not torch.allclose(f0.S, f1.S)


def test_empty_frozen_is_the_backbone_without_a_task_path_and_the_task_path_with_one():
    """`empty_frozen` (zero state, writes off): no state reaches the answer, so an adapter without a task path
    answers exactly as the backbone; with a task path only that path acts (and it does change answers)."""
    from deltamem_agents.backbone import load_backbone
    from deltamem_agents.bench.probe import MemoryProbe
    from deltamem_agents.core.config import DeltaMemConfig
    from deltamem_agents.patching import attach
    from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
    from deltamem_agents.runtime.window import WindowPolicy

    model, tok = load_backbone()
    ad = attach(model, DeltaMemConfig(write_granularity="token", task_rank=4))
    randomize_adapter(ad, seed=4, scale=0.05)
    with torch.no_grad():
        ups = {n: p.clone() for n, p in ad.named_parameters() if n.endswith(("task_q_up", "task_o_up"))}
        for n, p in ad.named_parameters():
            if n in ups:
                p.zero_()  # a task path that does nothing
    probe = MemoryProbe(model, tok, ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT), max_new_tokens=6)
    eps = _episodes(tok, 3)
    conds = ["window", "empty_frozen"]
    rows = probe.run(eps, WindowPolicy(budget=128, reserve=48), conditions=conds)
    by = {(r["episode"], r["condition"]): r["prediction"] for r in rows}
    assert all(by[(i, "window")] == by[(i, "empty_frozen")] for i in range(3))
    with torch.no_grad():
        for n, p in ad.named_parameters():
            if n in ups:
                p.copy_(torch.randn_like(p) * 2.0)
    rows = probe.run(eps, WindowPolicy(budget=128, reserve=48), conditions=conds)
    by = {(r["episode"], r["condition"]): r["prediction"] for r in rows}
    assert any(by[(i, "window")] != by[(i, "empty_frozen")] for i in range(3))


def test_eval_compare_pairs_runs_by_episode_and_refuses_other_episodes(tmp_path):
    from typer.testing import CliRunner

    from deltamem_agents.bench.run_probe import compare
    from deltamem_agents.cli import app

    def write(path, cond, correct, golds):
        path.write_text("".join(json.dumps({"episode": i, "distance": 0, "condition": cond, "correct": c,
                                            "gold": g}) + "\n" for i, (c, g) in enumerate(zip(correct, golds))))

    golds = ["Red.", "Tea.", "Golf.", "Rice."]
    write(tmp_path / "a.jsonl", "window", [1, 1, 0, 1], golds)
    write(tmp_path / "b.jsonl", "deltamem", [1, 0, 0, 0], golds[:3])  # one episode fewer: pairs on the shared 3
    text = compare([("A", tmp_path / "a.jsonl", "window"), ("B", tmp_path / "b.jsonl", "deltamem")])
    row = text.splitlines()[2].split(" | ")
    assert row[1] == "3" and row[2].startswith("0.67") and row[3].startswith("0.33") and row[4].startswith("-0.33")
    write(tmp_path / "c.jsonl", "deltamem", [1, 0, 0, 0], ["Blue.", *golds[1:]])
    with pytest.raises(ValueError, match="not the same episodes"):
        compare([("A", tmp_path / "a.jsonl", "window"), ("C", tmp_path / "c.jsonl", "deltamem")])
    with pytest.raises(ValueError, match="no rows of condition"):
        compare([("A", tmp_path / "a.jsonl", "full"), ("B", tmp_path / "b.jsonl", "deltamem")])
    res = CliRunner().invoke(app, ["eval", "compare", f"A={tmp_path / 'a.jsonl'}:window",
                                   f"B={tmp_path / 'b.jsonl'}:deltamem"])
    assert res.exit_code == 0 and "B − A" in res.output
    assert CliRunner().invoke(app, ["eval", "compare", f"A={tmp_path / 'a.jsonl'}:window"]).exit_code != 0
    # update probes: compare how often each arm names the old value
    for name, cond, old in (("u1.jsonl", "deltamem", [1, 1, 0]), ("u2.jsonl", "deltamem", [0, 0, 0])):
        (tmp_path / name).write_text("".join(json.dumps({"episode": i, "distance": 150, "condition": cond,
                                                         "correct": 0, "says_old": o, "gold": golds[i]}) + "\n"
                                             for i, o in enumerate(old)))
    row = compare([("v2", tmp_path / "u1.jsonl", "deltamem"), ("v5", tmp_path / "u2.jsonl", "deltamem")],
                  score="says_old").splitlines()[2].split(" | ")
    assert row[2].startswith("0.67") and row[3].startswith("0.00") and row[4].startswith("-0.67")


def test_eval_compare_joins_files_per_distance_and_plots(tmp_path):
    """An arm may span several runs (one per distance); a pair found in two files must agree; --plot draws it."""
    from typer.testing import CliRunner

    from deltamem_agents.bench.run_probe import compare
    from deltamem_agents.cli import app

    def write(path, dist, cond, correct, golds):
        path.write_text("".join(json.dumps({"episode": i, "distance": dist, "condition": cond, "correct": c,
                                            "gold": g}) + "\n" for i, (c, g) in enumerate(zip(correct, golds))))

    write(tmp_path / "a0.jsonl", 0, "window", [1, 1, 0], ["Red.", "Tea.", "Golf."])
    write(tmp_path / "a5.jsonl", 500, "window", [0, 0, 0], ["Rice.", "Blue.", "Judo."])
    write(tmp_path / "b.jsonl", 0, "deltamem", [1, 1, 1], ["Red.", "Tea.", "Golf."])
    with (tmp_path / "b.jsonl").open("a") as f:  # the second distance in the same file
        f.writelines(json.dumps({"episode": i, "distance": 500, "condition": "deltamem", "correct": 1, "gold": g})
                     + "\n" for i, g in enumerate(["Rice.", "Blue.", "Judo."]))
    text = compare([("A", [tmp_path / "a0.jsonl", tmp_path / "a5.jsonl"], "window"), ("B", tmp_path / "b.jsonl",
                                                                                      "deltamem")])
    rows = [r.split(" | ") for r in text.splitlines()[2:]]
    assert [r[0] for r in rows] == ["| 0", "| 500"]
    assert rows[0][2].startswith("0.67") and rows[1][2].startswith("0.00") and rows[1][4].startswith("+1.00")
    write(tmp_path / "a0bad.jsonl", 0, "window", [0, 1, 0], ["Red.", "Tea.", "Golf."])  # same pair, other score
    with pytest.raises(ValueError, match="disagrees"):
        compare([("A", [tmp_path / "a0.jsonl", tmp_path / "a0bad.jsonl"], "window"), ("B", tmp_path / "b.jsonl",
                                                                                       "deltamem")])
    png = tmp_path / "plot.png"
    res = CliRunner().invoke(app, ["eval", "compare", f"A={tmp_path / 'a0.jsonl'},{tmp_path / 'a5.jsonl'}:window",
                                   f"B shuffled={tmp_path / 'b.jsonl'}:deltamem", "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_keyed_states_are_reused_and_change_nothing(probe_setup, monkeypatch):
    """run_probe pairs episode i with i + 1's state; with keys, i + 1's state is written once and the rows match."""
    from deltamem_agents.runtime.window import WindowPolicy

    model, tok, renderer, probe = probe_setup
    eps = _episodes(tok, n=3)
    policy = WindowPolicy(budget=128, reserve=48)
    conds = ["deltamem", "shuffled"]
    plain = [probe.run([eps[i], eps[(i + 1) % 3]], policy, conds, score={0}) for i in range(3)]
    calls = []
    build = probe.build_state
    monkeypatch.setattr(probe, "build_state", lambda p: calls.append(1) or build(p))
    keyed = [probe.run([eps[i], eps[(i + 1) % 3]], policy, conds, score={0}, keys=[("t", i), ("t", (i + 1) % 3)])
             for i in range(3)]
    assert len(calls) == 3  # not 6: each episode's state is written once
    assert [[(r["condition"], r["prediction"]) for r in rs] for rs in keyed] == \
        [[(r["condition"], r["prediction"]) for r in rs] for rs in plain]
    with pytest.raises(ValueError, match="keys"):
        probe.run(eps[:2], policy, conds, keys=[("t", 0)])
