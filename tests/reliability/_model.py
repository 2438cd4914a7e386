"""The model every reliability test (and its child processes) uses: the real default backbone with a
δ-mem adapter given fixed random weights, so states really move and parent and child build the same adapter."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.chat.model import DeltaMemChat
from deltamem_agents.core.config import ssw
from deltamem_agents.core.state import DeltaState
from deltamem_agents.patching import attach
from deltamem_agents.runtime.store import SessionStore
from tests.conftest import randomize_adapter

ADAPTER_SEED = 23
SYSTEM = "Be brief."  # short system prompt: every forward in these tests stays cheap


def delta_model(seed: int = ADAPTER_SEED) -> tuple[Any, Any]:
    """(real SmolLM2-135M-Instruct with a randomized δ-mem adapter, tokenizer); a fresh copy each call."""
    model, tok = load_backbone()
    randomize_adapter(attach(model, ssw()), seed=seed, scale=0.3)
    return model, tok


def make_bot(model_tok: tuple[Any, Any], store: SessionStore, live_sessions: int = 64) -> DeltaMemChat:
    model, tok = model_tok
    return DeltaMemChat(model, tok, store=store, system_prompt=SYSTEM, live_sessions=live_sessions)


def sha(blob: bytes | None) -> str:
    return hashlib.sha256(blob or b"").hexdigest()


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def max_rel_diff(a: DeltaState, b: DeltaState) -> float:
    """Largest |a-b| over S and pend_sum, relative to the largest magnitude in b (0.0 means bitwise equal)."""
    assert torch.equal(a.pend_id, b.pend_id) and torch.equal(a.pend_count, b.pend_count)
    out = 0.0
    for x, y in ((a.S, b.S), (a.pend_sum, b.pend_sum)):
        out = max(out, float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)))
    return out
