"""Fixtures shared by the unit tests: a tiny Model 5, a tiny Llama (SmolLM2's architecture), a token stream.

Each model fixture is a factory, so a test can ask for the sizes it needs and get a fresh, seeded model:

    def test_x(tiny_gpt, tiny_llama, token_stream):
        model = tiny_gpt(n_layer=1, dropout=0.0)
        llama = tiny_llama(hidden=48, tie=False)
"""
from __future__ import annotations

import pytest
import torch

from course_utils.model import GPT, GPTConfig

TINY_GPT = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


@pytest.fixture
def tiny_gpt():
    def make(seed: int = 0, **overrides) -> GPT:
        torch.manual_seed(seed)
        return GPT(GPTConfig(**{**TINY_GPT, **overrides}))

    return make


@pytest.fixture
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(seed: int = 0, vocab: int = 100, hidden: int = 64, layers: int = 2, tie: bool = True,
             intermediate: int | None = None):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or hidden * 3 // 2,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, tie_word_embeddings=tie)
        return LlamaForCausalLM(cfg).eval()

    return make


@pytest.fixture
def token_stream() -> torch.Tensor:
    """3,000 token ids with a learnable pattern (0..40 repeating), vocabulary 41."""
    return torch.arange(3000) % 41
