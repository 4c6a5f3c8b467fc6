"""LoHa: the weight update is the Hadamard product of two rank-`r` products,
`ΔW = s · (w1a w1b) ⊙ (w2a w2b)` with `s = alpha / r`; convolutions may use a CP core per factor
("effective conv") (SPEC §6)."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .core.config import PeftConfig, check_layer_filters, check_positive, check_probability
from .core.kinds import CONV_KINDS, LINEAR_KINDS, SPATIAL_DIMS, flat_fan_in
from .core.layer import AdditiveLayer
from .core.registry import register

FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
CORES = ("hada_t1", "hada_t2")


@dataclass
class LoHaConfig(PeftConfig):
    """LOHA-CFG-1…4: SPEC §6.1's fields and defaults; list fields are stored as sets (CORE-CFG-3)."""

    PEFT_TYPE: ClassVar[str] = "LOHA"

    r: int = 8
    alpha: int | float = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    use_effective_conv2d: bool = False
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    init_weights: bool = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """LOHA-CFG-2 (CORE-CFG-5/6, `layers_pattern` needs `layers_to_transform`) and LOHA-CFG-3 for `r`."""
        super().__post_init__()
        check_layer_filters(self, pattern_needs_layers=True)
        check_probability("rank_dropout", self.rank_dropout)
        check_probability("module_dropout", self.module_dropout)
        check_positive("r", self.r)
        self.rank_pattern = dict(self.rank_pattern or {})
        self.alpha_pattern = dict(self.alpha_pattern or {})


def pattern_key(patterns: Iterable[str], key: str) -> str | None:
    """LOHA-CFG-4: the first pattern `P` (in order) with `re.match(r"(.*\\.)?(" + P + r")$", key)`, or None."""
    for pattern in patterns:
        if re.match(r"(.*\.)?(" + pattern + r")$", key):
            return pattern
    return None


@dataclass(frozen=True)
class LoHaSettings:
    """One module's resolved hyper-parameters (LOHA-CFG-4, LOHA-PARAM-2)."""

    r: int
    alpha: float
    rank_dropout: float
    module_dropout: float
    effective: bool
    init_weights: bool


def factored_is_cheaper(tokens: int, r: int, fan_in: int, out: int, groups: int = 1) -> bool:
    """Whether `x ↦ (x Kbᵀ) Kaᵀ` with the rank-r² Khatri–Rao factors costs fewer multiply-adds than
    building ΔW (`out·D·r`) and applying it (`tokens·out·D`); for a grouped conv, Kb is applied once per group."""
    factored = tokens * r * r * (groups * fan_in + out)
    dense = out * fan_in * (r + tokens)
    return factored < dense


def khatri_rao_factors(
    w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(w1a w1b) ⊙ (w2a w2b) = Ka Kb` with `Ka[o, (i,j)] = w1a[o,i]·w2a[o,j]` (out, r²) and
    `Kb[(i,j), c] = w1b[i,c]·w2b[j,c]` (r², D) (SPEC §0.5)."""
    out, r = w1a.shape
    ka = (w1a.unsqueeze(2) * w2a.unsqueeze(1)).reshape(out, r * r)
    kb = (w1b.unsqueeze(1) * w2b.unsqueeze(0)).reshape(r * r, w1b.shape[1])
    return ka, kb


def cp_factor(core: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """LOHA-DELTA-2: `P[p, q, κ] = Σ_{i,j} t[i, j, κ] · w_a[i, p] · w_b[j, q]`, as (out, C, K)."""
    r = core.shape[0]
    partial = torch.einsum("ijk,jq->iqk", core.reshape(r, r, -1), w_b)
    return torch.einsum("ip,iqk->pqk", w_a, partial)


class LoHaLayer(AdditiveLayer):
    """LoHa on Linear, Conv1d, Conv2d (LOHA-LAYER-1) and Conv3d, transformers Conv1D (LOHA-LAYER-2).

    Flattened mode keeps `hada_w?_a` (out, r) and `hada_w?_b` (r, D); effective mode (convs with
    `use_effective_conv2d` and K > 1) adds the cores `hada_t1`, `hada_t2` (r, r, *kernel) and keeps
    `hada_w?_a` (r, out), `hada_w?_b` (r, C). The scale `s` starts at `alpha / r` and is adjustable
    per adapter (LOHA-SCALE-1).
    """

    adapter_layer_names = (*FACTORS, *CORES)
    supported_kinds = frozenset({"linear", "hf_conv1d", "conv1d", "conv2d", "conv3d"})

    def __init__(self, base_layer: nn.Module, kind: str) -> None:
        super().__init__(base_layer, kind)
        self.scaling: dict[str, float] = {}

    # ---- settings and parameters ----
    @classmethod
    def resolve_settings(cls, config: LoHaConfig, key: str, base_layer: nn.Module, kind: str) -> LoHaSettings:
        """LOHA-CFG-2/3/4: per-module `r`/`alpha` from the first matching pattern, validated before any layer
        changes; LOHA-PARAM-2: effective mode iff `use_effective_conv2d` and a convolution with K > 1."""
        rank_key = pattern_key(config.rank_pattern, key)
        alpha_key = pattern_key(config.alpha_pattern, key)
        r = config.r if rank_key is None else config.rank_pattern[rank_key]
        check_positive("r" if rank_key is None else f"rank_pattern[{rank_key!r}] (for {key!r})", r)
        check_probability("rank_dropout", config.rank_dropout)  # again: the fields may have been set since
        check_probability("module_dropout", config.module_dropout)
        alpha = config.alpha if alpha_key is None else config.alpha_pattern[alpha_key]
        effective = bool(config.use_effective_conv2d) and kind in CONV_KINDS and math.prod(base_layer.kernel_size) > 1
        return LoHaSettings(
            r=r,
            alpha=alpha,
            rank_dropout=config.rank_dropout,
            module_dropout=config.module_dropout,
            effective=effective,
            init_weights=config.init_weights,
        )

    @classmethod
    def check_targets(cls, config: LoHaConfig, keys: list[str]) -> None:
        """LOHA-CFG-4: warn about `rank_pattern` / `alpha_pattern` keys matching none of the targeted `keys`."""
        keys = list(keys)
        for field_name in ("rank_pattern", "alpha_pattern"):
            patterns = getattr(config, field_name)
            unmatched = [p for p in patterns if not any(pattern_key([p], key) for key in keys)]
            if unmatched:
                warnings.warn(
                    f"{field_name} keys {unmatched} match no targeted module and are ignored.",
                    UserWarning,
                    stacklevel=3,
                )

    def parameter_shapes(self, settings: LoHaSettings) -> dict[str, tuple[int, ...]]:
        """LOHA-PARAM-1/2: canonical shapes for this layer."""
        r, out = settings.r, self.out_features
        if not settings.effective:
            fan_in = flat_fan_in(self.base_layer, self.kind)
            return {"hada_w1_a": (out, r), "hada_w1_b": (r, fan_in), "hada_w2_a": (out, r), "hada_w2_b": (r, fan_in)}
        kernel = tuple(self.base_layer.kernel_size)
        if self.kind == "conv1d":
            kernel = (*kernel, 1)
        channels = self.in_features // self.base_layer.groups
        return {
            "hada_w1_a": (r, out),
            "hada_w1_b": (r, channels),
            "hada_w2_a": (r, out),
            "hada_w2_b": (r, channels),
            "hada_t1": (r, r, *kernel),
            "hada_t2": (r, r, *kernel),
        }

    def create_adapter(self, name: str, settings: LoHaSettings, dtype: torch.dtype) -> None:
        """LOHA-INIT-1…3: every tensor KU (`kaiming_uniform_(a=√5)` on its canonical shape, i.e. U(±1/√fan_in))
        from torch's global generator; with `init_weights=True`, `hada_w2_b = 0` instead."""
        device = self.base_layer.weight.device
        for pname, shape in self.parameter_shapes(settings).items():
            tensor = torch.empty(shape, dtype=dtype, device=device)
            if pname == "hada_w2_b" and settings.init_weights:
                nn.init.zeros_(tensor)
            else:
                nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
            getattr(self, pname)[name] = nn.Parameter(tensor)
        self.scaling[name] = settings.alpha / settings.r

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.scaling.pop(name, None)

    # ---- delta weight (LOHA-DELTA-1/2) ----
    def _params(self, name: str, names: tuple[str, ...]) -> list[torch.Tensor]:
        return [getattr(self, n)[name] for n in names]

    def delta_weight(self, name: str) -> torch.Tensor:
        """ΔW in logical orientation and the adapter dtype: flattened `s · (w1a w1b) ⊙ (w2a w2b)` reshaped
        row-major to W's shape (LOHA-DELTA-1), or `s · P_1 ⊙ P_2` from the CP cores (LOHA-DELTA-2)."""
        w1a, w1b, w2a, w2b = self._params(name, FACTORS)
        if self.settings[name].effective:
            t1, t2 = self._params(name, CORES)
            product = cp_factor(t1, w1a, w1b) * cp_factor(t2, w2a, w2b)
        else:
            product = (w1a @ w1b) * (w2a @ w2b)
        return (self.scaling[name] * product).reshape(self.base_weight().shape)

    # ---- forward (LOHA-FWD-1, LOHA-DROP-1…3) ----
    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        """LOHA-DROP-3: in train mode each adapter is skipped with probability `module_dropout`."""
        if self.training:
            active = [n for n in active if not self._module_dropped(n)]
        return super().adapted_forward(x, active, *args, **kwargs)

    def _module_dropped(self, name: str) -> bool:
        p = self.settings[name].module_dropout
        return p > 0 and bool(torch.rand(()) < p)

    def _rank_dropout_mask(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """LOHA-DROP-1/2: in train mode with `rank_dropout = p > 0`, the per-output-channel factor
        `m_o · out / Σ m` with `m_o ~ Bernoulli(1 − p)`; an all-zero `m` gives exactly 0, never NaN."""
        p = self.settings[name].rank_dropout
        if not self.training or p == 0:
            return None
        keep = (torch.rand(self.out_features, device=device) >= p).to(dtype)
        return keep * (self.out_features / keep.sum().clamp_min(1))

    def delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """`op(x; ΔW, no bias)` with the base layer's own conv hyper-parameters (LOHA-FWD-1), through the
        rank-r² Khatri–Rao factors when that is cheaper (flattened mode; SPEC §0.5)."""
        mask = self._rank_dropout_mask(name, x.dtype, x.device)
        settings = self.settings[name]
        if not settings.effective:
            tokens = x.numel() // max(self.in_features, 1)
            fan_in, groups = self.hada_w1_b[name].shape[1], getattr(self.base_layer, "groups", 1)
            if factored_is_cheaper(tokens, settings.r, fan_in, self.out_features, groups):
                return self._factored_output(x, name, mask)
        weight = self.delta_weight(name)
        if mask is not None:
            weight = weight * mask.reshape(-1, *([1] * (weight.dim() - 1)))
        return self.op(x, weight, None)

    def _factored_output(self, x: torch.Tensor, name: str, mask: torch.Tensor | None) -> torch.Tensor:
        """`op(x; ΔW)` = `(x Kbᵀ) Kaᵀ` (linear kinds); for convolutions a conv with the r² filters Kb (one copy
        per group, the base layer's hyper-parameters) followed by a grouped pointwise conv with Ka."""
        ka, kb = khatri_rao_factors(*self._params(name, FACTORS))
        ka = ka * self.scaling[name]
        if mask is not None:
            ka = ka * mask.unsqueeze(1)
        if self.kind in LINEAR_KINDS:
            return F.linear(F.linear(x, kb), ka)
        base = self.base_layer
        spatial = SPATIAL_DIMS[self.kind]
        filters = kb.reshape(kb.shape[0], -1, *base.kernel_size).repeat(base.groups, *([1] * (spatial + 1)))
        hidden = self.op(x, filters, None)
        pointwise = getattr(F, f"conv{spatial}d")
        return pointwise(hidden, ka.reshape(*ka.shape, *([1] * spatial)), groups=base.groups)

    # ---- scale (LOHA-SCALE-1, optional capability `loha.scale_layer`) ----
    def _active_here(self) -> list[str]:
        return self.applicable(self.active_adapters)

    def scale_layer(self, scale: float) -> None:
        """`s ← s · scale` for the active adapters on this layer (a no-op for scale 1)."""
        if scale == 1:
            return
        for name in self._active_here():
            self.scaling[name] *= scale

    def unscale_layer(self, scale: float | None = None) -> None:
        """`s ← alpha / r` (scale None) or `s ← s / scale`, for the active adapters on this layer."""
        for name in self._active_here():
            settings = self.settings[name]
            if scale is None:
                self.scaling[name] = settings.alpha / settings.r
            else:
                self.scaling[name] /= scale

    def set_scale(self, adapter: str, scale: float) -> None:
        """`s ← scale · alpha / r` for `adapter`; ignored where it is not injected."""
        if adapter in self.settings:
            settings = self.settings[adapter]
            self.scaling[adapter] = scale * settings.alpha / settings.r


register(LoHaConfig, LoHaLayer, prefix="hada_")
