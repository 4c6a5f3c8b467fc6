"""HRA: the frozen weight is multiplied on its input side by an orthogonal matrix `R`, a chain of `r` learned
Householder reflections, or with Gram–Schmidt `R_GS = I − 2QQᵀ` (SPEC §4).

Every `R` is held as a product of compact WY factors `I − Y T Yᵀ` (`Y` d×k, `T` k×k), so no d×d matrix is ever
built: `M (I − Y T Yᵀ) = M − ((M Y) T) Yᵀ` costs `rows·d·k` (SPEC §0.5).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .core.config import PeftConfig, check_layer_filters, check_positive
from .core.kinds import flat_fan_in
from .core.layer import TunerLayer
from .core.registry import register

Factor = tuple[torch.Tensor, torch.Tensor]  # (Y, T): the orthogonal matrix I − Y T Yᵀ


@dataclass
class HRAConfig(PeftConfig):
    """HRA-CFG-1…3: SPEC §4.1's fields and defaults; list fields are stored as sets (CORE-CFG-3); `bias` is
    checked at injection (CORE-BIAS-1)."""

    PEFT_TYPE: ClassVar[str] = "HRA"

    r: int = 8
    apply_GS: bool = False
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    init_weights: bool = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    bias: str = "none"
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        """HRA-CFG-2 (CORE-CFG-5, `layers_pattern` needs `layers_to_transform`), HRA-CFG-3 (`r > 0`)."""
        super().__post_init__()
        check_layer_filters(self, pattern_needs_layers=True)
        check_positive("r", self.r)


@dataclass(frozen=True)
class HRASettings:
    """One adapter's options on one layer."""

    r: int
    apply_gs: bool
    init_weights: bool


def computation_dtype(dtype: torch.dtype) -> torch.dtype:
    """HRA-DTYPE-1: `R` and `W R` are computed in float32 for half-precision adapters, else in their dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def householder_wy(u: torch.Tensor) -> list[Factor]:
    """HRA-R-1: `H_0 H_1 ⋯ H_{r−1}` with `H_i = I − 2 û_i û_iᵀ`, `û_i = u_i/‖u_i‖` (no epsilon), as a product of
    compact WY factors `I − Y T Yᵀ`, one per block of at most d consecutive reflections (for r > d a single
    block would lose accuracy to cancellation). `Y` holds the block's `û_i` and `T` is upper triangular with
    `T⁻¹ = striu(YᵀY) + ½I`, the closed form of the Schreiber–Van Loan recurrence
    `T_{k+1} = [[T_k, −2 T_k Y_kᵀ û_k], [0, 2]]` (Joffrain et al. 2006)."""
    d, r = u.shape
    y = u / torch.linalg.vector_norm(u, dim=0)
    factors = []
    for start in range(0, r, max(d, 1)):
        block = y[:, start : start + d]
        eye = torch.eye(block.shape[1], dtype=u.dtype, device=u.device)
        t = torch.linalg.solve_triangular(torch.triu(block.T @ block, diagonal=1) + 0.5 * eye, eye, upper=True)
        factors.append((block, t))
    return factors


def gram_schmidt(u: torch.Tensor) -> torch.Tensor:
    """HRA-GS-1/3/4: modified Gram–Schmidt on `u_0 … u_{r−1}` in order. A column whose residual satisfies
    `‖v‖ ≤ √ε·‖u_i‖` (ε of `u`'s dtype) is omitted: its column of the returned `Q` (d, r) is zero, so that
    `I − 2QQᵀ` is unchanged. Each kept column gets a second (re-orthogonalising) pass. The omission is a mask,
    not a branch: no host round trip per column, and the masked division keeps gradients finite."""
    threshold = math.sqrt(torch.finfo(u.dtype).eps) * torch.linalg.vector_norm(u, dim=0)
    columns: list[torch.Tensor] = []
    rest = u
    for i in range(u.shape[1]):
        v, rest = rest[:, 0], rest[:, 1:]  # v: u_i with q_0 … q_{i−1} already subtracted, in order
        keep = torch.linalg.vector_norm(v) > threshold[i]
        if columns:
            previous = torch.stack(columns, dim=1)
            v = v - previous @ (previous.T @ v)
        norm = torch.where(keep, torch.linalg.vector_norm(v), torch.ones((), dtype=v.dtype, device=v.device))
        q = torch.where(keep, v / norm, torch.zeros_like(v))
        rest = rest - torch.outer(q, q @ rest)  # MGS, row-oriented: q_i leaves every later column at once
        columns.append(q)
    return torch.stack(columns, dim=1)


def rotate(m: torch.Tensor, factors: list[Factor], transpose: bool = False) -> torch.Tensor:
    """`M R` for `R = F_1 F_2 ⋯ F_k` given as WY factors, or `M Rᵀ = M F_kᵀ ⋯ F_1ᵀ`; `M` of shape (*, d).
    Each factor costs `rows·d·r`: `M (I − Y T Yᵀ) = M − ((M Y) T) Yᵀ`, no d×d matrix."""
    for y, t in reversed(factors) if transpose else factors:
        m = m - (m @ y) @ (t.T if transpose else t) @ y.T
    return m


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """HRA-DTYPE-1 also under `torch.autocast`: `R` and `W R` keep the computation dtype."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# A memory-bound pass over a rows×d tensor costs about as much as 128 multiply-adds per element (measured on CPU;
# it only picks the faster route, never changes a result).
PASS_COST = 128


def input_side_is_cheaper(tokens: int, out_features: int, r: int, *, adapter_grad: bool, input_grad: bool) -> bool:
    """Which route adds less work (per input feature) to the base layer's own products. Rotating `rows` rows costs
    ~rows·(r + PASS_COST): the input has `tokens` rows, the weight `out` rows; a backward pass for `hra_u` about
    triples it. When x needs its gradient too, the weight route pays one more product, tokens·out (∂/∂W′ = gᵀx
    besides ∂/∂x = g W′), while the input route gets both from ∂/∂x′ = g W. Only speed depends on the choice."""
    passes = 3 if adapter_grad else 1
    extra = tokens * out_features if adapter_grad and input_grad else 0
    return passes * tokens * (r + PASS_COST) < passes * out_features * (r + PASS_COST) + extra


class HRALayer(TunerLayer):
    """HRA on torch Linear and Conv2d (HRA-LAYER-1), grouped Conv2d included (optional `hra.grouped_conv2d`,
    HRA-LAYER-2). `hra_u` (d, r) with `d` the columns of `W_flat` (HRA-PARAM-1)."""

    adapter_layer_names = ("hra_u",)
    supported_kinds: ClassVar[frozenset[str]] = frozenset({"linear", "conv2d"})

    @classmethod
    def resolve_settings(cls, config: HRAConfig, key: str, base_layer: nn.Module, kind: str) -> HRASettings:
        """HRA-CFG-3 again at injection: the field may have been set after construction."""
        check_positive("r", config.r)
        return HRASettings(r=config.r, apply_gs=bool(config.apply_GS), init_weights=bool(config.init_weights))

    def create_adapter(self, name: str, settings: HRASettings, dtype: torch.dtype) -> None:
        """HRA-INIT-1: even `r` → `[h_0, h_0, h_1, h_1, …]`, `h_j` KU on the (d, r/2) half, U(±√(2/r));
        HRA-INIT-2/3: otherwise KU on (d, r), U(±1/√r), warning for odd `r` with `init_weights=True`;
        HRA-GS-5: Gram–Schmidt with the symmetric initialisation warns."""
        d, r = flat_fan_in(self.base_layer, self.kind), settings.r
        device = self.base_layer.weight.device
        symmetric = settings.init_weights and r % 2 == 0
        if settings.init_weights and not symmetric:
            warnings.warn("The symmetric initialization can NOT be performed when r is odd!", UserWarning, stacklevel=2)
        if symmetric and settings.apply_gs:
            warnings.warn(
                f"Adapter {name!r}: apply_GS=True with the symmetric initialization is degenerate: R_GS is not the "
                "identity, and it changes discontinuously once paired columns separate during training.",
                UserWarning,
                stacklevel=2,
            )
        u = torch.empty(d, r // 2 if symmetric else r, dtype=dtype, device=device)
        nn.init.kaiming_uniform_(u, a=math.sqrt(5))
        self.hra_u[name] = nn.Parameter(u.repeat_interleave(2, dim=1) if symmetric else u)

    def factors(self, name: str, dtype: torch.dtype) -> list[Factor]:
        """`R_name` in `dtype` as WY factors: HRA-R-1, or with Gram–Schmidt `Y = Q`, `T = 2I` (HRA-GS-1).
        HRA-R-3: a column of zero or non-finite norm is rejected with ValueError naming the adapter."""
        u = self.hra_u[name].to(dtype)
        norms = torch.linalg.vector_norm(u, dim=0)
        invalid = ~torch.isfinite(norms) | (norms == 0)
        if invalid.any():
            columns = invalid.nonzero().flatten().tolist()
            raise ValueError(
                f"hra_u of adapter {name!r} has columns of zero or non-finite norm {columns}: every Householder "
                "vector needs a finite, non-zero norm."
            )
        if not self.settings[name].apply_gs:
            return householder_wy(u)
        return [(gram_schmidt(u), 2 * torch.eye(u.shape[1], dtype=dtype, device=u.device))]

    # ---- forward (HRA-FWD-1/2, HRA-MULTI-1, HRA-DTYPE-1) ----
    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        """`op(x; W R_tot, b)` with `R_tot = R_{a1} R_{a2} ⋯` in active order, in the computation dtype; for Linear
        by the cheaper side: `op(x R_totᵀ; W, b)` or `op(x; W R_tot, b)`. Conv2d always rotates the weight."""
        with full_precision(x.device.type):
            dtype = functools.reduce(torch.promote_types, (computation_dtype(self.adapter_dtype(n)) for n in active))
            factors = [factor for name in active for factor in self.factors(name, dtype)]
            weight, h = self.base_weight().to(dtype), x.to(dtype)
            if self.kind == "linear" and self._input_side(x, active, factors):
                h = rotate(h, factors, transpose=True)
            else:
                weight = rotate(weight.reshape(self.out_features, -1), factors).reshape(weight.shape)
        bias = None if self.base_layer.bias is None else self.base_layer.bias.to(dtype)
        return self.op(h, weight, bias).to(x.dtype)

    def _input_side(self, x: torch.Tensor, active: list[str], factors: list[Factor]) -> bool:
        tokens = x.numel() // max(self.in_features, 1)
        adapter_grad = torch.is_grad_enabled() and any(self.hra_u[n].requires_grad for n in active)
        r = sum(y.shape[1] for y, _ in factors)
        return input_side_is_cheaper(
            tokens, self.out_features, r, adapter_grad=adapter_grad, input_grad=x.requires_grad
        )

    # ---- merge (HRA-MERGE-1/2) ----
    @torch.no_grad()
    def _rotated_weight(self, name: str, transpose: bool) -> torch.Tensor:
        """`W_flat R_name` (or `W_flat R_nameᵀ`) in the computation dtype, cast to the base dtype."""
        weight = self.base_weight()
        dtype = computation_dtype(self.adapter_dtype(name))
        with full_precision(weight.device.type):
            flat = rotate(weight.reshape(self.out_features, -1).to(dtype), self.factors(name, dtype), transpose)
        return flat.reshape(weight.shape).to(weight.dtype)

    def merged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        """HRA-MERGE-1: `W_flat ← W_flat R_a`; the bias never changes."""
        return self._rotated_weight(name, transpose=False), None

    def unmerged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        """HRA-MERGE-2: `W_flat ← W_flat R_aᵀ` (`R_GS` itself with Gram–Schmidt)."""
        return self._rotated_weight(name, transpose=True), None


register(HRAConfig, HRALayer, prefix="hra_")
