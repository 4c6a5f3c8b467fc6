"""HRA oracle: SPEC.md §4 (Householder Reflection Adaptation, with the Gram–Schmidt option), literally, in float64.

`hra_u = U ∈ ℝ^{d×r}` with `d` the number of columns of `W_flat` (`in` for Linear, `C·kh·kw` for Conv2d,
`C = in_channels/groups`). Every orthogonal matrix is built explicitly as a dense `d×d` matrix: the reflection
chain of HRA-R-1 as the ordered product of the `r` matrices `H_i`, the Gram–Schmidt form of HRA-GS-1 as `I − 2QQᵀ`
from an explicit loop. The effective weight multiplies `W_flat` on its input side (HRA-FWD-1/2). Written from
SPEC.md alone.
"""

from __future__ import annotations

import math

import torch

from conformance.spec.layer import Adapter, Init, Layer, flat

Tensor = torch.Tensor

U = "hra_u"


def supported_kinds(config: dict) -> frozenset[str]:
    """HRA-LAYER-1: torch `Linear` and `Conv2d` with groups = 1 are MUST kinds."""
    return frozenset({"linear", "conv2d"})


def optional_kinds(config: dict) -> frozenset[str]:
    """No optional layer kind. HRA-LAYER-2's optional capability `hra.grouped_conv2d` is a property of the conv2d
    geometry (groups > 1, `d = (in_channels/groups)·kh·kw`, same formulas): every function here accepts it."""
    return frozenset()


def _check_kind(layer: Layer) -> None:
    if layer.kind not in ("linear", "conv2d"):
        raise ValueError(f"HRA does not support layer kind {layer.kind!r} (HRA-LAYER-1, HRA-LAYER-3)")


def fan_in(layer: Layer) -> int:
    """HRA-PARAM-1: d = in (Linear) or C·kh·kw (Conv2d, C = in_channels/groups), the columns of `W_flat`."""
    _check_kind(layer)
    return layer.fan_in


def param_shapes(config: dict, layer: Layer) -> dict[str, tuple[int, ...]]:
    """HRA-PARAM-1: `hra_u` has shape (d, r)."""
    return {U: (fan_in(layer), config["r"])}


def trainable_count(config: dict, layer: Layer) -> int:
    """HRA-COUNT-1: d·r per adapted layer (Linear in·r; Conv2d C·kh·kw·r)."""
    _check_kind(layer)
    if layer.kind == "linear":
        return layer.in_features * config["r"]
    kh, kw = layer.kernel_size
    return layer.channels_per_group * kh * kw * config["r"]


def init_distributions(config: dict, layer: Layer) -> dict[str, Init]:
    """HRA-INIT-1..3. `init_weights=True` with even r: paired columns `[h_0, h_0, h_1, h_1, …]`, each `h_j` i.i.d.
    U(±√(2/r)) (KU on the (d, r/2) half); odd r (which also warns, HRA-INIT-2) or `init_weights=False`: i.i.d.
    U(±1/√r)."""
    _check_kind(layer)
    r = config["r"]
    if config["init_weights"] and r % 2 == 0:
        return {U: Init("paired_uniform", math.sqrt(2 / r))}
    return {U: Init("uniform", 1 / math.sqrt(r))}


def invalid_columns(u: Tensor) -> list[int]:
    """HRA-R-3: indices of the columns of U whose norm is zero or non-finite (invalid input in both modes; merge and
    safe merge must reject such U with ValueError naming the adapter, and it takes precedence over HRA-GS-4)."""
    norms = torch.linalg.vector_norm(u.detach(), dim=0)
    return [i for i in range(u.shape[1]) if not (bool(torch.isfinite(norms[i])) and bool(norms[i] > 0))]


def reflection(u_i: Tensor) -> Tensor:
    """HRA-R-1: `H_i = I_d − 2 û_i û_iᵀ` with `û_i = u_i/‖u_i‖` (no epsilon)."""
    u_hat = u_i / torch.linalg.vector_norm(u_i)
    return torch.eye(u_i.shape[0], dtype=u_i.dtype, device=u_i.device) - 2 * torch.outer(u_hat, u_hat)


def reflection_chain(u: Tensor) -> Tensor:
    """HRA-R-1: `R = H_0 H_1 ⋯ H_{r−1}` (`u_0` leftmost), the product of `r` dense d×d reflections in order.
    HRA-R-2: R is orthogonal with det R = (−1)^r."""
    result = torch.eye(u.shape[0], dtype=u.dtype, device=u.device)
    for i in range(u.shape[1]):
        result = result @ reflection(u[:, i])
    return result


def gram_schmidt(u: Tensor, eps_dtype: torch.dtype = torch.float64) -> Tensor:
    """HRA-GS-1, HRA-GS-3, HRA-GS-4: Q = [q_0 … q_{m−1}] (m ≤ r) by modified Gram–Schmidt on u_0 … u_{r−1} in order.

    For column i: `v ← u_i`; for every kept `q_j` (j < i) in order `v ← v − (q_jᵀv) q_j`. If `‖v‖ ≤ √ε·‖u_i‖`, with
    `ε = torch.finfo(eps_dtype).eps` (the dtype `R_GS` is computed in, HRA-DTYPE-1; pass the implementation's
    computation dtype to reproduce its omission decisions), the column adds no direction and is omitted (HRA-GS-4,
    decided on this first-pass residual). Otherwise a second pass `v ← v − (q_jᵀv) q_j` over the same kept `q_j`
    re-orthogonalises (the SHOULD of HRA-GS-3) and `q_i = v/‖v‖`.

    Why the second pass: one-pass MGS loses orthogonality in proportion to `ε·‖u_i‖/‖v‖`. Measured in float64
    (d = 12, r = 4): max |QᵀQ − I| ≈ 1e-13 at residual ratio ‖v‖/‖u_i‖ = 10⁻² (§8's floor), 1e-9 at 10⁻⁶ and 1e-8
    just above the float64 threshold, where the gradients of one- and two-pass forms differ by 2e-8 relative —
    beyond §8's fp64 ⟨N⟩/⟨G⟩ tolerance of 1e-10, so a one-pass oracle would misjudge an implementation that does
    re-orthogonalise. With the second pass |QᵀQ − I| stays ≈ 5e-16 at every ratio. In exact arithmetic the second
    pass subtracts zeros on an open set of U, so the closed form and its derivatives are unchanged. HRA-R-3 (zero
    or non-finite columns) is not handled here: such U is outside the domain (see `invalid_columns`)."""
    threshold = math.sqrt(torch.finfo(eps_dtype).eps)
    kept: list[Tensor] = []
    for i in range(u.shape[1]):
        u_i = u[:, i]
        v = u_i
        for q in kept:
            v = v - torch.dot(q, v) * q
        if bool(torch.linalg.vector_norm(v) <= threshold * torch.linalg.vector_norm(u_i)):
            continue
        for q in kept:
            v = v - torch.dot(q, v) * q
        kept.append(v / torch.linalg.vector_norm(v))
    if not kept:
        return u.new_zeros(u.shape[0], 0)
    return torch.stack(kept, dim=1)


def gs_reflection(u: Tensor, eps_dtype: torch.dtype = torch.float64) -> Tensor:
    """HRA-GS-1: `R_GS = I − 2QQᵀ` with Q from `gram_schmidt` (HRA-GS-4's omission with ε of `eps_dtype`).
    HRA-GS-2: symmetric, orthogonal, an involution, and equal to ∏ (I − 2 q_i q_iᵀ) in any order."""
    q = gram_schmidt(u, eps_dtype)
    return torch.eye(u.shape[0], dtype=u.dtype, device=u.device) - 2 * (q @ q.T)


def adapter_matrix(config: dict, params: dict[str, Tensor], eps_dtype: torch.dtype = torch.float64) -> Tensor:
    """R_a: `reflection_chain(U)` (HRA-R-1), or `gs_reflection(U)` when `apply_GS` (HRA-GS-1). ValueError if U has
    a zero or non-finite column (HRA-R-3: no closed form exists for it)."""
    u = params[U]
    bad = invalid_columns(u)
    if bad:
        raise ValueError(f"hra_u has zero or non-finite columns {bad} (HRA-R-3)")
    return gs_reflection(u, eps_dtype) if config["apply_GS"] else reflection_chain(u)


def total_matrix(adapters: list[Adapter], eps_dtype: torch.dtype = torch.float64) -> Tensor:
    """HRA-MULTI-1: `R_tot = R_{a1} R_{a2} ⋯ R_{ak}` in active-list order (identity for no adapter)."""
    result = None
    for adapter in adapters:
        r_a = adapter_matrix(adapter.config, adapter.params, eps_dtype)
        result = r_a if result is None else result @ r_a
    return result


def effective(
    weight: Tensor,
    bias: Tensor | None,
    layer: Layer,
    adapters: list[Adapter],
    *,
    eps_dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor | None]:
    """HRA-FWD-1/2, HRA-MULTI-1, HRA-MERGE-1: `W′ = reshape(W_flat R_tot)` to W's shape (input side: `W R`, never
    `R W`), bias unchanged. Merging `a1, …, ak` in order (`W_flat ← W_flat R_a` each) gives the same W′.
    `eps_dtype`: HRA-GS-4's ε (see `gram_schmidt`)."""
    _check_kind(layer)
    if not adapters:
        return weight, bias
    return (flat(weight) @ total_matrix(adapters, eps_dtype)).reshape(weight.shape), bias


def unmerge(
    weight: Tensor,
    bias: Tensor | None,
    layer: Layer,
    adapter: Adapter,
    *,
    eps_dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor | None]:
    """HRA-MERGE-2: `W_flat ← W_flat R_aᵀ` (reflection chain), `W_flat ← W_flat R_GS` (Gram–Schmidt: R_GS itself);
    bias unchanged. Exact inverse of the merge in exact arithmetic. `eps_dtype`: HRA-GS-4's ε."""
    _check_kind(layer)
    r_a = adapter_matrix(adapter.config, adapter.params, eps_dtype)
    inverse = r_a if adapter.config["apply_GS"] else r_a.T
    return (flat(weight) @ inverse).reshape(weight.shape), bias
