"""Closed-form float64 oracle for IA3 ((IA)³), transcribed from SPEC.md §5 (with §7.2, §7.3 and §8's IA3 row).

Written from the SPEC text alone; nothing here imports `reference_tuners`.

Adapter config. Besides the canonical fields of §5.1, every adapter's config carries the per-module boolean
`config["feedforward"]`: whether THIS module is feedforward for that adapter. The harness resolves it from
`feedforward_modules` and the module key by IA3-CFG-3/IA3-CFG-4; the oracle never matches patterns itself.

Parameter: one vector `ia3_l` per adapted layer, canonical shape per IA3-PARAM-1. Its entries are read in
row-major order, so `l[o]` (non-feedforward, indexed by output channel) or `l[j]` (feedforward, indexed by input
channel `j ∈ [0, in)`) is the flat entry whatever the canonical shape.
"""

from __future__ import annotations

import torch

from conformance.spec.layer import Adapter, Init, Layer

Tensor = torch.Tensor

PARAM = "ia3_l"
SHIFT = 1e-8
"""The unmerge shift of IA3-MERGE-2: the merged tensor is divided by `l + 1e-8`."""

_HALF = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------------
# Structure: IA3-LAYER-1/2, IA3-PARAM-1, IA3-COUNT-1, IA3-INIT-1/2


def supported_kinds(config: dict) -> frozenset[str]:
    """IA3-LAYER-1: torch `Linear`, transformers `Conv1D`, `Conv2d` and `Conv3d` (feedforward or not) MUST be
    supported."""
    return frozenset({"linear", "hf_conv1d", "conv2d", "conv3d"})


def optional_kinds(config: dict) -> frozenset[str]:
    """IA3-LAYER-2 *(optional)*: torch `Conv1d` (capability `ia3.conv1d`)."""
    return frozenset({"conv1d"})


def _channels(config: dict, layer: Layer) -> int:
    """The length of `ia3_l`: `out` (features/channels) non-feedforward, `in` feedforward (IA3-PARAM-1)."""
    return layer.in_features if config["feedforward"] else layer.out_features


def param_shapes(config: dict, layer: Layer) -> dict[str, tuple[int, ...]]:
    """IA3-PARAM-1: `ia3_l` is `(out, 1)` / `(1, in)` for Linear and `Conv1D` (non-feedforward / feedforward);
    `(1, out_ch, 1, 1)` / `(1, in_ch, 1, 1)` for `Conv2d`; `(1, out_ch, 1, 1, 1)` / `(1, in_ch, 1, 1, 1)` for
    `Conv3d`; IA3-LAYER-2 (optional `Conv1d`): `(1, C, 1)`, read here as `(1, out_ch, 1)` / `(1, in_ch, 1)` with
    `C` the full channel count of the scaled side (not §0.4's `in_channels/groups`: IA3-FWD-3's grouped rule
    indexes the feedforward vector up to `in_channels`)."""
    n = _channels(config, layer)
    if layer.is_conv:
        return {PARAM: (1, n, *([1] * len(layer.kernel_size)))}
    return {PARAM: (1, n) if config["feedforward"] else (n, 1)}


def trainable_count(config: dict, layer: Layer) -> int:
    """IA3-COUNT-1 (§7.2): `out` (channels) non-feedforward, `in` (channels) feedforward."""
    return layer.in_features if config["feedforward"] else layer.out_features


def init_distributions(config: dict, layer: Layer) -> dict[str, Init]:
    """IA3-INIT-1: `init_ia3_weights=True` → all ones (⟨Z⟩); IA3-INIT-2: `False` → i.i.d. N(0, 1) (⟨P⟩)."""
    return {PARAM: Init("ones") if config["init_ia3_weights"] else Init("normal")}


# ----------------------------------------------------------------------------------------------------------------
# Forward / merge: IA3-FWD-1/2/3, IA3-MULTI-1, IA3-MERGE-1


def vector(config: dict, params: dict[str, Tensor], layer: Layer) -> Tensor:
    """The adapter's vector `l` as a 1-D tensor of length `out` (non-feedforward) or `in` (feedforward), entries in
    row-major order of `ia3_l` (IA3-PARAM-1). Rejects a vector of the wrong size with ValueError."""
    vec = params[PARAM].reshape(-1)
    if vec.shape[0] != _channels(config, layer):
        raise ValueError(
            f"ia3_l has {vec.shape[0]} entries, expected {_channels(config, layer)} "
            f"({'in' if config['feedforward'] else 'out'} of {layer})"
        )
    return vec


def input_index(layer: Layer) -> Tensor:
    """IA3-FWD-3's index map for feedforward vectors: `idx[o, c] = g(o)·C + c` with `C = in_channels/groups` and
    `g(o) = ⌊o / (out_channels/groups)⌋`, an integer tensor of shape `(out, C)`; for linear kinds (one group)
    `idx[o, c] = c`. Entry `W[o, c, …]` of the weight multiplies input channel `idx[o, c]`."""
    c_per_group = layer.channels_per_group
    out_per_group = layer.out_features // layer.groups
    rows = []
    for o in range(layer.out_features):
        g = o // out_per_group
        rows.append([g * c_per_group + c for c in range(c_per_group)])
    return torch.tensor(rows, dtype=torch.long).reshape(layer.out_features, c_per_group)


def _per_entry(layer: Layer, row: Tensor | None, column: Tensor | None) -> Tensor:
    """The factor `f[o, c] = row[o] · column[idx[o, c]]` (missing factors are 1), shaped `(out, C, 1, …, 1)` to
    broadcast against a (logical) weight `out × C × k…` or `out × in`."""
    out, c_per_group = layer.out_features, layer.channels_per_group
    f = torch.ones(out, c_per_group, dtype=torch.float64)
    if row is not None:
        f = row.reshape(out, 1) * f
    if column is not None:
        f = f * column[input_index(layer)]
    return f.reshape(out, c_per_group, *([1] * len(layer.kernel_size if layer.is_conv else ())))


def products(layer: Layer, adapters: list[Adapter]) -> tuple[Tensor, Tensor]:
    """IA3-MULTI-1: `(l_out, l_ff)` = the elementwise products of the vectors of the non-feedforward and of the
    feedforward adapters on this layer (each 1 — a vector of ones — when there are none)."""
    l_out = torch.ones(layer.out_features, dtype=torch.float64)
    l_ff = torch.ones(layer.in_features, dtype=torch.float64)
    for adapter in adapters:
        vec = vector(adapter.config, adapter.params, layer)
        if adapter.config["feedforward"]:
            l_ff = l_ff * vec
        else:
            l_out = l_out * vec
    return l_out, l_ff


def effective(
    weight: Tensor, bias: Tensor | None, layer: Layer, adapters: list[Adapter]
) -> tuple[Tensor, Tensor | None]:
    """Effective `(W′, b′)` of the adapters in list order (eval mode).

    IA3-MULTI-1: vectors multiply (commutative); with `l_out`/`l_ff` the products over the non-feedforward /
    feedforward adapters, `y = l_out ⊙ base(l_ff ⊙ x)` (IA3-FWD-1, IA3-FWD-2). By IA3-FWD-3 entry by entry:

        W′[o, c, …] = l_out[o] · W[o, c, …] · l_ff[g(o)·C + c],   b′[o] = l_out[o] · b[o]

    with `C = in_channels/groups`, `g(o) = ⌊o/(out_channels/groups)⌋` (linear kinds: `W′[o, j] = l_out[o] W[o, j]
    l_ff[j]`). The bias is scaled by the non-feedforward vectors only. Merging the adapters one by one
    (IA3-MERGE-1) gives the same `(W′, b′)` up to the order of the rounded products (⟨N⟩)."""
    l_out, l_ff = products(layer, adapters)
    new_weight = weight * _per_entry(layer, l_out, l_ff)
    new_bias = None if bias is None else l_out * bias
    return new_weight, new_bias


# ----------------------------------------------------------------------------------------------------------------
# Unmerge: IA3-MERGE-2, IA3-MERGE-4, §8 ⟨A⟩ IA3 unmerge


def shifted(vec: Tensor, vector_dtype: torch.dtype = torch.float64) -> Tensor:
    """IA3-MERGE-2's divisor `l + 1e-8`, rounded as the clause computes it: in float32 when the vector's dtype is
    float16/bfloat16, in the vector's dtype otherwise. The result is returned in float64 (its value is the rounded
    one): e.g. in float32 the shift vanishes for `|l| > 0.25` (`l + 1e-8` rounds to `l`). `vec` (= `l`) holds the values
    the implementation holds (already representable in `vector_dtype`)."""
    compute = torch.float32 if vector_dtype in _HALF else vector_dtype
    return (vec.to(compute) + SHIFT).to(torch.float64)


def unmerge(
    weight: Tensor,
    bias: Tensor | None,
    layer: Layer,
    adapter: Adapter,
    *,
    vector_dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor | None]:
    """IA3-MERGE-2 ⟨A⟩ (approximate by design): reverting one merged adapter divides the merged weight — and,
    non-feedforward only, the bias — by `d = l + 1e-8` with the broadcasting of IA3-FWD-3:

        non-feedforward: W[o, c, …] / d[o],   b[o] / d[o]
        feedforward:     W[o, c, …] / d[g(o)·C + c],   b unchanged

    `d` is formed by `shifted(l, vector_dtype)` (float32 for half-precision vectors). The division itself is done
    here in float64; the result is cast to `weight`'s (resp. `bias`'s) dtype. Entries merged with `l = 0` are 0 and
    stay 0 (`0 ⊘ 1e-8 = 0`, IA3-MERGE-4). For an entry `l = −1e-8` the divisor is 0 and the result non-finite:
    that is the case IA3-MERGE-5 forbids an implementation to produce silently; the oracle returns it as computed.
    The §8 bound on `|W_rec − W|` is `unmerge_bound`."""
    d = shifted(vector(adapter.config, adapter.params, layer), vector_dtype)
    if adapter.config["feedforward"]:
        new_weight = weight / _per_entry(layer, None, d)
        new_bias = bias
    else:
        new_weight = weight / _per_entry(layer, d, None)
        new_bias = None if bias is None else bias / d
    new_weight = new_weight.to(weight.dtype)
    new_bias = None if new_bias is None else new_bias.to(bias.dtype)
    return new_weight, new_bias


def unmerge_bound(
    weight: Tensor, bias: Tensor | None, layer: Layer, adapters: list[Adapter]
) -> tuple[Tensor, Tensor | None]:
    """§8 ⟨A⟩ IA3 unmerge (float64): the elementwise bound `|W_rec − W| ≤ |W| · Σ_a 1e-8/|l_a + 1e-8|` over the
    reverted adapters `a`, each `l_a` broadcast as in IA3-FWD-3 (row `o` non-feedforward, input channel
    `g(o)·C + c` feedforward); likewise for `b`, where only non-feedforward adapters contribute (a feedforward
    unmerge does not touch the bias). `weight`/`bias` are the ORIGINAL (pre-merge) tensors; the comparison adds the
    ⟨N⟩ float64 tolerance on top ("plus ⟨N⟩"). In float32/16/bf16 §8's cell is ⟨N⟩ alone."""
    w_sum = torch.zeros(weight.shape, dtype=torch.float64)
    b_sum = None if bias is None else torch.zeros(bias.shape, dtype=torch.float64)
    for adapter in adapters:
        rel = SHIFT / (vector(adapter.config, adapter.params, layer) + SHIFT).abs()
        if adapter.config["feedforward"]:
            w_sum = w_sum + _per_entry(layer, None, rel)
        else:
            w_sum = w_sum + _per_entry(layer, rel, None)
            if b_sum is not None:
                b_sum = b_sum + rel
    w_bound = weight.abs() * w_sum
    b_bound = None if bias is None else bias.abs() * b_sum
    return w_bound, b_bound


# ----------------------------------------------------------------------------------------------------------------
# add_weighted_adapter: IA3-WADD-1 (optional, capability `ia3.weighted_adapter`)


def weighted_vector(vectors: list[Tensor], weights: list[float]) -> Tensor:
    """IA3-WADD-1: the new adapter's vector on a layer is the weighted SUM `Σ_k w_k l_k` (not a product) of the
    combined adapters' vectors on that layer (all of the same shape)."""
    if len(vectors) != len(weights) or not vectors:
        raise ValueError("weighted_vector needs one weight per vector and at least one vector")
    total = weights[0] * vectors[0]
    for w, vec in zip(weights[1:], vectors[1:], strict=True):
        total = total + w * vec
    return total


def weighted_modules(values: list[set[str] | frozenset[str] | list[str] | tuple[str, ...] | str]) -> set[str] | str:
    """IA3-WADD-1: the `target_modules` (or `feedforward_modules`) of the combined adapter — the union when every
    value is a set (lists/tuples count as sets, CORE-CFG-3), the alternation of the parenthesised patterns
    `"(P1)|(P2)|…"` when every value is a string; mixed set/string kinds (or None) are rejected with ValueError.
    The string form is read literally: each pattern wrapped in parentheses, joined with `|` in adapter order."""
    if values and all(isinstance(v, str) for v in values):
        return "|".join(f"({v})" for v in values)
    if values and all(isinstance(v, (set, frozenset, list, tuple)) for v in values):
        union: set[str] = set()
        for v in values:
            union |= set(v)
        return union
    raise ValueError(f"add_weighted_adapter: cannot combine module specifications of mixed kinds: {values!r}")


def weighted_adapter(adapters: list[Adapter], weights: list[float], layer: Layer) -> Adapter:
    """IA3-WADD-1 on one layer: the combined adapter of the `adapters` present on this layer. Its vector is
    `weighted_vector` of theirs; its `feedforward` flag follows the union/alternation of `weighted_modules` (a module
    is feedforward for the combination iff it is for some combined adapter). SPEC is silent when the combined
    adapters disagree on this layer's feedforward flag (the vectors then have different lengths): rejected here
    with ValueError. The returned config copies the first adapter's config with `feedforward` replaced."""
    feedforward = any(a.config["feedforward"] for a in adapters)
    if any(a.config["feedforward"] != feedforward for a in adapters):
        raise ValueError("add_weighted_adapter: adapters disagree on whether this layer is feedforward")
    vectors = [vector(a.config, a.params, layer) for a in adapters]
    shape = adapters[0].params[PARAM].shape
    combined = weighted_vector(vectors, weights).reshape(shape)
    return Adapter(config={**adapters[0].config, "feedforward": feedforward}, params={PARAM: combined})
