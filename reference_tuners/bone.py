"""Bone (with BAT) and MiSS: one trainable block per adapter and layer, shared across the weight's shards
(SPEC §2). MiSS (§2.9) is Bone's mathematics under another name and key prefix, plus the `"mini"` variant.

Plain mode (`init_weights` True/False, MiSS `"mini"`): `ΔW = T(B)`, `T(B)[o, i] = B[i mod r, o mod w]` with `B`
of shape `(r, w)`, `w = out` (plain) or `mini_r` (mini); applied to the input as `Δy = s(x) B` tiled to `out`,
`s(x)` the sum of the `r`-wide chunks of `x` zero-padded to a multiple of `r`.
BAT mode (`"bat"`): every `r×r` tile of `W` becomes `W_{p,c}(I + B[p]) + B[p]`, one `B[p]` per row block `p`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .core.config import PeftConfig, check_layer_filters, check_positive, check_probability
from .core.kinds import features
from .core.layer import TunerLayer
from .core.registry import register


@dataclass
class _BlockConfig(PeftConfig):
    """The fields Bone (§2.1) and MiSS (§2.9) share; `init_weights` selects the variant (BONE-CFG-2, MISS-CFG-2)."""

    VARIANTS: ClassVar[tuple[str, ...]] = ("bat",)

    r: int = 64
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    init_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: str | None = None
    bias: str = "none"
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """The config-only rules, checked at construction and again at injection (CORE-CFG-4): BONE-CFG-2/3/5,
        CORE-CFG-5; `layers_pattern` without `layers_to_transform` is allowed and ignored (CORE-MATCH-8)."""
        init = self.init_weights
        if not (isinstance(init, bool) or (isinstance(init, str) and init in self.VARIANTS)):
            allowed = ", ".join(["True", "False", *(repr(v) for v in self.VARIANTS)])
            raise ValueError(f"`init_weights` must be one of {allowed}; got {init!r}.")
        check_positive("r", self.r)
        check_layer_filters(self, pattern_needs_layers=False)


@dataclass
class BoneConfig(_BlockConfig):
    """BONE-CFG-1…5: SPEC §2.1's table; constructing one warns that Bone is superseded by MiSS (BONE-CFG-4)."""

    PEFT_TYPE: ClassVar[str] = "BONE"

    def __post_init__(self) -> None:
        super().__post_init__()
        warnings.warn(
            "Bone is deprecated and superseded by MiSS (MissConfig, peft_type 'MISS'), the same method; convert "
            "saved Bone checkpoints with reference_tuners.convert.convert_checkpoint(src, dst, to='MISS').",
            FutureWarning,
            stacklevel=3,
        )


@dataclass
class MissConfig(_BlockConfig):
    """MISS-CFG-1…3: SPEC §2.9's table (Bone's fields plus `miss_dropout` and `mini_r`; no deprecation)."""

    PEFT_TYPE: ClassVar[str] = "MISS"
    VARIANTS: ClassVar[tuple[str, ...]] = ("bat", "mini")

    miss_dropout: float = 0.0
    mini_r: int = 1

    def validate(self) -> None:
        """Adds CORE-CFG-6 for `miss_dropout` and MISS-CFG-3's `mini_r ≥ 1` (with `"mini"` only)."""
        super().validate()
        check_probability("miss_dropout", self.miss_dropout)
        if self.init_weights == "mini":
            check_positive("mini_r", self.mini_r)


@dataclass(frozen=True)
class BlockSettings:
    """One adapter's resolved hyper-parameters on one layer."""

    r: int
    mode: str  # "plain", "bat" or "mini"
    random_init: bool
    mini_r: int
    dropout: float


def chunk_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """`s(x)`: `x` right-padded with zeros to a multiple of `r`, cut into chunks of `r` and summed (…×r).
    The full chunks are summed through a view; the remainder columns are added to the first ones (no padding copy)."""
    full, rest = divmod(x.shape[-1], r)
    total = x[..., : full * r].unflatten(-1, (full, r)).sum(-2)
    if rest:
        total[..., :rest] += x[..., full * r :]
    return total


def tiled(block: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """`out[i, j] = block[i mod h, j mod w]` for a `(h, w)` block: the block repeated periodically, truncated."""
    h, w = block.shape
    return block.repeat(-(-rows // h), -(-cols // w))[:rows, :cols]


def bat_transform(weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """BONE-BAT-1: every tile `W_{p,c}` (`r×r`) becomes `W_{p,c} + W_{p,c} B[p] + B[p]`, for all tiles at once.

    Row-major `W` (out × in) viewed as `(out/r, r·in/r, r)` holds in batch `p` the rows of row block `p`, cut into
    `r`-wide pieces; one batched matmul multiplies every piece by `B[p]`."""
    blocks, r, _ = block.shape
    out, fan_in = weight.shape
    pieces = weight.reshape(blocks, fan_in, r)  # r rows × in/r tiles of each row block, r columns each
    result = torch.baddbmm(pieces, pieces, block)
    result.view(blocks, r, fan_in // r, r).add_(block.unsqueeze(2))
    return result.view(out, fan_in)


def bat_inverse(weight: torch.Tensor, block: torch.Tensor, name: str) -> torch.Tensor:
    """BONE-BAT-3/4, BONE-DTYPE-1: every tile becomes `(W_{p,c} − B[p])(I + B[p])⁻¹`; the inverse in float64 for
    float64 blocks and in float32 otherwise; a singular `I + B[p]` or a non-finite result raises ValueError."""
    blocks, r, _ = block.shape
    out, fan_in = weight.shape
    precise = torch.float64 if block.dtype == torch.float64 else torch.float32
    eye = torch.eye(r, dtype=precise, device=block.device)
    inverse, info = torch.linalg.inv_ex(eye + block.to(precise))
    if info.any():
        singular = info.nonzero().flatten().tolist()
        raise ValueError(
            f"Cannot unmerge adapter {name!r}: I + B[p] is singular for row block(s) {singular}; it stays merged."
        )
    tiles = weight.reshape(blocks, r, fan_in // r, r) - block.unsqueeze(2)
    result = (tiles.reshape(blocks, fan_in, r) @ inverse.to(block.dtype)).view(out, fan_in)
    if not torch.isfinite(result).all():
        raise ValueError(f"Unmerging adapter {name!r} would write non-finite weights; it stays merged.")
    return result


class BlockLayer(TunerLayer):
    """The layer Bone and MiSS share, on torch Linear (BONE-LAYER-1) and transformers Conv1D (BONE-LAYER-2,
    capabilities `bone.hf_conv1d` / `miss.hf_conv1d`); subclasses name the block (`bone_block` / `miss_block`)."""

    supported_kinds = frozenset({"linear", "hf_conv1d"})

    @property
    def blocks(self) -> nn.ParameterDict:
        return getattr(self, self.adapter_layer_names[0])

    @classmethod
    def resolve_settings(cls, config: _BlockConfig, key: str, base_layer: nn.Module, kind: str) -> BlockSettings:
        """BONE-CFG-5, MISS-CFG-3: `r ≤ in`; BAT needs `r | in` and `r | out`; mini needs `mini_r | out`."""
        config.validate()
        fan_in, out = features(base_layer, kind)
        r, init = config.r, config.init_weights
        mode = init if isinstance(init, str) else "plain"
        if r > fan_in:
            raise ValueError(f"`r` ({r}) must be at most in_features ({fan_in}) of {key!r}.")
        if mode == "bat" and (fan_in % r or out % r):
            raise ValueError(
                f"The weight matrix must be fully divisible into [r, r] blocks: {key!r} has in_features={fan_in}, "
                f"out_features={out}, r={r} (init_weights='bat')."
            )
        mini_r = getattr(config, "mini_r", 1)
        if mode == "mini" and out % mini_r:
            raise ValueError(f"out_features ({out}) of {key!r} must be divisible by `mini_r` ({mini_r}).")
        dropout = getattr(config, "miss_dropout", 0.0)
        return BlockSettings(r=r, mode=mode, random_init=init is False, mini_r=mini_r, dropout=dropout)

    def create_adapter(self, name: str, settings: BlockSettings, dtype: torch.dtype) -> None:
        """BONE-PARAM-1/2, MISS-MINI-1: `(r, out)`, `(out/r, r, r)` (BAT) or `(r, mini_r)` (mini); zeros
        (BONE-INIT-1), or with `init_weights=False` KU on `(r, out)`, i.e. U(±1/√out) (BONE-INIT-2)."""
        r, out = settings.r, self.out_features
        shape = {"plain": (r, out), "bat": (out // r, r, r), "mini": (r, settings.mini_r)}[settings.mode]
        block = torch.zeros(shape, dtype=dtype, device=self.base_layer.weight.device)
        if settings.random_init:
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))
        self.blocks[name] = nn.Parameter(block)

    # ---- one adapter applied to a weight (BONE-MERGE-1, BONE-BAT-1/2, MISS-MINI-2) ----
    def delta_weight(self, name: str) -> torch.Tensor:
        """Plain and mini: `ΔW = T(B)`, `ΔW[o, i] = B[i mod r, o mod w]` (logical orientation, adapter dtype)."""
        return tiled(self.blocks[name].T, self.out_features, self.in_features)

    def transformed(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        """`W ← W + T(B)` (plain, mini) or `W ← 𝒯(W)` (BAT), in the adapter dtype (BONE-DTYPE-1)."""
        block = self.blocks[name]
        weight = weight.to(block.dtype)
        if self.settings[name].mode == "bat":
            return bat_transform(weight, block)
        return weight + self.delta_weight(name)

    def merged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        """Merge in order (BONE-MERGE-1, BONE-BAT-2, BONE-MULTI-2), written in the base dtype; bias unchanged."""
        weight = self.base_weight()
        return self.transformed(weight, name).to(weight.dtype), None

    def unmerged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        """`W − T(B)` (BONE-MERGE-1) or the BAT inverse (BONE-BAT-3/4)."""
        weight, block = self.base_weight(), self.blocks[name]
        if self.settings[name].mode == "bat":
            return bat_inverse(weight.to(block.dtype), block, name).to(weight.dtype), None
        return (weight.to(block.dtype) - self.delta_weight(name)).to(weight.dtype), None

    # ---- forward (BONE-FWD-1…3, BONE-BAT-1, BONE-MULTI-1/2, MISS-MINI-2, MISS-DROP-1) ----
    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        """BONE-MULTI-2: the active list, in order, up to its last BAT adapter is folded into one effective weight
        `W_eff` and applied with one `op(x; W_eff, b)` (the bias is not transformed); the plain adapters after it
        add `s(x) B` each, which equals adding `T(B)` to `W_eff` (BONE-MULTI-1). Plain adapters folded into
        `W_eff` have no input to drop, so `miss_dropout` applies to the trailing ones only (MISS-DROP-1)."""
        bat = [i for i, name in enumerate(active) if self.settings[name].mode == "bat"]
        folded, added = (active[: bat[-1] + 1], active[bat[-1] + 1 :]) if bat else ([], active)
        if folded:
            weight = self.base_weight()
            for name in folded:
                weight = self.transformed(weight, name)
            # BONE-DTYPE-1: stored in the base dtype, so a zero block gives base(x) bitwise (BONE-ID-1)
            result = self.op(x, weight.to(self.base_layer.weight.dtype), self.base_layer.bias)
        else:
            result = self.base_layer(x, *args, **kwargs)
        for name in added:
            result = self.add_delta(result, x, name)
        return result

    def add_delta(self, result: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        """`result + s(dropout(x)) B`, the `(…, w)` product repeated along the output (mini: `w = mini_r`)
        by a broadcast add, in the adapter dtype; dropout only in train mode (MISS-DROP-1, CORE-DROP-1/2)."""
        block, settings = self.blocks[name], self.settings[name]
        x = x.to(block.dtype)
        if settings.dropout and self.training:
            x = F.dropout(x, settings.dropout, training=True)
        delta = chunk_sum(x, settings.r) @ block
        width = delta.shape[-1]
        shaped = result.unflatten(-1, (self.out_features // width, width))
        return (shaped + delta.unsqueeze(-2).to(result.dtype)).flatten(-2)


class BoneLayer(BlockLayer):
    """Bone's `bone_block` (SPEC §2.2–§2.7)."""

    adapter_layer_names = ("bone_block",)


class MissLayer(BlockLayer):
    """MiSS's `miss_block` (SPEC §2.9, MISS-MATH-1)."""

    adapter_layer_names = ("miss_block",)


register(BoneConfig, BoneLayer, prefix="bone_")
register(MissConfig, MissLayer, prefix="miss_")
