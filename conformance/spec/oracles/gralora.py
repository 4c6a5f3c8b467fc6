"""GraLoRA oracle: SPEC.md §3 (Granular LoRA with hybrid part), transcribed literally in float64.

Notation (§3.3): `N = gralora_k`, `ρ = r/N`, `h = hybrid_r`, `σ = alpha/(r + h)`. Parameters under their canonical
names: `gralora_A` (N, in/N, r), `gralora_B` (N, r, out/N) and, for h > 0, `gralora_A_general.weight` (h, in),
`gralora_B_general.weight` (out, h). Weights are in logical orientation `out × in` for both layer kinds (a transformers
`Conv1D` stores the transpose; the oracle never sees the stored layout).

The block formulas are written with explicit loops over the block indices `j, n` and the in-block rank index `t`,
exactly as GRALORA-FWD-1 and GRALORA-FWD-2 index them; only the innermost `i, o` (or the input's leading dimensions)
are whole-tensor operations. Written from SPEC.md alone.
"""

from __future__ import annotations

import math

import torch

from conformance.spec.layer import Adapter, Init, Layer

Tensor = torch.Tensor

A = "gralora_A"
B = "gralora_B"
A_GENERAL = "gralora_A_general.weight"
B_GENERAL = "gralora_B_general.weight"


def supported_kinds(config: dict) -> frozenset[str]:
    """GRALORA-LAYER-1: torch `Linear` and transformers `Conv1D` are MUST kinds."""
    return frozenset({"linear", "hf_conv1d"})


def optional_kinds(config: dict) -> frozenset[str]:
    """GraLoRA has no optional layer kind (§3.2)."""
    return frozenset()


def scaling(config: dict) -> float:
    """GRALORA-PARAM-2: σ = alpha / (r + h)."""
    return config["alpha"] / (config["r"] + config["hybrid_r"])


def _sizes(config: dict, layer: Layer) -> tuple[int, int, int]:
    """(N, ρ, h) after the preconditions SPEC puts on them (GRALORA-CFG-2..5, GRALORA-LAYER-1); ValueError
    otherwise, so the oracle is never evaluated outside its domain."""
    if layer.kind not in supported_kinds(config):
        raise ValueError(f"GraLoRA does not support layer kind {layer.kind!r} (GRALORA-LAYER-1)")
    n_blocks, r, h = config["gralora_k"], config["r"], config["hybrid_r"]
    if n_blocks <= 0 or r <= 0 or h < 0 or r % n_blocks:
        raise ValueError(f"invalid GraLoRA sizes r={r}, gralora_k={n_blocks}, hybrid_r={h} (GRALORA-CFG-2..4)")
    if layer.in_features % n_blocks or layer.out_features % n_blocks:
        raise ValueError(
            f"in_features={layer.in_features} and out_features={layer.out_features} must be divisible by "
            f"gralora_k={n_blocks} (GRALORA-CFG-5)"
        )
    return n_blocks, r // n_blocks, h


def param_shapes(config: dict, layer: Layer) -> dict[str, tuple[int, ...]]:
    """GRALORA-PARAM-1: `gralora_A` (N, in/N, r), `gralora_B` (N, r, out/N); with h > 0 also
    `gralora_A_general.weight` (h, in) and `gralora_B_general.weight` (out, h)."""
    n_blocks, _, h = _sizes(config, layer)
    r, d_in, d_out = config["r"], layer.in_features, layer.out_features
    shapes = {A: (n_blocks, d_in // n_blocks, r), B: (n_blocks, r, d_out // n_blocks)}
    if h > 0:
        shapes[A_GENERAL] = (h, d_in)
        shapes[B_GENERAL] = (d_out, h)
    return shapes


def trainable_count(config: dict, layer: Layer) -> int:
    """GRALORA-COUNT-1: (r + h)·(in + out) per adapted layer, independent of N."""
    _sizes(config, layer)
    return (config["r"] + config["hybrid_r"]) * (layer.in_features + layer.out_features)


def init_distributions(config: dict, layer: Layer) -> dict[str, Init]:
    """GRALORA-INIT-1..3. `gralora_A` ~ U(±1/√(in/N)) and `gralora_A_general.weight` ~ U(±1/√in) for both options;
    `init_weights=True`: both B tensors zero; `False`: `gralora_B` ~ U(±1/√r), `gralora_B_general.weight`
    ~ U(±1/√h)."""
    n_blocks, _, h = _sizes(config, layer)
    r, d_in = config["r"], layer.in_features
    zero = bool(config["init_weights"])
    dists = {
        A: Init("uniform", 1 / math.sqrt(d_in / n_blocks)),
        B: Init("zeros") if zero else Init("uniform", 1 / math.sqrt(r)),
    }
    if h > 0:
        dists[A_GENERAL] = Init("uniform", 1 / math.sqrt(d_in))
        dists[B_GENERAL] = Init("zeros") if zero else Init("uniform", 1 / math.sqrt(h))
    return dists


def delta_weight(config: dict, layer: Layer, params: dict[str, Tensor]) -> Tensor:
    """GRALORA-FWD-2: the equivalent weight, logical orientation `out × in`:

        ΔW[j·out/N + o, n·in/N + i] = σ Σ_{t<ρ} A[n, i, jρ+t] · B[j, nρ+t, o]   (+ σ B_gen A_gen if h > 0).

    Loops over the output block j, the input block n and t; each term is the outer product over (o, i)."""
    n_blocks, rho, h = _sizes(config, layer)
    sigma = scaling(config)
    a, b = params[A], params[B]
    rows = []
    for j in range(n_blocks):
        blocks = []
        for n in range(n_blocks):
            block = sum(torch.outer(b[j, n * rho + t, :], a[n, :, j * rho + t]) for t in range(rho))
            blocks.append(sigma * block)
        rows.append(torch.cat(blocks, dim=1))
    delta = torch.cat(rows, dim=0)
    if h > 0:
        delta = delta + sigma * (params[B_GENERAL] @ params[A_GENERAL])
    return delta


def adapter_output(x: Tensor, config: dict, layer: Layer, params: dict[str, Tensor]) -> Tensor:
    """GRALORA-FWD-1: Δy for `x` of shape (…, in), eval mode (no dropout). Cut `x` into N chunks `x_n`; output
    chunk j is

        Δy_j = σ Σ_n Σ_{t<ρ} (x_n A_n)[…, jρ+t] · B_j[nρ+t, :]   (+ σ (x A_genᵀ) B_genᵀ over all chunks if h > 0).

    The forward is `y = base(x) + Δy`; this helper returns Δy only."""
    n_blocks, rho, h = _sizes(config, layer)
    sigma = scaling(config)
    a, b = params[A], params[B]
    chunk = layer.in_features // n_blocks
    xa = [x[..., n * chunk : (n + 1) * chunk] @ a[n] for n in range(n_blocks)]  # x_n A_n: (…, r)
    outputs = []
    for j in range(n_blocks):
        terms = [xa[n][..., j * rho + t, None] * b[j, n * rho + t, :] for n in range(n_blocks) for t in range(rho)]
        outputs.append(sigma * sum(terms))
    delta_y = torch.cat(outputs, dim=-1)
    if h > 0:
        delta_y = delta_y + sigma * ((x @ params[A_GENERAL].T) @ params[B_GENERAL].T)
    return delta_y


def effective(
    weight: Tensor, bias: Tensor | None, layer: Layer, adapters: list[Adapter]
) -> tuple[Tensor, Tensor | None]:
    """GRALORA-MERGE-1, GRALORA-MULTI-1: `W + Σ_a ΔW_a` (adapters add; order irrelevant), bias unchanged."""
    for adapter in adapters:
        weight = weight + delta_weight(adapter.config, layer, adapter.params)
    return weight, bias


def unmerge(weight: Tensor, bias: Tensor | None, layer: Layer, adapter: Adapter) -> tuple[Tensor, Tensor | None]:
    """GRALORA-MERGE-1: unmerge subtracts, `W − ΔW` (exact in exact arithmetic), bias unchanged."""
    return weight - delta_weight(adapter.config, layer, adapter.params), bias
