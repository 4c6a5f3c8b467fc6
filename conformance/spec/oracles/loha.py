"""Closed-form float64 oracle for LoHa (low-rank Hadamard product), transcribed from SPEC.md §6 (with §7.2, §7.3).

Written from the SPEC text alone; nothing here imports `reference_tuners`.

Adapter config: the canonical fields of §6.1 with `r` and `alpha` already resolved for this module
(`rank_pattern`/`alpha_pattern`, LOHA-CFG-4). `s = alpha / r` per module (§6.3).

Modes (LOHA-PARAM-1/2): *effective* iff `use_effective_conv2d` is true, the layer is a convolution and
`K = ∏ k_i > 1` (a 1×1 / k=1 kernel silently stays flattened); otherwise *flattened* (Linear, transformers
`Conv1D`, and every other convolution).
"""

from __future__ import annotations

import math

import torch

from conformance.spec.layer import Adapter, Init, Layer

Tensor = torch.Tensor

W1A, W1B, W2A, W2B, T1, T2 = "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"


# ----------------------------------------------------------------------------------------------------------------
# Structure: LOHA-LAYER-1/2, LOHA-PARAM-1/2, LOHA-COUNT-1, LOHA-INIT-1/2/3


def supported_kinds(config: dict) -> frozenset[str]:
    """LOHA-LAYER-1: torch `Linear`, `Conv1d` and `Conv2d` (any groups, kernel incl. 1 / 1×1, stride, padding,
    dilation, padding_mode) MUST be supported."""
    return frozenset({"linear", "conv1d", "conv2d"})


def optional_kinds(config: dict) -> frozenset[str]:
    """LOHA-LAYER-2 *(optional)*: `Conv3d` (capability `loha.conv3d`) and transformers `Conv1D`
    (`loha.hf_conv1d`)."""
    return frozenset({"conv3d", "hf_conv1d"})


def is_effective(config: dict, layer: Layer) -> bool:
    """LOHA-PARAM-2: effective (CP) mode iff `use_effective_conv2d` and `K > 1` on a convolution."""
    return bool(config["use_effective_conv2d"]) and layer.is_conv and layer.kernel_numel > 1


def scale(config: dict) -> float:
    """§6.3: `s = alpha / r` with this module's resolved `r` and `alpha`."""
    return config["alpha"] / config["r"]


def core_shape(layer: Layer, r: int) -> tuple[int, ...]:
    """LOHA-PARAM-2 / LOHA-LAYER-2: the CP core `hada_t?` is `(r, r, kh, kw)` for Conv2d, `(r, r, k, 1)` for Conv1d
    and `(r, r, k1, k2, k3)` for Conv3d."""
    if layer.kind == "conv1d":
        return (r, r, *layer.kernel_size, 1)
    return (r, r, *layer.kernel_size)


def param_shapes(config: dict, layer: Layer) -> dict[str, tuple[int, ...]]:
    """LOHA-PARAM-1 (flattened): `hada_w1_a`, `hada_w2_a` `(out, r)`; `hada_w1_b`, `hada_w2_b` `(r, D)` with `D = in`
    (linear kinds) or `C·K` (conv, `C = in_channels/groups`).
    LOHA-PARAM-2 (effective): `hada_t1`, `hada_t2` per `core_shape`; `hada_w1_a`, `hada_w2_a` `(r, out)`;
    `hada_w1_b`, `hada_w2_b` `(r, C)`."""
    r, out = config["r"], layer.out_features
    if is_effective(config, layer):
        c = layer.channels_per_group
        core = core_shape(layer, r)
        return {W1A: (r, out), W1B: (r, c), W2A: (r, out), W2B: (r, c), T1: core, T2: core}
    d = layer.fan_in
    return {W1A: (out, r), W1B: (r, d), W2A: (out, r), W2B: (r, d)}


def trainable_count(config: dict, layer: Layer) -> int:
    """LOHA-COUNT-1 (§7.2): Linear `2r(in + out)`; flattened conv `2r(out + C·K)`; effective conv
    `2(r²K + r·out + r·C)`. (Transformers `Conv1D`, linear-type, counts as Linear.)"""
    r, out = config["r"], layer.out_features
    if not layer.is_conv:
        return 2 * r * (layer.in_features + out)
    c, k = layer.channels_per_group, layer.kernel_numel
    if is_effective(config, layer):
        return 2 * (r * r * k + r * out + r * c)
    return 2 * r * (out + c * k)


def init_distributions(config: dict, layer: Layer) -> dict[str, Init]:
    """LOHA-INIT-1/2/3, bounds as the clauses state them (KU = U(±1/√fan)).
    Flattened: `w1a`, `w2a` `U(±1/√r)`; `w1b` `U(±1/√D)`.  Effective: `w1a`, `w2a` `U(±1/√out)`; `w1b`
    `U(±1/√C)`; `t1`, `t2` `U(±1/√(r·K))`.  `hada_w2_b`: zeros when `init_weights=True` (LOHA-INIT-1), else KU like
    `w1b` (LOHA-INIT-3: `U(±1/√D)` resp. `U(±1/√C)`)."""
    r = config["r"]
    if is_effective(config, layer):
        a_bound = 1 / math.sqrt(layer.out_features)
        b_bound = 1 / math.sqrt(layer.channels_per_group)
        t = Init("uniform", 1 / math.sqrt(r * layer.kernel_numel))
        extra = {T1: t, T2: t}
    else:
        a_bound = 1 / math.sqrt(r)
        b_bound = 1 / math.sqrt(layer.fan_in)
        extra = {}
    w2b = Init("zeros") if config["init_weights"] else Init("uniform", b_bound)
    return {
        W1A: Init("uniform", a_bound),
        W1B: Init("uniform", b_bound),
        W2A: Init("uniform", a_bound),
        W2B: w2b,
        **extra,
    }


# ----------------------------------------------------------------------------------------------------------------
# Delta weight: LOHA-DELTA-1/2, LOHA-SCALE-1, LOHA-DROP-1/2


def flattened_product(a: Tensor, b: Tensor) -> Tensor:
    """`(a b)[o, d] = Σ_i a[o, i] · b[i, d]` for `a` `(out, r)` and `b` `(r, D)` (LOHA-DELTA-1's factors)."""
    return torch.einsum("oi,id->od", a, b)


def cp_product(t: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """LOHA-DELTA-2: `P[p, q, κ] = Σ_{i,j} t[i, j, κ] · a[i, p] · b[j, q]` for `t` of `core_shape`, `a` `(r, out)`,
    `b` `(r, C)`; `κ` runs over the kernel positions (the trailing axes of `t`). Returns `(out, C, *t.shape[2:])`
    — for Conv1d `(out, C, k, 1)`, whose trailing unit axis the caller drops."""
    r = t.shape[0]
    kernel = t.shape[2:]
    t_k = t.reshape(r, r, -1)  # κ flattened row-major over the kernel axes
    p = torch.einsum("ijk,ip,jq->pqk", t_k, a, b)
    return p.reshape(a.shape[1], b.shape[1], *kernel)


def delta_weight(layer: Layer, adapter: Adapter, *, scale_value: float | None = None) -> Tensor:
    """`ΔW` in the weight's logical shape, `s = alpha/r` unless `scale_value` is given (LOHA-SCALE-1).

    LOHA-DELTA-1 (flattened): `ΔW = s · (w1a w1b) ⊙ (w2a w2b)`, `(out, D)` reshaped row-major to `W`'s shape
    (`out × in`, or `out × C × k…`).
    LOHA-DELTA-2 (effective): `P_m[p, q, κ] = Σ_{i,j} t_m[i, j, κ] · w_ma[i, p] · w_mb[j, q]`, `ΔW = s · P_1 ⊙ P_2`
    (Conv1d: trailing unit axis dropped)."""
    config, params = adapter.config, adapter.params
    s = scale(config) if scale_value is None else scale_value
    if is_effective(config, layer):
        p1 = cp_product(params[T1], params[W1A], params[W1B])
        p2 = cp_product(params[T2], params[W2A], params[W2B])
        delta = s * (p1 * p2)
        if layer.kind == "conv1d":
            delta = delta.squeeze(-1)
        return delta
    p1 = flattened_product(params[W1A], params[W1B])
    p2 = flattened_product(params[W2A], params[W2B])
    return (s * (p1 * p2)).reshape(layer.weight_shape)


def rank_dropout(delta: Tensor, mask: Tensor) -> Tensor:
    """LOHA-DROP-1/2 with an explicit mask `m` (0/1, one entry per output channel):
    `ΔW[o, …] · m_o · out / Σ_o m_o`; when `Σ_o m_o = 0` the result is exactly 0 (finite, never NaN)."""
    out = delta.shape[0]
    m = mask.to(torch.float64)
    total = m.sum()
    factor = torch.where(total > 0, out / torch.clamp(total, min=1.0), torch.zeros_like(total))
    return delta * (m * factor).reshape(out, *([1] * (delta.dim() - 1)))


def scale_after(config: dict, operations: list[tuple[str, float | None]]) -> float:
    """LOHA-SCALE-1 *(optional)*: the scale `s` of one adapter after a sequence of operations, starting from
    `alpha/r`. Operations: `("scale_layer", f)`: `s ← s·f` (f = 1 is a no-op); `("unscale_layer", None)`:
    `s ← alpha/r`; `("unscale_layer", f)`: `s ← s/f`; `("set_scale", f)`: `s ← f·alpha/r`."""
    base = scale(config)
    s = base
    for name, f in operations:
        if name == "scale_layer":
            s = s * f
        elif name == "unscale_layer":
            s = base if f is None else s / f
        elif name == "set_scale":
            s = f * base
        else:
            raise ValueError(f"unknown LoHa scale operation {name!r}")
    return s


# ----------------------------------------------------------------------------------------------------------------
# Forward / merge: LOHA-FWD-1, LOHA-MULTI-1, LOHA-MERGE-1


def effective(
    weight: Tensor, bias: Tensor | None, layer: Layer, adapters: list[Adapter]
) -> tuple[Tensor, Tensor | None]:
    """LOHA-FWD-1 / LOHA-MULTI-1 / LOHA-MERGE-1: `(W + Σ_a ΔW_a, b)` — the adapters add up (order irrelevant), each
    with its own `r`, `alpha` and mode; the bias never changes."""
    new_weight = weight
    for adapter in adapters:
        new_weight = new_weight + delta_weight(layer, adapter)
    return new_weight, bias


def unmerge(weight: Tensor, bias: Tensor | None, layer: Layer, adapter: Adapter) -> tuple[Tensor, Tensor | None]:
    """LOHA-MERGE-1: unmerge subtracts `ΔW` (exact up to rounding, ⟨N⟩); the bias never changes."""
    return weight - delta_weight(layer, adapter), bias
