"""Tiny models for `model`-scope rows, built offline from transformers configs (no hub access).

Each entry of `MODELS` builds a seeded model in eval mode and a matching input batch; `code` is the same
construction as Python source, for repro snippets that must run without tunerspec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers
from torch import nn

LLAMA = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
    vocab_size=128,
)  # fmt: skip  # SPEC §7.2's tiny Llama
GPT2 = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
T5 = dict(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=2, vocab_size=64, decoder_start_token_id=0)
RESNET = dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4)


@dataclass(frozen=True)
class TinyModel:
    """A named tiny model: `build(seed)` → the model in eval mode; `inputs(seed)` → keyword inputs of its forward."""

    name: str
    config_class: str  # transformers class names, for `code`
    model_class: str
    config: dict
    input_code: str  # Python binding `inputs` (a dict of keyword arguments), given `generator`

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        config = getattr(transformers, self.config_class)(**self.config)
        return getattr(transformers, self.model_class)(config).eval()

    def inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        scope = {"torch": torch, "generator": torch.Generator().manual_seed(seed)}
        exec(self.input_code, scope)  # our own constant source, shared with the repro snippets
        return scope["inputs"]

    def code(self, seed: int = 0) -> str:
        """Source that binds `model` and `inputs` exactly as `build(seed)` and `inputs(seed)` do."""
        return (
            "import torch, transformers\n"
            f"torch.manual_seed({seed})\n"
            f"model = transformers.{self.model_class}(transformers.{self.config_class}(**{self.config!r})).eval()\n"
            f"generator = torch.Generator().manual_seed({seed})\n"
            f"{self.input_code}\n"
        )


def _tokens(vocab: int, extra: str = "") -> str:
    return f"inputs = {{'input_ids': torch.randint(0, {vocab}, (2, 5), generator=generator){extra}}}"


MODELS: dict[str, TinyModel] = {
    "llama": TinyModel("llama", "LlamaConfig", "LlamaForCausalLM", LLAMA, _tokens(128)),
    "gpt2": TinyModel("gpt2", "GPT2Config", "GPT2LMHeadModel", GPT2, _tokens(64)),  # transformers Conv1D layers
    "t5": TinyModel(
        "t5",
        "T5Config",
        "T5ForConditionalGeneration",
        T5,
        _tokens(64, ", 'decoder_input_ids': torch.randint(0, 64, (2, 3), generator=generator)"),
    ),
    "resnet": TinyModel(
        "resnet",
        "ResNetConfig",
        "ResNetForImageClassification",
        RESNET,
        "inputs = {'pixel_values': torch.randn(2, 3, 16, 16, generator=generator)}",
    ),
}


def output_tensor(output: object) -> torch.Tensor:
    """The main tensor of a transformers model output (`logits`), or the output itself."""
    return getattr(output, "logits", output)


def run(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return output_tensor(model(**inputs))
