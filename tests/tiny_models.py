"""Small models for the tests: a one-module holder and tiny transformers models built offline from configs."""

from __future__ import annotations

import torch
import transformers
from torch import nn


class Holder(nn.Module):
    """A model whose only module is `m` (key "m")."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


def tiny_llama_config(**overrides) -> transformers.LlamaConfig:
    """SPEC §7.2's tiny Llama configuration."""
    sizes = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=128,
    )
    return transformers.LlamaConfig(**{**sizes, **overrides})


def tiny_llama(seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(tiny_llama_config()).eval()


def tiny_gpt2(seed: int = 0) -> transformers.GPT2LMHeadModel:
    """Uses transformers' Conv1D (fan_in_fan_out) for c_attn, c_proj, c_fc."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_t5(seed: int = 0) -> transformers.T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = transformers.T5Config(
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_layers=2,
        num_heads=2,
        vocab_size=64,
        decoder_start_token_id=0,
    )
    return transformers.T5ForConditionalGeneration(config).eval()


def token_batch(vocab_size: int, batch: int = 2, length: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)
