"""Reply preservation (bench/harm.py) on the real backbone: chit-chat endings, and the scores' two anchors."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import randomize_adapter


@pytest.fixture(scope="module")
def setup():
    from deltamem_agents.backbone import load_backbone
    from deltamem_agents.bench.probe import MemoryProbe
    from deltamem_agents.core.config import DeltaMemConfig
    from deltamem_agents.patching import attach, detach
    from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
    from deltamem_agents.datasets.sampler import EpisodeSampler

    model, tok = load_backbone()
    ad = attach(model, DeltaMemConfig(write_granularity="token", beta_bias_init=1.0))
    sampler = EpisodeSampler(tok, value_kinds=["colour", "food"])
    eps = [sampler.generate_one(40 + i, "heldout", mix={"fact": 1.0}, distance_range=(150, 150)) for i in range(2)]
    yield model, ad, MemoryProbe(model, tok, ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT), max_new_tokens=6), eps
    detach(model)


def test_chat_ending_replaces_the_question_and_mentions_no_fact_value(setup):
    from deltamem_agents.bench.harm import chat_ending
    from deltamem_agents.datasets.episode import fact_values

    *_, eps = setup
    for i, ep in enumerate(eps):
        c = chat_ending(ep, i)
        assert c.messages == ep.messages and c.question != ep.question
        assert not any(v in c.question.lower() for v in fact_values(ep))
        assert chat_ending(ep, i) == c  # seeded


def test_scores_are_one_when_the_reads_change_nothing_and_bounded_otherwise(setup):
    from deltamem_agents.bench.harm import reply_rows
    from deltamem_agents.runtime.window import WindowPolicy

    model, ad, probe, eps = setup
    policy = WindowPolicy(budget=128, reserve=48)
    randomize_adapter(ad, seed=1, scale=0.5)
    with torch.no_grad():  # reads still happen, but the corrections they feed are zero
        saved = {n: p.clone() for n, p in ad.named_parameters() if "delta_" in n}
        for n, p in ad.named_parameters():
            if "delta_" in n:
                p.zero_()
    rows = reply_rows(probe, eps, policy)
    assert all(r["deltamem_f1"] == 1.0 and r["deltamem_first3"] and r["deltamem_len_ratio"] == 1.0 for r in rows)
    assert all(r["deltamem"] == r["backbone"] == r["shuffled"] for r in rows)
    with torch.no_grad():
        for n, p in ad.named_parameters():
            if n in saved:
                p.copy_(saved[n] * 20)
    rows = reply_rows(probe, eps, policy)
    assert all(0.0 <= r["deltamem_f1"] <= 1.0 and r["backbone"] for r in rows)
    assert any(r["deltamem"] != r["backbone"] for r in rows)  # large corrections do change replies
    only = reply_rows(probe, eps, policy, score={1})
    assert [r["episode"] for r in only] == [1] and only[0] == rows[1]  # scoring a subset changes nothing


def test_backbone_references_see_more_of_the_same_conversation(setup):
    from deltamem_agents.bench.harm import reply_rows
    from deltamem_agents.runtime.window import WindowPolicy

    model, ad, probe, eps = setup
    # a window that already holds the whole history: both references see exactly what the backbone saw
    rows = reply_rows(probe, eps, WindowPolicy(budget=4096, reserve=48))
    assert all(r["wider"] == r["full"] == r["backbone"] and r["full_f1"] == 1.0 for r in rows)
    rows = reply_rows(probe, eps, WindowPolicy(budget=128, reserve=48), references=False)
    assert all("wider" not in r and "full_f1" not in r for r in rows)


def test_lora_arm_is_scored_against_the_backbone(setup):
    """A probe over a model whose LoRA changes nothing (here the same backbone, read without δ-mem) scores 1."""
    from deltamem_agents.bench.harm import reply_rows
    from deltamem_agents.runtime.window import WindowPolicy

    model, ad, probe, eps = setup
    rows = reply_rows(probe, eps, WindowPolicy(budget=128, reserve=48), references=False, lora_probe=probe)
    assert all(r["lora"] == r["backbone"] and r["lora_f1"] == 1.0 and r["lora_first3"] for r in rows)
    assert "lora" not in reply_rows(probe, eps[:1] * 2, WindowPolicy(budget=128, reserve=48), references=False)[0]
