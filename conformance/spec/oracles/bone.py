"""Float64 oracle for Bone (with BAT) and MiSS, transcribed from SPEC.md §2 (§2.1–§2.9, incl. MISS-MINI and
MISS-CONV). One module serves the `bone` and the `miss` records.

Modes, from the canonical config's `init_weights`: True / False = plain Bone, `"bat"` = BAT, `"mini"` = MiSS mini.
The single block of an adapter is `params["bone_block"]` or `params["miss_block"]` (either is accepted). Whether a
config is Bone's or MiSS's is read from its fields: only MiSS's table (§2.9) has `mini_r` and `miss_dropout`.

Everything is computed in float64 (inputs are cast), with plain differentiable torch operations and no in-place
writes, so autograd through these functions is the gradient oracle of BONE-BAT-5 / CORE-GRAD-1.

Written from SPEC.md alone: nothing here imports `reference_tuners`.
"""

from __future__ import annotations

import warnings

import torch

from conformance.spec.layer import Adapter, Init, Layer

Tensor = torch.Tensor

_F64 = torch.float64


# --- config reading -------------------------------------------------------------------------------------------


def is_miss(config: dict) -> bool:
    """True for a MiSS config (its table, §2.9, has `mini_r` and `miss_dropout`; Bone's, §2.1, has neither)."""
    return "mini_r" in config or "miss_dropout" in config


def param_name(config: dict) -> str:
    """Canonical parameter name: `bone_block` (BONE-PARAM-1/2) or `miss_block` (MISS-MATH-1, MISS-MINI-1)."""
    return "miss_block" if is_miss(config) else "bone_block"


def mode(config: dict) -> str:
    """`"plain"` (init_weights True/False), `"bat"` or `"mini"` (MiSS only) — BONE-CFG-2, MISS-CFG-2.

    `init_weights` is compared by identity with True/False, so 1/0 are not accepted as booleans."""
    init = config["init_weights"]
    if init is True or init is False:
        return "plain"
    if init == "bat":
        return "bat"
    if init == "mini" and is_miss(config):
        return "mini"
    raise ValueError(f"init_weights={init!r} is not a valid value (BONE-CFG-2 / MISS-CFG-2)")


def check_layer(config: dict, layer: Layer) -> None:
    """Raise ValueError for a config/layer pair SPEC rejects (BONE-LAYER-1..3, BONE-CFG-5, MISS-CFG-3):
    a kind other than `linear`/`hf_conv1d`; `r ≤ 0`; `r > in`; BAT with `in % r ≠ 0` or `out % r ≠ 0`;
    mini with `mini_r < 1` or `out % mini_r ≠ 0`."""
    if layer.kind not in ("linear", "hf_conv1d"):
        raise ValueError(f"layer kind {layer.kind!r} is not supported by Bone/MiSS (BONE-LAYER-3)")
    r, n_in, n_out, m = config["r"], layer.in_features, layer.out_features, mode(config)
    if r <= 0:
        raise ValueError(f"r={r} must be positive (BONE-CFG-5)")
    if r > n_in:
        raise ValueError(f"r={r} exceeds in_features={n_in} (BONE-CFG-5)")
    if m == "bat" and (n_in % r or n_out % r):
        raise ValueError(f"BAT: ({n_out}, {n_in}) is not fully divisible into [{r}, {r}] blocks (BONE-CFG-5)")
    if m == "mini":
        mini_r = config["mini_r"]
        if mini_r < 1:
            raise ValueError(f"mini_r={mini_r} must be ≥ 1 (MISS-CFG-3)")
        if n_out % mini_r:
            raise ValueError(f"out_features={n_out} is not divisible by mini_r={mini_r} (MISS-CFG-3)")


def block(adapter: Adapter) -> Tensor:
    """The adapter's single block, `bone_block` or `miss_block` (exactly one must be present), in float64."""
    found = [name for name in ("bone_block", "miss_block") if name in adapter.params]
    if len(found) != 1:
        raise ValueError(f"expected exactly one of bone_block / miss_block in params, got {sorted(adapter.params)}")
    return adapter.params[found[0]].to(_F64)


# --- structure: PARAM, COUNT, INIT --------------------------------------------------------------------------


def param_shapes(config: dict, layer: Layer) -> dict[str, tuple[int, ...]]:
    """BONE-PARAM-1: plain `(r, out)`; BONE-PARAM-2: BAT `(out/r, r, r)`; MISS-MINI-1: mini `(r, mini_r)`.
    Raises ValueError where `check_layer` does."""
    check_layer(config, layer)
    r, n_out, m = config["r"], layer.out_features, mode(config)
    if m == "bat":
        shape = (n_out // r, r, r)
    elif m == "mini":
        shape = (r, config["mini_r"])
    else:
        shape = (r, n_out)
    return {param_name(config): shape}


def trainable_count(config: dict, layer: Layer) -> int:
    """BONE-COUNT-1 / MISS-COUNT-1: `r·out` for plain and BAT (`(out/r)·r² = out·r`), `r·mini_r` for mini."""
    check_layer(config, layer)
    if mode(config) == "mini":
        return config["r"] * config["mini_r"]
    return config["r"] * layer.out_features


def init_distributions(config: dict, layer: Layer) -> dict[str, Init]:
    """BONE-INIT-1 (True, "bat": zeros), MISS-MINI-1 ("mini": zeros), BONE-INIT-2 (False: i.i.d. U(±1/√out),
    KU on the `(r, out)` tensor, f = out)."""
    check_layer(config, layer)
    if config["init_weights"] is False:
        dist = Init("uniform", layer.out_features**-0.5)
    else:
        dist = Init("zeros")
    return {param_name(config): dist}


def supported_kinds(config: dict) -> frozenset[str]:
    """BONE-LAYER-1: torch Linear is required."""
    return frozenset({"linear"})


def optional_kinds(config: dict) -> frozenset[str]:
    """BONE-LAYER-2 / MISS-MATH-1: transformers Conv1D (capabilities `bone.hf_conv1d`, `miss.hf_conv1d`)."""
    return frozenset({"hf_conv1d"})


# --- plain and mini: T(B) ------------------------------------------------------------------------------------


def tiled_delta(bone_block: Tensor, in_features: int) -> Tensor:
    """T(B) ∈ ℝ^{out×in} with `T(B)[o, i] = B[i mod r, o]` (§2.4, BONE-FWD-1/2): Bᵀ tiled along the input
    dimension, the last tile truncated; no divisibility of `in` by `r` needed. `B = bone_block`, shape (r, out)."""
    r = bone_block.shape[0]
    rows = torch.tensor([i % r for i in range(in_features)], dtype=torch.long)
    return bone_block.to(_F64)[rows, :].T  # [o, i] = B[rows[i], o] = B[i mod r, o]


def chunk_sum_delta(x: Tensor, bone_block: Tensor) -> Tensor:
    """§2.4's equivalent form of `x T(B)ᵀ`: right-pad `x` (…, in) with zeros to length ⌈in/r⌉·r, cut it into
    chunks of r, sum the chunks to s(x) ∈ ℝ^{…×r}; return Δy = s(x) B. Any number of leading dims (zero-size too)."""
    r = bone_block.shape[0]
    n_in = x.shape[-1]
    n_chunks = -(-n_in // r)
    padded = torch.cat([x.to(_F64), x.new_zeros(*x.shape[:-1], n_chunks * r - n_in, dtype=_F64)], dim=-1)
    chunks = [padded[..., k * r : (k + 1) * r] for k in range(n_chunks)]
    s = torch.stack(chunks, dim=0).sum(dim=0)
    return s @ bone_block.to(_F64)


def expand_mini(miss_block: Tensor, out_features: int) -> Tensor:
    """MISS-MINI-2: the expanded block `B_full[j, o] = B[j, o mod mini_r]`, shape (r, out), from the mini block
    (r, mini_r); then `ΔW[o, i] = B_full[i mod r, o] = B[i mod r, o mod mini_r]`."""
    mini_r = miss_block.shape[1]
    cols = torch.tensor([o % mini_r for o in range(out_features)], dtype=torch.long)
    return miss_block.to(_F64)[:, cols]


def delta_weight(adapter: Adapter, layer: Layer) -> Tensor:
    """ΔW of a plain or mini adapter: `T(B)` (BONE-FWD-1) or `T(B_full)` (MISS-MINI-2)."""
    m = mode(adapter.config)
    if m == "bat":
        raise ValueError("BAT has no additive ΔW; use tile_transform (BONE-BAT-1)")
    b = block(adapter)
    if m == "mini":
        b = expand_mini(b, layer.out_features)
    return tiled_delta(b, layer.in_features)


# --- BAT ------------------------------------------------------------------------------------------------------


def _tile(weight: Tensor, p: int, c: int, r: int) -> Tensor:
    """W_{p,c} = W[p·r:(p+1)·r, c·r:(c+1)·r] (§2.5)."""
    return weight[p * r : (p + 1) * r, c * r : (c + 1) * r]


def _assemble(tiles: list[list[Tensor]]) -> Tensor:
    return torch.cat([torch.cat(row, dim=1) for row in tiles], dim=0)


def tile_transform(weight: Tensor, bone_block: Tensor) -> Tensor:
    """BAT's 𝒯_a(W) (§2.5, BONE-BAT-1): every r×r tile `W_{p,c}` becomes `W_{p,c} + W_{p,c} B[p] + B[p]`
    (= `W_{p,c}(I + B[p]) + B[p]`), one `B[p]` per output row block p. `bone_block` has shape (out/r, r, r)."""
    w, b = weight.to(_F64), bone_block.to(_F64)
    n_blocks, r, _ = b.shape
    n_cols = w.shape[1] // r
    tiles = [[_tile(w, p, c, r) + _tile(w, p, c, r) @ b[p] + b[p] for c in range(n_cols)] for p in range(n_blocks)]
    return _assemble(tiles)


def tile_untransform(weight: Tensor, bone_block: Tensor) -> Tensor:
    """BONE-BAT-3: every tile `W_{p,c} ← (W_{p,c} − B[p])(I + B[p])⁻¹`, computed in float64. BONE-BAT-4: a singular
    `I + B[p]`, or a non-finite result, raises ValueError."""
    w, b = weight.to(_F64), bone_block.to(_F64)
    n_blocks, r, _ = b.shape
    n_cols = w.shape[1] // r
    eye = torch.eye(r, dtype=_F64)
    inverses = []
    for p in range(n_blocks):
        try:
            inverses.append(torch.linalg.inv(eye + b[p]))
        except torch.linalg.LinAlgError as err:
            raise ValueError(f"BAT unmerge: I + B[{p}] is singular (BONE-BAT-4)") from err
    tiles = [[(_tile(w, p, c, r) - b[p]) @ inverses[p] for c in range(n_cols)] for p in range(n_blocks)]
    result = _assemble(tiles)
    if not torch.isfinite(result).all():
        raise ValueError("BAT unmerge: the unmerged weight would contain non-finite elements (BONE-BAT-4)")
    return result


# --- effective weight and unmerge --------------------------------------------------------------------------------


def _check_weight(weight: Tensor, layer: Layer) -> None:
    if tuple(weight.shape) != layer.weight_shape:
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match the layer's {layer.weight_shape}")


def _check_block(adapter: Adapter, layer: Layer) -> None:
    (expected,) = param_shapes(adapter.config, layer).values()
    got = tuple(block(adapter).shape)
    if got != expected:
        raise ValueError(f"block shape {got} is not the canonical {expected} (BONE-PARAM-1/2, MISS-MINI-1)")


def apply_adapter(weight: Tensor, layer: Layer, adapter: Adapter) -> Tensor:
    """One step of BONE-MULTI-2: plain / mini `W ← W + T(B)` (BONE-MERGE-1, MISS-MINI-2); BAT `W ← 𝒯_a(W)`
    (BONE-BAT-2)."""
    _check_block(adapter, layer)
    if mode(adapter.config) == "bat":
        return tile_transform(weight, block(adapter))
    return weight.to(_F64) + delta_weight(adapter, layer)


def effective(
    weight: Tensor, bias: Tensor | None, layer: Layer, adapters: list[Adapter]
) -> tuple[Tensor, Tensor | None]:
    """Effective (W, b) with `adapters` active in list order (eval mode; `miss_dropout` plays no part).

    BONE-MULTI-2: the active list is applied in order to the effective weight — plain/mini `W ← W + T(B_a)`,
    BAT `W ← 𝒯_a(W)` — and `y = op(x; W, b)`. This covers BONE-FWD-1 (`y = base(x) + x T(B)ᵀ`), BONE-MULTI-1
    (plain adapters add, order irrelevant), BONE-BAT-1 (`W_eff = 𝒯_{ak}(…𝒯_{a1}(W))`), MISS-MINI-2 and, by
    BONE-BAT-2 / BONE-MERGE-1 / CORE-MERGE-4, the weight after merging the list in order. The bias is never changed
    (BONE-BAT-1, BONE-MERGE-1): it is returned as given."""
    _check_weight(weight, layer)
    w = weight.to(_F64)
    for adapter in adapters:
        w = apply_adapter(w, layer, adapter)
    return w, bias


def unmerge(weight: Tensor, bias: Tensor | None, layer: Layer, adapter: Adapter) -> tuple[Tensor, Tensor | None]:
    """Unmerge one merged adapter. Plain / mini: `W ← W − T(B)` (BONE-MERGE-1, MISS-MINI-2), exact.
    BAT: `W_{p,c} ← (W_{p,c} − B[p])(I + B[p])⁻¹` in float64 (BONE-BAT-3, A-INV class); singular `I + B[p]` or a
    non-finite result → ValueError (BONE-BAT-4). The bias never changes."""
    _check_weight(weight, layer)
    _check_block(adapter, layer)
    if mode(adapter.config) == "bat":
        return tile_untransform(weight, block(adapter)), bias
    return weight.to(_F64) - delta_weight(adapter, layer), bias


# --- checkpoint conversion ---------------------------------------------------------------------------------------


def convert_bone_to_miss(state_dict: dict[str, Tensor], config: dict) -> tuple[dict, dict]:
    """MISS-CONV-1, literally: replace `".bone_"` by `".miss_"` in every tensor key (every occurrence, as
    `str.replace` does), set `peft_type` to `"MISS"`, keep every other field, add `miss_dropout: 0.0` and
    `mini_r: 1`. Tensors are passed through unchanged (bitwise equal). `config` is the adapter_config.json dict;
    one whose `peft_type` is present and not `"BONE"` is rejected with ValueError. Inputs are not modified."""
    if config.get("peft_type", "BONE") != "BONE":
        raise ValueError(f"MISS-CONV-1 converts a BONE checkpoint, got peft_type={config['peft_type']!r}")
    tensors = {key.replace(".bone_", ".miss_"): value for key, value in state_dict.items()}
    new_config = {**config, "peft_type": "MISS", "miss_dropout": 0.0, "mini_r": 1}
    return tensors, new_config


def convert_miss_to_bone(state_dict: dict[str, Tensor], config: dict) -> tuple[dict, dict]:
    """MISS-CONV-2 (optional capability `miss.to_bone`): only for `init_weights ≠ "mini"` (else ValueError naming
    `init_weights`); replace `".miss_"` by `".bone_"` in every tensor key, set `peft_type` to `"BONE"`, drop `mini_r`
    and `miss_dropout`, keep every other field; warn (UserWarning) when `miss_dropout > 0` that training-time dropout
    is dropped. A present `peft_type` other than `"MISS"` is rejected with ValueError. Inputs are not modified."""
    if config.get("peft_type", "MISS") != "MISS":
        raise ValueError(f"MISS-CONV-2 converts a MISS checkpoint, got peft_type={config['peft_type']!r}")
    if config.get("init_weights") == "mini":
        raise ValueError('init_weights="mini" has no Bone equivalent (MISS-CONV-2)')
    if config.get("miss_dropout", 0.0) > 0:
        warnings.warn(
            f"miss_dropout={config['miss_dropout']} is dropped: Bone has no training-time dropout (MISS-CONV-2)",
            UserWarning,
            stacklevel=2,
        )
    tensors = {key.replace(".miss_", ".bone_"): value for key, value in state_dict.items()}
    new_config = {k: v for k, v in config.items() if k not in ("mini_r", "miss_dropout")}
    new_config["peft_type"] = "BONE"
    return tensors, new_config
