"""The LoRA control: same parameter budget as δ-mem, only LoRA trains, it resumes, and it merges for eval."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach
from deltamem_agents.patching.lora import load_lora_control
from lab.lora_control import LoRAControlConfig, LoRAControlTrainer, trainable_parameters

SAMPLER = {"budget_range": (128, 160), "distance_start": 10, "distance_end": 40, "in_window_frac": 0.0,
           "mix": {"fact": 1.0}}


def test_lora_control_matches_budget_trains_resumes_and_merges(tmp_path):
    model, tok = load_backbone()
    cfg = LoRAControlConfig(out_dir=str(tmp_path), steps=1, grad_accum=1, sampler=SAMPLER)
    tr = LoRAControlTrainer(model, tok, cfg)
    n_lora = trainable_parameters(tr.model)
    ref, _ = load_backbone()
    n_delta = sum(p.numel() for p in attach(ref, DeltaMemConfig(rank=8, write_granularity="message_mean")).parameters())
    assert abs(n_lora - n_delta) / n_delta < 0.01, (n_lora, n_delta)
    tr.train()
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and rows[0]["loss"] == rows[0]["loss"]
    # resume continues from step 1
    fresh, _ = load_backbone()
    tr2 = LoRAControlTrainer(fresh, tok, LoRAControlConfig(out_dir=str(tmp_path), steps=1, grad_accum=1,
                                                            sampler=SAMPLER))
    assert tr2.step == 1
    # merged control differs from the plain backbone (LoRA B starts at zero, so one step must have moved it)
    base, _ = load_backbone()
    merged = load_lora_control(load_backbone()[0], tmp_path / "checkpoint-last")
    ids = torch.tensor([tok("Hello there, how are you?")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, base(ids).logits)
    # the probe evaluates the merged control through `eval memory --lora` (window condition only, no δ-mem)
    import pytest

    from deltamem_agents.bench.run_probe import run_probe

    out = tmp_path / "probe.jsonl"
    run_probe(adapter="none", n=1, distances=[20], budget=256, out=out, seed=0, conditions=["window"], threads=1,
              show_progress=False, max_new_tokens=2, lora=str(tmp_path / "checkpoint-last"))
    row = json.loads(out.read_text().splitlines()[0])
    assert row["condition"] == "window" and row["adapter"].startswith("lora:")
    with pytest.raises(ValueError, match="LoRA control"):
        run_probe(adapter="none", n=1, distances=[20], budget=256, out=out, seed=0, conditions=["deltamem"],
                  lora=str(tmp_path / "checkpoint-last"))
    # ... and the bench runs it beside δ-mem's rows (`bench --adapter none --lora DIR`), rows named lora_<backend>
    from deltamem_agents.bench.report import read_rows
    from deltamem_agents.bench.runner import BenchConfig, run_bench
    from deltamem_agents.bench.tasks import TaskConfig

    ckpt = str(tmp_path / "checkpoint-last")
    bcfg = BenchConfig(out=tmp_path / "bench", tasks=("synthetic-distance",), backends=("window",), adapter="none",
                       lora=ckpt, budget=128, max_new_tokens=2, threads=1, progress=False,
                       task=TaskConfig(limit=1, distances=(20,), conditions=("out_of_window",)))
    rows = read_rows(run_bench(bcfg))
    assert [r["backend"] for r in rows] == ["lora_window"] and rows[0]["lora"] == ckpt
    assert read_rows(run_bench(bcfg)) == rows  # resumes: nothing to add
    with pytest.raises(ValueError, match="LoRA control"):
        BenchConfig(out=tmp_path / "b2", backends=("window", "deltamem"), adapter="none", lora=ckpt)
    stacked = replace(bcfg, out=tmp_path / "b3", backends=("deltamem",), adapter="default")  # δ-mem on LoRA-merged
    rows = read_rows(run_bench(stacked))
    assert [r["backend"] for r in rows] == ["lora_deltamem"] and rows[0]["memory_kind"] == "delta_state"
    # eval-harm scores the control's replies beside δ-mem's (`eval harm --lora DIR`)
    from deltamem_agents.bench.run_harm import run_harm

    text = run_harm(adapter="default", n=2, distance=40, budget=128, out=tmp_path / "harm.jsonl", threads=1,
                    max_new_tokens=4, show_progress=False, lora=ckpt)
    hrows = [json.loads(x) for x in (tmp_path / "harm.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["lora_f1"] <= 1.0 and r["lora_dir"] == ckpt and r["lora"] != ckpt for r in hrows)
    assert "LoRA control" in text


def test_lora_control_preservation_matches_a_separate_backbone_and_trains(tmp_path):
    """The control can be held to δ-mem's preservation terms: its KL teacher (peft's adapters disabled) equals a
    separately loaded frozen backbone; the KL is 0 at the start (LoRA B = 0) and the run logs it per step."""
    import pytest

    from deltamem_agents.runtime.render import ChatRenderer
    from deltamem_agents.runtime.replay import build_passes
    from lab.lora_control import answer_loss, lora_preserve_kl
    from deltamem_agents.train.preserve import preserve_positions
    from deltamem_agents.datasets.sampler import EpisodeSampler

    model, tok = load_backbone()
    with pytest.raises(ValueError, match="preserve_weight"):
        LoRAControlTrainer(model, tok, LoRAControlConfig(out_dir=str(tmp_path / "x"), chat_frac=0.5, sampler=SAMPLER))
    cfg = LoRAControlConfig(out_dir=str(tmp_path), steps=2, grad_accum=3, sampler=SAMPLER, preserve_weight=1.0,
                            chat_frac=0.5, bf16=False, lr=1e-2, max_grad_norm=0.0, lr_schedule="constant",
                            keep_steps=(1,))
    tr = LoRAControlTrainer(model, tok, cfg)
    ep, policy = EpisodeSampler(tok, seed=3, total_steps=1, **SAMPLER).sample(0, 0)
    p = build_passes(ep, ChatRenderer(tok, cfg.system_prompt), policy)
    logits: list[torch.Tensor] = []
    answer_loss(tr.model, p.read_ids, p.labels, logits)
    assert lora_preserve_kl(tr.model, p, logits[0]).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # move the LoRA off zero: the KL must see it, against an independent teacher
        for n, w in tr.model.named_parameters():
            if "lora_B" in n:
                w.normal_(0, 0.02)
        logits = []
        answer_loss(tr.model, p.read_ids, p.labels, logits)
        kl = lora_preserve_kl(tr.model, p, logits[0])
        ref, _ = load_backbone()
        pos = preserve_positions(p)
        t = torch.log_softmax(ref(input_ids=torch.tensor([p.read_ids])).logits[0, pos].float(), -1)
        s = torch.log_softmax(logits[0][pos].float(), -1)
        naive = (t.exp() * (t - s)).sum(-1).mean()
    assert kl.item() > 1e-4 and kl.item() == pytest.approx(naive.item(), rel=1e-3)
    tr.train()
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert json.loads((tmp_path / "checkpoint-step1" / "trainer_state.json").read_text())["step"] == 1
    assert all(r["preserve_kl"] is None or r["preserve_kl"] > 0 for r in rows)
    assert any(r["preserve_kl"] is not None for r in rows) and any(r["answer_ce"] is not None for r in rows)
