"""Builders shared by the core tests (`test_core_*.py`); holds no tests.

The core (SPEC §1) is exercised through the IA3 tuner on `SmallNet`, a plain torch model with
layer-indexed blocks, and on the tiny transformers models of `tests/tiny_models.py`.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from reference_tuners import IA3Config, TunerLayer, get_peft_model

IN, D, OUT = 6, 8, 4
# SmallNet's linear keys; `fc_out` is IA3-feedforward in `ia3()` configs.
LINEAR_KEYS = ["embed", "head"] + [
    f"layers.{i}.{name}" for i in range(2) for name in ("q_proj", "v_proj", "mlp.fc_in", "mlp.fc_out")
]
DEFAULT_TARGETS = ["q_proj", "v_proj", "fc_out"]


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(D, 2 * D)
        self.fc_out = nn.Linear(2 * D, D)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc_out(torch.relu(self.fc_in(h)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(D, D)
        self.v_proj = nn.Linear(D, D)
        self.mlp = Mlp()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.v_proj(torch.tanh(self.q_proj(h)))
        return h + self.mlp(h)


class SmallNet(nn.Module):
    """embed → layers.{0,1}.{q_proj, v_proj, mlp.fc_in, mlp.fc_out} → norm → head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(IN, D)
        self.layers = nn.ModuleList([Block(), Block()])
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h))


def small_net(seed: int = 0, dtype: torch.dtype = torch.float32) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet().to(dtype).eval()


def ia3(targets=None, feedforward=None, **kwargs) -> IA3Config:
    """An IA3 config for SmallNet (feedforward `fc_out` unless told otherwise)."""
    targets = list(DEFAULT_TARGETS) if targets is None else targets
    if feedforward is None:
        feedforward = ["fc_out"] if isinstance(targets, list) and "fc_out" in targets else []
    return IA3Config(target_modules=targets, feedforward_modules=feedforward, **kwargs)


def inputs(seed: int = 1, dtype: torch.dtype = torch.float32, batch: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, IN, generator=generator) * 2 - 1).to(dtype)


def adapted(model: nn.Module, config: IA3Config | None = None, name: str = "default", **kwargs):
    """get_peft_model on `model` without the fan_in_fan_out notices and alike."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, config if config is not None else ia3(), adapter_name=name, **kwargs)


def tuner_layers(model: nn.Module) -> dict[str, TunerLayer]:
    """Tuner layers by their key in the base model (wrapper prefixes removed), from named_modules()."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, TunerLayer):
            out[name.removeprefix("base_model.model.")] = module
    return out


def adapter_params(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """Adapter `name`'s parameters by in-memory name `<module>.<param>.<adapter>` (SPEC 0.6)."""
    return {k: p for k, p in model.named_parameters() if ".ia3_l." in k and k.rsplit(".", 1)[-1] == name}


def perturb(model: nn.Module, seed: int = 0, names: list[str] | None = None) -> None:
    """Non-identity adapter vectors: random sign, magnitude in [0.5, 1.5] (SPEC §8 input domain)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in sorted(model.named_parameters()):
            if ".ia3_l." not in key or (names is not None and key.rsplit(".", 1)[-1] not in names):
                continue
            magnitude = 0.5 + torch.rand(param.shape, generator=generator, dtype=torch.float64)
            sign = torch.where(torch.rand(param.shape, generator=generator) < 0.5, -1.0, 1.0)
            param.copy_((magnitude * sign).to(param.dtype))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}


def base_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's tensors under their original keys, read through the wrappers."""
    out = {}
    for key, value in model.state_dict().items():
        if ".ia3_l." in key or ".modules_to_save." in key:
            continue
        key = key.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".original_module.", ".")
        out[key] = value.clone()
    return out


def tol(dtype: torch.dtype) -> float:
    """SPEC §8 ⟨N⟩ small-model tolerance (rtol = atol·S factor)."""
    return {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 5e-3}[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """SPEC §8: |a − e| ≤ t·S + t·|e| with S = max(1, max|e|)."""
    t = tol(dtype or expected.dtype)
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=t, atol=t * scale)
