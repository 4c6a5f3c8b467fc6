"""GraLoRA: the weight is cut into an `N×N` grid (`N = gralora_k`) and block `(j, n)` gets its own rank-`ρ`
update (`ρ = r/N`) built from per-input-block `A_n` and per-output-block `B_j`; an optional plain LoRA part of
rank `h = hybrid_r` is added; everything is scaled by `σ = alpha / (r + h)` (SPEC §3)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .core.config import PeftConfig, check_layer_filters, check_positive, check_probability
from .core.kinds import check_orientation, features
from .core.layer import AdditiveLayer
from .core.registry import register


@dataclass
class GraLoRAConfig(PeftConfig):
    """GRALORA-CFG-1…4: SPEC §3.1's fields and defaults (no `exclude_modules`); `bias` is checked at injection
    (CORE-BIAS-1)."""

    PEFT_TYPE: ClassVar[str] = "GRALORA"

    r: int = 32
    hybrid_r: int = 0
    target_modules: list[str] | str | None = None
    alpha: int | float = 64
    gralora_dropout: float = 0.0
    gralora_k: int = 2
    fan_in_fan_out: bool = False
    bias: str = "none"
    modules_to_save: list[str] | None = None
    init_weights: bool = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """GRALORA-CFG-2/3 (`gralora_k > 0`, `r % gralora_k == 0`), GRALORA-CFG-4 (`r > 0`, `hybrid_r ≥ 0`),
        CORE-CFG-5 and CORE-CFG-6; run at construction and again at injection (fields may change in between)."""
        check_positive("gralora_k", self.gralora_k)
        check_positive("r", self.r)
        if not isinstance(self.hybrid_r, int) or isinstance(self.hybrid_r, bool) or self.hybrid_r < 0:
            raise ValueError(f"`hybrid_r` must be a non-negative integer, got {self.hybrid_r!r}")
        if self.r % self.gralora_k:
            raise ValueError(f"r should be divisible by gralora_k, but got {self.r} and {self.gralora_k}")
        check_layer_filters(self, pattern_needs_layers=False)
        check_probability("gralora_dropout", self.gralora_dropout)


@dataclass(frozen=True)
class GraLoRASettings:
    """One module's hyper-parameters; `scaling` is GRALORA-PARAM-2's `σ = alpha / (r + h)`."""

    r: int
    k: int
    hybrid_r: int
    alpha: float
    dropout: float
    init_weights: bool

    @property
    def scaling(self) -> float:
        return self.alpha / (self.r + self.hybrid_r)


def _uniform_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Fill `tensor` in place with i.i.d. `U(±1/√fan_in)` from torch's global generator."""
    bound = 1 / math.sqrt(fan_in)
    return tensor.uniform_(-bound, bound)


class GraLoRALayer(AdditiveLayer):
    """GraLoRA on torch Linear and transformers Conv1D (GRALORA-LAYER-1), in logical orientation whatever
    `fan_in_fan_out` says (GRALORA-LAYER-2). Per adapter: `gralora_A` (N, in/N, r), `gralora_B` (N, r, out/N)
    and, for `h > 0`, bias-free `gralora_A_general` (in → h) and `gralora_B_general` (h → out) (GRALORA-PARAM-1).
    """

    adapter_layer_names = ("gralora_A", "gralora_B")
    adapter_module_names = ("gralora_A_general", "gralora_B_general")
    supported_kinds = frozenset({"linear", "hf_conv1d"})

    @classmethod
    def resolve_settings(cls, config: GraLoRAConfig, key: str, base_layer: nn.Module, kind: str) -> GraLoRASettings:
        """GRALORA-CFG-4/5 and GRALORA-LAYER-2 (a disagreeing `fan_in_fan_out` warns; the layer decides)."""
        config.validate()
        check_orientation(config.fan_in_fan_out, key, base_layer, kind)
        k = config.gralora_k
        in_features, out_features = features(base_layer, kind)
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if size % k:
                raise ValueError(f"{name} should be divisible by gralora_k, but got {size} and {k} (module {key!r})")
        return GraLoRASettings(
            r=config.r,
            k=k,
            hybrid_r=config.hybrid_r,
            alpha=config.alpha,
            dropout=config.gralora_dropout,
            init_weights=config.init_weights,
        )

    def create_adapter(self, name: str, settings: GraLoRASettings, dtype: torch.dtype) -> None:
        """GRALORA-INIT-1…3: `gralora_A` U(±1/√(in/N)), `gralora_A_general.weight` U(±1/√in); with
        `init_weights=True` both B tensors are 0, otherwise `gralora_B` U(±1/√r), `gralora_B_general.weight`
        U(±1/√h)."""
        device = self.base_layer.weight.device
        n, r, h = settings.k, settings.r, settings.hybrid_r
        fan_in, fan_out = self.in_features, self.out_features
        with torch.no_grad():
            a = _uniform_(torch.empty(n, fan_in // n, r, dtype=dtype, device=device), fan_in // n)
            b = torch.empty(n, r, fan_out // n, dtype=dtype, device=device)
            self.gralora_A[name] = nn.Parameter(a)
            self.gralora_B[name] = nn.Parameter(b.zero_() if settings.init_weights else _uniform_(b, r))
            if h == 0:
                return
            a_general = nn.utils.skip_init(nn.Linear, fan_in, h, bias=False, device=device, dtype=dtype)
            b_general = nn.utils.skip_init(nn.Linear, h, fan_out, bias=False, device=device, dtype=dtype)
            _uniform_(a_general.weight, fan_in)
            if settings.init_weights:
                b_general.weight.zero_()
            else:
                _uniform_(b_general.weight, h)
            self.gralora_A_general[name] = a_general
            self.gralora_B_general[name] = b_general

    def delta_weight(self, name: str) -> torch.Tensor:
        """GRALORA-FWD-2 in logical orientation and the adapter dtype:
        `ΔW[j·out/N + o, n·in/N + i] = σ Σ_{t<ρ} A[n, i, jρ+t] B[j, nρ+t, o]`, plus `σ B_gen A_gen`."""
        a, b = self.gralora_A[name], self.gralora_B[name]
        n, in_block, r = a.shape
        rho = r // n
        blocks = torch.einsum("nijt,jnto->joni", a.reshape(n, in_block, n, rho), b.reshape(n, n, rho, -1))
        delta = blocks.reshape(self.out_features, self.in_features)
        if name in self.gralora_A_general:
            delta = delta + self.gralora_B_general[name].weight @ self.gralora_A_general[name].weight
        return self.settings[name].scaling * delta

    def delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """GRALORA-FWD-1 without building ΔW, for `x` of shape `(*, in)` (GRALORA-FWD-4): the input chunks go
        through one batched matmul with `A` (giving `(x_n A_n)[…, jρ+t]`), which is regrouped from `(n, j, t)` to
        `(j, n, t)` and sent through one batched matmul with `B`; the hybrid LoRA path is added and the sum scaled
        by `σ`. GRALORA-DROP-1: one inverted-dropout mask on the input feeds both paths (train mode only)."""
        settings = self.settings[name]
        x = F.dropout(x, settings.dropout, training=self.training)
        a, b = self.gralora_A[name], self.gralora_B[name]
        n, in_block, r = a.shape
        lead = x.shape[:-1]
        tokens = math.prod(lead)
        hidden = torch.bmm(x.reshape(tokens, n, in_block).transpose(0, 1), a)  # (n, M, r)
        hidden = hidden.reshape(n, tokens, n, r // n).permute(2, 1, 0, 3).reshape(n, tokens, r)  # (j, M, nρ+t)
        out = torch.bmm(hidden, b).transpose(0, 1).reshape(*lead, self.out_features)  # (j, M, o) → (*, out)
        if name in self.gralora_A_general:
            out = out + self.gralora_B_general[name](self.gralora_A_general[name](x))
        return settings.scaling * out


register(GraLoRAConfig, GraLoRALayer, prefix="gralora_")
