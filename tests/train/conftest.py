"""Fixtures for the selective-write recipe tests: the real tokenizer with a tiny random Llama of its vocabulary."""

from __future__ import annotations

import pytest
import torch


def tiny_real_vocab(tok, seed: int = 0, layers: int = 2):
    """A random 2-layer Llama (hidden 64) that takes the real tokenizer's ids: fast, but real episodes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=4096,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def real_tokenizer():
    from deltamem_agents.backbone import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_backbone_dir(real_tokenizer, tmp_path_factory):
    """A local HF model dir (tiny random Llama + the real tokenizer) for CLI smoke runs via `--backbone`."""
    path = tmp_path_factory.mktemp("tiny-backbone")
    tiny_real_vocab(real_tokenizer).save_pretrained(str(path))
    real_tokenizer.save_pretrained(str(path))
    return path
