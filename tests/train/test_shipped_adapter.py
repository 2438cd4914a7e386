"""The shipped default adapter: it is there, it says how it was made, it loads by default, and it remembers.

The memory check is the measured protocol (docs/research-log.md §9) on its first 16 held-out episodes: closed-set
fact 150 tokens back, out of a 128-token window, greedy. Measured there: own state 10/16, another
conversation's state 0/16, the twin's state 0/16. The thresholds leave room for float noise across thread
counts, but an adapter that answers from priors (own ≈ shuffled) or that lost its memory fails.
"""

from __future__ import annotations

import json

import pytest

from deltamem_agents.chat.loading import DEFAULT_ADAPTER, resolve_adapter

KINDS = ["colour", "food", "sport", "drink"]


def test_the_default_adapter_is_shipped_with_a_card_that_says_how_it_was_made():
    assert resolve_adapter("default", None) == DEFAULT_ADAPTER
    meta = json.loads((DEFAULT_ADAPTER / "adapter_config.json").read_text())
    assert meta["config"]["write_threshold"] == pytest.approx(0.8)
    card = (DEFAULT_ADAPTER / "README.md").read_text()
    for needed in ("How it was trained", "Preservation", "shuffled", "--preserve-weight"):
        assert needed in card, needed


def test_the_default_adapter_remembers_what_the_window_no_longer_holds():
    import torch

    from deltamem_agents.bench.probe import MemoryProbe
    from deltamem_agents.bench.run_probe import kind_episodes
    from deltamem_agents.chat.loading import load_model
    from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
    from deltamem_agents.runtime.window import WindowPolicy

    torch.set_num_threads(2)
    model, tok = load_model(None, "default")
    assert model.deltamem is not None
    probe = MemoryProbe(model, tok, ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT), max_new_tokens=16)
    policy = WindowPolicy(budget=128, reserve=48)
    n = 16
    eps = kind_episodes(tok, n + 1, 150, 0, "heldout", KINDS)
    hits = {"window": 0, "deltamem": 0, "shuffled": 0, "counterfactual": 0}
    for i in range(n):
        for r in probe.run([eps[i], eps[i + 1]], policy, list(hits), score={0}):
            assert not r["fact_in_window"]
            hits[r["condition"]] += r["correct"]
    assert hits["deltamem"] >= 6, hits
    assert hits["shuffled"] <= 2 and hits["counterfactual"] <= 2 and hits["window"] <= 1, hits
