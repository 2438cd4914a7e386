"""Every backend on real-model items: well-formed rows, who sees what, the shuffled control, resumability.

The backbone is the real default SmolLM2-135M with a freshly attached, randomised SSW adapter (no trained
adapter is shipped), so δ-states are non-trivial; answers are 3 tokens long to keep this fast.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.bench.backends import (BACKENDS, NEEDS_ADAPTER, deltamem, deltamem_frozen, deltamem_rag,
                                            deltamem_rag_shuffled, deltamem_shuffled, donor_passes, floor, full, rag)
from deltamem_agents.bench.context import BenchContext
from deltamem_agents.bench.report import read_rows, write_report
from deltamem_agents.bench.runner import BenchConfig, answer, run_bench
from deltamem_agents.bench.tasks import TaskConfig, build_items
from deltamem_agents.core.config import ssw
from deltamem_agents.patching import attach, detach
from tests.conftest import randomize_adapter

pytestmark = pytest.mark.slow
THREADS = int(os.environ.get("DELTAMEM_TEST_THREADS", "2"))
BUDGET, FULL = 128, 1024
TCFG = TaskConfig(limit=1, distances=(200,), full_budget=FULL)
SYNTH_BACKENDS = tuple(b for b in BACKENDS if b != "fact")  # `fact` needs fact turns (openset tests)


@pytest.fixture(scope="module")
def model():
    net, tok = load_backbone()
    randomize_adapter(attach(net, ssw()), seed=3, scale=0.3)
    yield net, tok
    detach(net)


@pytest.fixture(scope="module")
def ctx(model):
    return BenchContext(*model, budget=BUDGET, full_budget=FULL)


@pytest.fixture(scope="module")
def items(model):
    tok = model[1]
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    its = build_items("synthetic-distance", TCFG, count)
    return {i.fields["condition"]: replace(i, max_new_tokens=3) for i in its}


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig(out=out, tasks=("synthetic-distance",), backends=SYNTH_BACKENDS, budget=BUDGET,
                      max_new_tokens=3, threads=THREADS, progress=False, task=TCFG)
    return cfg, run_bench(cfg, model=model[0], tokenizer=model[1])


def test_rows_are_well_formed(run):
    cfg, path = run
    rows = read_rows(path)
    assert len(rows) == 2 * len(SYNTH_BACKENDS)  # 2 items (in / out of window) x 9 backends
    kinds = {"floor": "none", "window": "none", "full": "kv_cache", "rag": "retrieved_text",
             "deltamem": "delta_state", "deltamem_shuffled": "delta_state", "deltamem_frozen": "delta_state",
             "deltamem_rag": "delta_state+retrieved_text", "deltamem_rag_shuffled": "delta_state+retrieved_text"}
    for r in rows:
        assert r["skipped"] is None and r["task"] == "synthetic-distance" and r["distance"] == 200
        assert isinstance(r["prediction"], str) and r["gold"] and r["score"] in (0.0, 1.0)
        assert r["latency_s"] > 0 and r["prompt_tokens"] > 0 and r["history_tokens"] > 200
        assert r["memory_kind"] == kinds[r["backend"]]
        assert r["kv_bytes"] == r["prompt_tokens"] * 2 * 30 * 3 * 64 * 4  # SmolLM2-135M, fp32
        if r["backend"] in NEEDS_ADAPTER:
            assert r["memory_bytes"] >= 76_000  # the 30-layer SSW state (S + pending sum)
        if r["backend"] in ("window", "deltamem", "deltamem_shuffled", "deltamem_frozen", "floor", "rag",
                            "deltamem_rag"):
            assert r["prompt_tokens"] <= r["budget"] - cfg.reserve + 3  # + the assistant header
    by = {(r["backend"], r["condition"]): r for r in rows}
    assert by[("window", "in_window")]["in_window"] and not by[("window", "out_of_window")]["in_window"]
    assert by[("full", "out_of_window")]["prompt_tokens"] == by[("window", "in_window")]["prompt_tokens"]
    assert by[("deltamem", "out_of_window")]["prep_s"] > 0  # its evicted history was written
    assert by[("deltamem_shuffled", "out_of_window")]["donor_id"] == "d200/1"


def test_floor_sees_no_history_and_full_sees_all(ctx, items):
    it = items["out_of_window"]
    fact = it.messages[it.evidence[0]]["content"]
    r = ctx.renderer(it.system_prompt)
    f, w = floor(ctx, it), full(ctx, it)
    assert f.ids == r.system_ids + r.message_ids({"role": "user", "content": it.question}) + \
        r.generation_prompt_ids
    assert fact not in ctx.tok.decode(f.ids) and fact in ctx.tok.decode(w.ids)
    assert len(w.ids) > ctx.history_tokens(it) > len(f.ids)
    assert full(BenchContext(ctx.model, ctx.tok, budget=BUDGET, full_budget=256), it).skip  # too long: marked


def test_shuffled_control_reads_another_episodes_state(ctx, items, monkeypatch):
    for it in items.values():  # in and out of the window
        own, shuf = deltamem(ctx, it), deltamem_shuffled(ctx, it)
        donor = donor_passes(ctx, it, ctx.policy(it))
        assert donor.read_ids != ctx.passes(it, ctx.policy(it)).read_ids
        donor_whole, _ = ctx.state(donor, whole=True)
        assert it.donor != it.messages and shuf.fields["donor_id"] != it.item_id
        assert shuf.ids == own.ids  # same prompt
        assert torch.equal(shuf.state.S, donor_whole.S) and not torch.equal(shuf.state.S, own.state.S)
        assert not torch.equal(donor_whole.S, ctx.state(donor)[0].S)  # the donor's window is in it too
        assert donor_whole.S.abs().sum() > 0 and int(shuf.state.pend_id) == -1  # rebased onto this item
        seen = []
        real = ctx.engine.generate
        monkeypatch.setattr(ctx.engine, "generate", lambda cur, ids, mids, mid, cfg: seen.append((mids, mid)) or
                            real(cur, ids, mids, mid, cfg))
        ctx.generate(shuf, 2)
        ctx.generate(own, 2)
        monkeypatch.undo()
        (s_mids, s_mid), (o_mids, o_mid) = seen
        assert set(s_mids) == {-1} and s_mid == -1  # none of the item's own tokens enter the control's state
        assert o_mids == own.mids and o_mid == len(it.messages) + 1  # δ-mem writes the window and its answer


def test_frozen_arm_reads_its_own_whole_state_like_the_shuffled_control(ctx, items, monkeypatch):
    for it in items.values():
        own, frozen, shuf = deltamem(ctx, it), deltamem_frozen(ctx, it), deltamem_shuffled(ctx, it)
        whole, _ = ctx.state(ctx.passes(it, ctx.policy(it)), whole=True)
        assert frozen.ids == own.ids == shuf.ids and not frozen.write and not shuf.write
        assert torch.equal(frozen.state.S, whole.S) and not torch.equal(frozen.state.S, shuf.state.S)
        assert int(frozen.state.pend_id) == -1
        if it.fields["condition"] == "in_window":  # nothing evicted: the runtime arm starts empty, frozen does not
            assert own.state.S.abs().sum() == 0 and frozen.state.S.abs().sum() > 0
        seen = []
        real = ctx.engine.generate
        monkeypatch.setattr(ctx.engine, "generate", lambda cur, ids, mids, mid, cfg: seen.append((mids, mid)) or
                            real(cur, ids, mids, mid, cfg))
        ctx.generate(frozen, 2)
        monkeypatch.undo()
        assert set(seen[0][0]) == {-1} and seen[0][1] == -1  # read with writes off: the state is not changed


def test_rag_shuffled_control_has_the_hybrids_prompt_and_the_donors_state(ctx, items):
    it = items["out_of_window"]
    hyb, ctl = deltamem_rag(ctx, it), deltamem_rag_shuffled(ctx, it)
    assert ctl.ids == hyb.ids and ctl.fields["retrieved"] == hyb.fields["retrieved"]  # same prompt, same retrieval
    pol = ctx.policy(it, shrink=ctx.rag_tokens(it))
    donor, _ = ctx.state(donor_passes(ctx, it, pol), whole=True)
    assert torch.equal(ctl.state.S, donor.S) and not torch.equal(ctl.state.S, hyb.state.S)
    assert not ctl.write and hyb.write and ctl.fields["donor_id"] == it.donor_id


def test_rag_scope_all_retrieves_the_visible_fact(model, items):
    it = items["in_window"]
    evicted = BenchContext(*model, budget=BUDGET, full_budget=FULL)
    assert rag(evicted, it).fields["retrieved"] == []  # the whole history fits: nothing left the window
    every = BenchContext(*model, budget=BUDGET, full_budget=FULL, rag_scope="all")
    p = rag(every, it)
    assert it.evidence[0] in p.fields["retrieved"]  # the fact turn, shown again above the window
    assert it.messages[it.evidence[0]]["content"].strip() in every.tok.decode(p.ids)
    with pytest.raises(ValueError, match="rag_scope"):
        BenchContext(*model, budget=BUDGET, rag_scope="everything")


def test_rag_retrieves_only_evicted_messages_within_budget(ctx, items):
    it = items["out_of_window"]
    p = rag(ctx, it)
    start = p.fields["window_start"]
    assert p.fields["retrieved"] and all(i < start for i in p.fields["retrieved"])
    text = ctx.tok.decode(p.ids)
    assert "Relevant earlier conversation:" in text
    assert all(it.messages[i]["content"].strip() in text for i in p.fields["retrieved"])
    assert len(p.ids) <= BUDGET - ctx.reserve + 3 and p.memory_bytes == len(text.split("<|im_end|>")[0]
                                                                             .split("\n\n", 1)[1].encode())
    first_written = next(i for i, m in enumerate(p.mids) if m >= 0)
    assert "Relevant earlier conversation:" in ctx.tok.decode(p.ids[:first_written])  # read, never written again


def test_resume_adds_nothing_and_refuses_other_settings(run, model):
    cfg, path = run
    before = path.read_text()
    run_bench(cfg, model=model[0], tokenizer=model[1])
    assert path.read_text() == before
    with pytest.raises(ValueError, match="other settings"):
        run_bench(replace(cfg, budget=256), model=model[0], tokenizer=model[1])


def test_report_tables_and_plots(run, tmp_path):
    _, path = run
    text = write_report(path, tmp_path)
    assert "## Scores by task" in text and "δ-mem − shuffled" in text and "| synthetic-distance | in_window |" in text
    assert "(n=1)" in text and "## Accuracy by fact distance" in text
    for name in ("accuracy_vs_distance", "memory_bytes", "latency_vs_history"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_other_tasks_answer_on_the_real_model(ctx, model):
    tok = model[1]
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    cfg = TaskConfig(limit=1, n_facts=(4,), capacity_distance=150, update_distances=(150,), full_budget=FULL,
                     babi_filler=150, vartrack_hops=(2,), vartrack_distance=150)
    for task in ("synthetic-capacity", "synthetic-update", "synthetic-vartrack", "babi", "capability"):
        it = replace(build_items(task, cfg, count)[-1], max_new_tokens=3)
        row = answer(ctx, it, "deltamem")
        assert row["task"] == task and 0.0 <= row["score"] <= 1.0 and row["prompt_tokens"] <= row["budget"]
        assert ("says_old" in row) == (task == "synthetic-update") and row["memory_kind"] == "delta_state"
        assert ("says_decoy" in row) == (task == "synthetic-vartrack")
    big = BenchContext(*model, budget=384, full_budget=FULL)  # the LoCoMo question prompt alone is ~120 tokens
    locomo = [replace(i, max_new_tokens=3) for i in build_items("locomo", cfg, count)[:5:4]]  # categories 1 and 5
    rows = [answer(big, i, "window") for i in locomo]
    assert [r["category"] for r in rows] == [1, 5] and all(r["prompt_tokens"] <= 384 for r in rows)
    assert rows[1]["prediction"] in locomo[1].fields["options"].values()  # category 5: an option is chosen
    assert answer(big, locomo[0], "full")["skipped"]  # a LoCoMo conversation never fits 1k tokens


def test_without_an_adapter_the_memory_backends_are_left_out(real_backbone, tmp_path, caplog):
    net, tok = real_backbone  # the plain shared backbone: no δ-mem attached
    cfg = BenchConfig(out=tmp_path, tasks=("synthetic-distance",), backends=("floor", "deltamem"), budget=BUDGET,
                      adapter="none", max_new_tokens=2, threads=THREADS, progress=False,
                      task=replace(TCFG, distances=(0,)))
    rows = read_rows(run_bench(cfg, model=net, tokenizer=tok))
    assert [r["backend"] for r in rows] == ["floor", "floor"] and "skipping the backends" in caplog.text
    with pytest.raises(ValueError, match="RAG window"):
        BenchConfig(out=tmp_path, backends=("rag",), budget=80, reserve=16)


def test_a_second_run_on_the_same_rows_is_refused(run, model):
    from deltamem_agents.bench.rowlock import exclusive_rows
    from deltamem_agents.errors import RunBusyError

    cfg, path = run
    before = path.read_text()
    with exclusive_rows(path):  # as if another `bench` with this --out were still running
        with pytest.raises(RunBusyError):
            run_bench(cfg, model=model[0], tokenizer=model[1])
    assert path.read_text() == before
