"""What is measured: the tuners with their benchmark configs, the per-layer shapes of each size, and the tiny Llama
of the end-to-end training step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers
from torch import nn

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class BenchTuner:
    """A column of the tables: SPEC's tuner id and its config (canonical fields, random non-identity init)."""

    name: str
    tuner: str
    config: dict
    conv2d: bool = False  # also measured on the Conv2d workload


TUNERS: dict[str, BenchTuner] = {
    t.name: t
    for t in (
        BenchTuner("bone", "bone", {"r": 64, "init_weights": False}),
        BenchTuner("bat", "bone", {"r": 64, "init_weights": "bat"}),
        BenchTuner("miss", "miss", {"r": 64, "init_weights": False}),
        BenchTuner("gralora", "gralora", {"r": 32, "gralora_k": 2, "init_weights": False}),
        BenchTuner("hra", "hra", {"r": 8, "init_weights": False}, conv2d=True),
        BenchTuner("ia3", "ia3", {"feedforward_modules": [], "init_ia3_weights": False}, conv2d=True),
        BenchTuner("loha", "loha", {"r": 8, "alpha": 8, "init_weights": False}, conv2d=True),
    )
}


@dataclass(frozen=True)
class LayerWorkload:
    """One frozen base layer: Linear(in → out), or Conv2d(in → out, k×k, padding k//2) on square images."""

    kind: str  # "linear" | "conv2d"
    in_features: int
    out_features: int
    kernel_size: int = 1
    image_side: int = 1

    @property
    def name(self) -> str:
        if self.kind == "linear":
            return f"linear {self.in_features}→{self.out_features}"
        return f"conv2d {self.in_features}→{self.out_features} k{self.kernel_size} {self.image_side}²"

    def build(self, dtype: torch.dtype, device: torch.device) -> nn.Module:
        if self.kind == "linear":
            layer = nn.Linear(self.in_features, self.out_features)
        else:
            layer = nn.Conv2d(self.in_features, self.out_features, self.kernel_size, padding=self.kernel_size // 2)
        return layer.to(device=device, dtype=dtype).requires_grad_(False)

    def input_shape(self, tokens: int) -> tuple[int, ...]:
        """`tokens` rows for Linear (one sequence); for Conv2d, images of `image_side²` positions, ⌈tokens / side²⌉."""
        if self.kind == "linear":
            return (1, tokens, self.in_features)
        images = max(1, -(-tokens // self.image_side**2))
        return (images, self.in_features, self.image_side, self.image_side)


@dataclass(frozen=True)
class ModelWorkload:
    """A tiny Llama built from a config (random weights); every projection of every block is adapted."""

    config: dict
    seq_len: int
    kind: str = "llama"

    @property
    def name(self) -> str:
        c = self.config
        return f"llama h{c['hidden_size']} ff{c['intermediate_size']} ×{c['num_hidden_layers']}"

    def build(self, dtype: torch.dtype, device: torch.device) -> nn.Module:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**self.config))
        return model.to(device=device, dtype=dtype).requires_grad_(False)

    def input_ids(self, tokens: int, device: torch.device) -> torch.Tensor:
        """⌈tokens / seq_len⌉ sequences of `seq_len` random token ids."""
        batch = max(1, -(-tokens // self.seq_len))
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.config["vocab_size"], (batch, self.seq_len), generator=generator)
        return ids.to(device)


def _llama(hidden: int, intermediate: int, layers: int, heads: int, vocab: int) -> dict:
    return dict(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, vocab_size=vocab,
    )  # fmt: skip


@dataclass(frozen=True)
class Size:
    """The workloads of one `--size`, and its default tokens per batch."""

    layers: tuple[LayerWorkload, ...]
    model: ModelWorkload | None
    tokens: int
    cpu: bool = True  # allowed on cpu


def _linear_set(width: int, ffn: int) -> tuple[LayerWorkload, ...]:
    """A Llama block's shapes: attention (width → width), MLP up (width → ffn) and down (ffn → width)."""
    return tuple(LayerWorkload("linear", i, o) for i, o in ((width, width), (width, ffn), (ffn, width)))


SIZES: dict[str, Size] = {
    "small": Size(
        layers=(*_linear_set(1024, 2752), LayerWorkload("conv2d", 128, 128, kernel_size=3, image_side=16)),
        model=ModelWorkload(_llama(256, 768, 2, 4, 1024), seq_len=128),
        tokens=512,
    ),
    "full": Size(
        layers=(*_linear_set(4096, 11008), LayerWorkload("conv2d", 512, 512, kernel_size=3, image_side=32)),
        model=ModelWorkload(_llama(1024, 2752, 4, 8, 8192), seq_len=512),
        tokens=4096,
        cpu=False,
    ),
}
