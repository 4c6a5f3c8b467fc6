"""Golden and structural tests of the IA3 oracle (SPEC.md §5, §7.2, §7.3, §8). Expected values come from the SPEC
text or are derived by hand; nothing here runs an implementation."""

from __future__ import annotations

import itertools
import zlib

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from conformance.spec.layer import Adapter, Init, Layer, conv, linear, op
from conformance.spec.oracles import ia3

F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# helpers


def config(feedforward: bool, init: bool = True) -> dict:
    return {
        "target_modules": None,
        "exclude_modules": None,
        "feedforward_modules": None,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_ia3_weights": init,
        "feedforward": feedforward,
    }


def sample(init: Init, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if init.kind == "ones":
        return torch.ones(shape, dtype=F64)
    if init.kind == "normal":
        return torch.randn(shape, dtype=F64, generator=gen)
    raise AssertionError(init)


def adapter(layer: Layer, feedforward: bool, gen: torch.Generator, *, init: bool = False, low: float = 0.1) -> Adapter:
    """An adapter whose vector is drawn with |l| in [low, 2] and a random sign (SPEC §8 input domain), or the
    documented init when `init=True`."""
    cfg = config(feedforward, init)
    shape = ia3.param_shapes(cfg, layer)["ia3_l"]
    if init:
        values = sample(ia3.init_distributions(cfg, layer)["ia3_l"], shape, gen)
    else:
        mag = low + (2 - low) * torch.rand(shape, dtype=F64, generator=gen)
        sign = torch.where(torch.rand(shape, dtype=F64, generator=gen) < 0.5, -1.0, 1.0).to(F64)
        values = mag * sign
    return Adapter(cfg, {"ia3_l": values})


def with_vector(layer: Layer, feedforward: bool, values: list[float] | torch.Tensor) -> Adapter:
    cfg = config(feedforward)
    shape = ia3.param_shapes(cfg, layer)["ia3_l"]
    return Adapter(cfg, {"ia3_l": torch.as_tensor(values, dtype=F64).reshape(shape)})


def base_params(layer: Layer, gen: torch.Generator, bias: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = 2 * torch.rand(layer.weight_shape, dtype=F64, generator=gen) - 1
    b = 2 * torch.rand(layer.out_features, dtype=F64, generator=gen) - 1 if bias else None
    return w, b


def make_input(layer: Layer, gen: torch.Generator) -> torch.Tensor:
    if layer.is_conv:
        spatial = {"conv1d": (7,), "conv2d": (6, 5), "conv3d": (5, 5, 4)}[layer.kind]
        return 2 * torch.rand(2, layer.in_features, *spatial, dtype=F64, generator=gen) - 1
    return 2 * torch.rand(3, 2, layer.in_features, dtype=F64, generator=gen) - 1


def channel_scale(t: torch.Tensor, vec: torch.Tensor, layer: Layer) -> torch.Tensor:
    """`vec ⊙ t` along the feature axis (last for linear kinds) or the channel axis (1 for convolutions)."""
    if layer.is_conv:
        return t * vec.reshape(1, -1, *([1] * (t.dim() - 2)))
    return t * vec


def assert_n64(actual: torch.Tensor, reference: torch.Tensor) -> None:
    """⟨N⟩ single layer, float64 (§8): rtol 1e-10, atol 1e-10·S."""
    s = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
    assert actual.shape == reference.shape
    err = (actual - reference).abs()
    assert bool((err <= 1e-10 * s + 1e-10 * reference.abs()).all()), float(err.max())


LAYERS = {
    "linear": linear(10, 20),
    "hf_conv1d": linear(10, 20, "hf_conv1d"),
    "conv1d": conv("conv1d", 4, 6, 3, padding=1),
    "conv1d_grouped": conv("conv1d", 6, 4, 3, groups=2, padding_mode="circular", padding=1),
    "conv2d": conv("conv2d", 5, 10, 3),
    "conv2d_grouped": conv("conv2d", 6, 9, (3, 2), groups=3, stride=2, padding=1, padding_mode="reflect"),
    "conv2d_depthwise": conv("conv2d", 4, 8, 3, groups=4, padding="same", dilation=2),
    "conv3d": conv("conv3d", 5, 10, 3),
    "conv3d_grouped": conv("conv3d", 4, 6, (1, 2, 3), groups=2, padding="same", padding_mode="replicate"),
}


# ----------------------------------------------------------------------------------------------------------------
# structure: SPEC §5.5 worked examples, IA3-PARAM-1, IA3-COUNT-1, IA3-INIT-1/2, IA3-LAYER-1/2


@pytest.mark.parametrize(
    ("layer", "feedforward", "shape", "count"),
    [
        (linear(10, 20), False, (20, 1), 20),
        (linear(10, 20), True, (1, 10), 10),
        (linear(10, 20, "hf_conv1d"), False, (20, 1), 20),
        (linear(10, 20, "hf_conv1d"), True, (1, 10), 10),
        (conv("conv2d", 5, 10, 3), False, (1, 10, 1, 1), 10),
        (conv("conv2d", 5, 10, 3), True, (1, 5, 1, 1), 5),
        (conv("conv3d", 5, 10, 3), False, (1, 10, 1, 1, 1), 10),
        (conv("conv3d", 5, 10, 3), True, (1, 5, 1, 1, 1), 5),
        (conv("conv1d", 5, 10, 3), False, (1, 10, 1), 10),
        (conv("conv1d", 5, 10, 3), True, (1, 5, 1), 5),
        (conv("conv2d", 6, 4, 3, groups=2), True, (1, 6, 1, 1), 6),
    ],
)
def test_worked_examples_shapes_and_counts(layer: Layer, feedforward: bool, shape: tuple, count: int) -> None:
    cfg = config(feedforward)
    assert ia3.param_shapes(cfg, layer) == {"ia3_l": shape}
    assert ia3.trainable_count(cfg, layer) == count
    assert torch.Size(shape).numel() == count


def test_kinds() -> None:
    assert ia3.supported_kinds(config(False)) == frozenset({"linear", "hf_conv1d", "conv2d", "conv3d"})
    assert ia3.optional_kinds(config(False)) == frozenset({"conv1d"})


def test_init_distributions() -> None:
    layer = linear(10, 20)
    assert ia3.init_distributions(config(False, True), layer) == {"ia3_l": Init("ones")}
    assert ia3.init_distributions(config(True, False), layer) == {"ia3_l": Init("normal")}


def test_tiny_llama_count() -> None:
    """§7.2: tiny Llama (hidden 64, intermediate 128, 2 layers, 4 heads and 4 KV heads), targets q/k/v/o/gate/up/down,
    down_proj feedforward: 1,280."""
    hidden, inter = 64, 128
    shapes = {
        "q_proj": (hidden, hidden),
        "k_proj": (hidden, hidden),
        "v_proj": (hidden, hidden),
        "o_proj": (hidden, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    total = 0
    for _ in range(2):
        for name, (n_in, n_out) in shapes.items():
            total += ia3.trainable_count(config(name == "down_proj"), linear(n_in, n_out))
    assert total == 1280


def test_vector_of_wrong_size_rejected() -> None:
    layer = linear(3, 4)
    bad = Adapter(config(False), {"ia3_l": torch.ones(3, 1, dtype=F64)})
    with pytest.raises(ValueError, match="ia3_l"):
        ia3.effective(torch.zeros(4, 3, dtype=F64), None, layer, [bad])


# ----------------------------------------------------------------------------------------------------------------
# equivalent weights: IA3-FWD-1/2/3, IA3-MULTI-1 — hand-computed cases


def test_hand_linear_non_feedforward_scales_rows_and_bias() -> None:
    layer = linear(2, 3)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=F64)
    b = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    w2, b2 = ia3.effective(w, b, layer, [with_vector(layer, False, [2.0, 3.0, 4.0])])
    assert torch.equal(w2, torch.tensor([[2.0, 4.0], [9.0, 12.0], [20.0, 24.0]], dtype=F64))
    assert torch.equal(b2, torch.tensor([2.0, 3.0, 4.0], dtype=F64))


def test_hand_linear_feedforward_scales_columns_not_bias() -> None:
    layer = linear(2, 3)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=F64)
    b = torch.tensor([1.0, -1.0, 0.5], dtype=F64)
    w2, b2 = ia3.effective(w, b, layer, [with_vector(layer, True, [10.0, 100.0])])
    assert torch.equal(w2, torch.tensor([[10.0, 200.0], [30.0, 400.0], [50.0, 600.0]], dtype=F64))
    assert torch.equal(b2, b)


def test_hand_mixed_adapters() -> None:
    """IA3-MULTI-1: W′ = diag(l_out) W diag(l_ff), b′ = l_out ⊙ b; two vectors of one kind multiply."""
    layer = linear(2, 2)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    b = torch.tensor([1.0, 2.0], dtype=F64)
    adapters = [
        with_vector(layer, True, [2.0, 3.0]),
        with_vector(layer, False, [5.0, 7.0]),
        with_vector(layer, True, [0.5, 2.0]),
    ]
    w2, b2 = ia3.effective(w, b, layer, adapters)
    # l_ff = [1, 6], l_out = [5, 7]
    assert torch.equal(w2, torch.tensor([[5.0, 60.0], [21.0, 168.0]], dtype=F64))
    assert torch.equal(b2, torch.tensor([5.0, 14.0], dtype=F64))


def test_grouped_index_map() -> None:
    """IA3-FWD-3: idx[o, c] = g(o)·C + c, C = in/groups, g(o) = ⌊o/(out/groups)⌋."""
    assert ia3.input_index(conv("conv2d", 4, 4, 1, groups=2)).tolist() == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert ia3.input_index(conv("conv2d", 6, 2, 1, groups=2)).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert ia3.input_index(conv("conv1d", 3, 6, 1, groups=3)).tolist() == [[0], [0], [1], [1], [2], [2]]
    assert ia3.input_index(linear(3, 2)).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_hand_grouped_conv_feedforward() -> None:
    """Conv2d(4, 2, 1, groups=2): C = 2, g(o) = o, so W′[o, c] = W[o, c]·l[2o + c]."""
    layer = conv("conv2d", 4, 2, 1, groups=2)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64).reshape(2, 2, 1, 1)
    w2, b2 = ia3.effective(w, None, layer, [with_vector(layer, True, [1.0, 10.0, 100.0, 1000.0])])
    assert b2 is None
    assert torch.equal(w2.reshape(-1), torch.tensor([1.0, 20.0, 300.0, 4000.0], dtype=F64))


def test_hand_conv_non_feedforward_scales_whole_filters() -> None:
    layer = conv("conv2d", 1, 2, 2)
    w = torch.arange(1.0, 9.0, dtype=F64).reshape(2, 1, 2, 2)
    w2, b2 = ia3.effective(w, torch.tensor([1.0, 1.0], dtype=F64), layer, [with_vector(layer, False, [2.0, -1.0])])
    assert torch.equal(
        w2, torch.tensor([[2.0, 4.0, 6.0, 8.0], [-5.0, -6.0, -7.0, -8.0]], dtype=F64).reshape(2, 1, 2, 2)
    )
    assert torch.equal(b2, torch.tensor([2.0, -1.0], dtype=F64))


# ----------------------------------------------------------------------------------------------------------------
# equivalent weights = the forward definitions (FWD-1/2 are stated on outputs, FWD-3 on weights)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("mode", ["out", "ff", "mixed"])
def test_effective_weights_reproduce_forward_definition(name: str, mode: str) -> None:
    """IA3-FWD-1 (y = l ⊙ base(x)), IA3-FWD-2 (y = base(l ⊙ x)) and IA3-MULTI-1 (y = l_out ⊙ base(l_ff ⊙ x)) equal
    op(x; W′, b′) with IA3-FWD-3's W′, b′ — for every layer kind, groups, stride, padding, dilation and
    padding_mode."""
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}/{mode}".encode()))
    w, b = base_params(layer, gen)
    x = make_input(layer, gen)
    flags = {"out": [False, False], "ff": [True, True], "mixed": [True, False, True, False]}[mode]
    adapters = [adapter(layer, f, gen) for f in flags]
    l_out = torch.ones(layer.out_features, dtype=F64)
    l_ff = torch.ones(layer.in_features, dtype=F64)
    for a in adapters:
        vec = a.params["ia3_l"].reshape(-1)
        if a.config["feedforward"]:
            l_ff = l_ff * vec
        else:
            l_out = l_out * vec
    expected = channel_scale(op(channel_scale(x, l_ff, layer), w, b, layer), l_out, layer)
    assert_n64(op(x, *ia3.effective(w, b, layer, adapters), layer), expected)


@st.composite
def conv_layers(draw: st.DrawFn) -> Layer:
    kind = draw(st.sampled_from(["conv1d", "conv2d", "conv3d"]), label="kind")
    groups = draw(st.integers(1, 3), label="groups")
    c = draw(st.integers(1, 3), label="C")
    m = draw(st.integers(1, 3), label="out per group")
    dims = {"conv1d": 1, "conv2d": 2, "conv3d": 3}[kind]
    kernel = tuple(draw(st.integers(1, 3), label="k") for _ in range(dims))
    padding_mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]), label="padding_mode")
    same = draw(st.booleans(), label="same")
    stride = 1 if same else draw(st.integers(1, 2), label="stride")
    dilation = draw(st.integers(1, 2), label="dilation")
    padding = "same" if same else draw(st.integers(0, 1), label="padding")
    return conv(
        kind,
        groups * c,
        groups * m,
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
    )


@given(layer=conv_layers(), seed=st.integers(0, 2**31 - 1), flags=st.lists(st.booleans(), min_size=1, max_size=3))
@example(layer=conv("conv2d", 1, 1, 1), seed=0, flags=[True])
@example(layer=conv("conv1d", 6, 6, 1, groups=6), seed=1, flags=[True, False])
def test_effective_matches_forward_definition_drawn(layer: Layer, seed: int, flags: list[bool]) -> None:
    gen = torch.Generator().manual_seed(seed)
    w, b = base_params(layer, gen)
    x = make_input(layer, gen)
    adapters = [adapter(layer, f, gen) for f in flags]
    l_out, l_ff = ia3.products(layer, adapters)
    expected = channel_scale(op(channel_scale(x, l_ff, layer), w, b, layer), l_out, layer)
    assert_n64(op(x, *ia3.effective(w, b, layer, adapters), layer), expected)


# ----------------------------------------------------------------------------------------------------------------
# composition and merge order: IA3-MULTI-1, IA3-MERGE-1


@pytest.mark.parametrize("name", ["linear", "conv2d_grouped", "conv3d_grouped"])
def test_vectors_commute_and_sequential_merge_equals_effective(name: str) -> None:
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(7)
    w, b = base_params(layer, gen)
    adapters = [adapter(layer, f, gen) for f in (True, False, True)]
    w_ref, b_ref = ia3.effective(w, b, layer, adapters)
    for perm in itertools.permutations(adapters):
        w_p, b_p = ia3.effective(w, b, layer, list(perm))
        assert_n64(w_p, w_ref)
        assert_n64(b_p, b_ref)
    w_seq, b_seq = w, b
    for a in adapters:  # IA3-MERGE-1: merge one by one in merge order
        w_seq, b_seq = ia3.effective(w_seq, b_seq, layer, [a])
    assert_n64(w_seq, w_ref)
    assert_n64(b_seq, b_ref)


def test_no_adapter_is_base() -> None:
    layer = LAYERS["conv2d"]
    w, b = base_params(layer, torch.Generator().manual_seed(0))
    w2, b2 = ia3.effective(w, b, layer, [])
    assert torch.equal(w2, w) and torch.equal(b2, b)


# ----------------------------------------------------------------------------------------------------------------
# identity table §7.3, IA3-ID-1


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("feedforward", [False, True])
def test_identity_at_init(name: str, feedforward: bool) -> None:
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(3)
    w, b = base_params(layer, gen)
    x = make_input(layer, gen)
    identity = adapter(layer, feedforward, gen, init=True)
    assert torch.equal(
        identity.params["ia3_l"], torch.ones(ia3.param_shapes(identity.config, layer)["ia3_l"], dtype=F64)
    )
    w2, b2 = ia3.effective(w, b, layer, [identity])
    assert torch.equal(w2, w) and torch.equal(b2, b)
    assert torch.equal(op(x, w2, b2, layer), op(x, w, b, layer))
    random = adapter(layer, feedforward, gen, init=False)
    random.params["ia3_l"] = sample(Init("normal"), random.params["ia3_l"].shape, gen)
    w3, _ = ia3.effective(w, b, layer, [random])
    assert not torch.equal(w3, w)
    assert not torch.allclose(op(x, w3, b, layer), op(x, w, b, layer))


# ----------------------------------------------------------------------------------------------------------------
# unmerge: IA3-MERGE-2, IA3-MERGE-4, IA3-MERGE-5 case, §8 ⟨A⟩ bound


@pytest.mark.parametrize("name", ["linear", "conv2d", "conv2d_grouped"])
@pytest.mark.parametrize("feedforward", [False, True])
def test_unmerge_ratio_golden(name: str, feedforward: bool) -> None:
    """§5.5: unmerge in float64 with l = 0.5: W_rec / W = 0.5/(0.5 + 1e-8) = 1 − 2·10⁻⁸ (to first order; the exact
    value 1/(1 + 2·10⁻⁸) differs by 4·10⁻¹⁶)."""
    layer = LAYERS[name]
    w, b = base_params(layer, torch.Generator().manual_seed(11))
    a = with_vector(layer, feedforward, torch.full((ia3.trainable_count(config(feedforward), layer),), 0.5))
    merged = ia3.effective(w, b, layer, [a])
    w_rec, b_rec = ia3.unmerge(*merged, layer, a)
    assert ((w_rec / w) - (1 - 2e-8)).abs().max() < 1e-15
    assert ((w_rec / w) - 1 / (1 + 2e-8)).abs().max() < 1e-15
    if feedforward:
        assert torch.equal(b_rec, b)  # the bias is neither scaled nor divided
    else:
        assert ((b_rec / b) - (1 - 2e-8)).abs().max() < 1e-15


@pytest.mark.parametrize("vector_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_unmerge_shift_vanishes_in_float32(vector_dtype: torch.dtype) -> None:
    """IA3-MERGE-2: with a half-precision vector the shift and division are computed in float32 (float32 vector: in
    float32), where l + 1e-8 rounds to l for |l| > 0.25: with l = 0.5 the weight is restored exactly."""
    layer = LAYERS["linear"]
    w, b = base_params(layer, torch.Generator().manual_seed(12))
    for feedforward in (False, True):
        a = with_vector(layer, feedforward, torch.full((ia3.trainable_count(config(feedforward), layer),), 0.5))
        w_rec, b_rec = ia3.unmerge(*ia3.effective(w, b, layer, [a]), layer, a, vector_dtype=vector_dtype)
        assert torch.equal(w_rec, w) and torch.equal(b_rec, b)
    vec = torch.tensor([0.5, -0.375, 1.5, 0.1, 0.2, -0.2], dtype=torch.float32).to(F64)
    d32 = ia3.shifted(vec, torch.float32)
    assert torch.equal(d32[:3], vec[:3])  # |l| > 0.25: the shift rounds away
    assert bool((d32[3:] != vec[3:]).all())  # |l| < 0.25: a float32 ulp is below 2e-8, part of the shift survives
    assert torch.equal(ia3.shifted(vec, torch.float16), d32)
    assert torch.equal(ia3.shifted(vec, torch.bfloat16), d32)
    assert torch.equal(ia3.shifted(vec, F64), vec + 1e-8)


@pytest.mark.parametrize("name", ["linear", "hf_conv1d", "conv1d_grouped", "conv2d_grouped", "conv3d_grouped"])
def test_unmerge_lifo_round_trip_within_bound(name: str) -> None:
    """CORE-MERGE-6 / IA3-MERGE-2 and §8 ⟨A⟩: merge a1, a2, a3 (mixed), unmerge LIFO:
    |W_rec − W| ≤ |W|·Σ_a 1e-8/|l_a + 1e-8| plus ⟨N⟩; likewise b."""
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(13)
    w, b = base_params(layer, gen)
    adapters = [adapter(layer, f, gen) for f in (False, True, False)]
    w_m, b_m = w, b
    for a in adapters:
        w_m, b_m = ia3.effective(w_m, b_m, layer, [a])
    for a in reversed(adapters):
        w_m, b_m = ia3.unmerge(w_m, b_m, layer, a)
    w_bound, b_bound = ia3.unmerge_bound(w, b, layer, adapters)
    s_w = max(1.0, float(w.abs().max()))
    s_b = max(1.0, float(b.abs().max()))
    assert bool(((w_m - w).abs() <= w_bound + 1e-10 * s_w + 1e-10 * w.abs()).all())
    assert bool(((b_m - b).abs() <= b_bound + 1e-10 * s_b + 1e-10 * b.abs()).all())
    assert not torch.equal(w_m, w)  # approximate by design


@pytest.mark.parametrize("name", ["linear", "conv2d_grouped"])
@pytest.mark.parametrize("feedforward", [False, True])
def test_unmerge_bound_is_the_exact_error_of_one_adapter(name: str, feedforward: bool) -> None:
    """For one adapter, W_rec − W = −W·1e-8/(l + 1e-8) exactly, so §8's bound is attained (up to rounding)."""
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(14)
    w, b = base_params(layer, gen)
    a = adapter(layer, feedforward, gen)
    w_rec, b_rec = ia3.unmerge(*ia3.effective(w, b, layer, [a]), layer, a)
    w_bound, b_bound = ia3.unmerge_bound(w, b, layer, [a])
    assert bool(((w_rec - w).abs() - w_bound).abs().max() < 1e-15)
    if feedforward:
        assert torch.equal(b_bound, torch.zeros_like(b))
        assert torch.equal(b_rec, b)
    else:
        assert bool(((b_rec - b).abs() - b_bound).abs().max() < 1e-15)


def test_unmerge_non_feedforward_divides_rows_feedforward_grouped_columns() -> None:
    """IA3-MERGE-2 broadcasting (hand case): Conv2d(4, 2, 1, groups=2), feedforward l = [1, 2, 4, 8]: W[o, c] is
    divided by l[2o + c] + 1e-8; the bias is untouched."""
    layer = conv("conv2d", 4, 2, 1, groups=2)
    w = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=F64).reshape(2, 2, 1, 1)
    b = torch.tensor([3.0, 5.0], dtype=F64)
    a = with_vector(layer, True, [1.0, 2.0, 4.0, 8.0])
    w_rec, b_rec = ia3.unmerge(w, b, layer, a)
    expected = torch.tensor([1 / (1 + 1e-8), 2 / (2 + 1e-8), 4 / (4 + 1e-8), 8 / (8 + 1e-8)], dtype=F64)
    assert torch.equal(w_rec.reshape(-1), expected)
    assert torch.equal(b_rec, b)


def test_unmerge_non_feedforward_hand() -> None:
    layer = linear(2, 2)
    w = torch.tensor([[1.0, 2.0], [4.0, 8.0]], dtype=F64)
    b = torch.tensor([3.0, 5.0], dtype=F64)
    a = with_vector(layer, False, [2.0, 4.0])
    w_rec, b_rec = ia3.unmerge(w, b, layer, a)
    d = torch.tensor([2.0 + 1e-8, 4.0 + 1e-8], dtype=F64)
    assert torch.equal(w_rec, torch.stack([w[0] / d[0], w[1] / d[1]]))
    assert torch.equal(b_rec, b / d)


@pytest.mark.parametrize("feedforward", [False, True])
def test_zero_entries_stay_zero(feedforward: bool) -> None:
    """IA3-MERGE-4 ⟨Z⟩: entries scaled by l = 0 are 0 after merging and stay 0 after unmerging."""
    layer = conv("conv2d", 4, 4, 2, groups=2)
    gen = torch.Generator().manual_seed(15)
    w, b = base_params(layer, gen)
    values = torch.tensor([0.0, 1.5, 0.0, -0.7], dtype=F64)
    a = with_vector(layer, feedforward, values)
    w_m, b_m = ia3.effective(w, b, layer, [a])
    w_rec, b_rec = ia3.unmerge(w_m, b_m, layer, a)
    if feedforward:
        zero = (ia3.input_index(layer) % 2 == 0).reshape(4, 2, 1, 1).expand_as(w)  # input channels 0 and 2
    else:
        zero = (values == 0).reshape(4, 1, 1, 1).expand_as(w)
        assert torch.equal(b_m[values == 0], torch.zeros(2, dtype=F64))
        assert torch.equal(b_rec[values == 0], torch.zeros(2, dtype=F64))
    assert torch.equal(w_m[zero], torch.zeros(int(zero.sum()), dtype=F64))
    assert torch.equal(w_rec[zero], torch.zeros(int(zero.sum()), dtype=F64))
    assert bool((w_rec[~zero] != 0).all())


def test_shift_cancelling_entry_is_non_finite() -> None:
    """IA3-MERGE-5's case: an entry l = −1e-8 makes the divisor 0; the oracle's value is non-finite (an
    implementation must raise or warn instead of producing it silently)."""
    layer = linear(2, 2)
    w = torch.ones(2, 2, dtype=F64)
    a = with_vector(layer, False, [-1e-8, 1.0])
    w_rec, _ = ia3.unmerge(w, None, layer, a)
    assert not bool(torch.isfinite(w_rec[0]).any()) and bool(torch.isfinite(w_rec[1]).all())


# ----------------------------------------------------------------------------------------------------------------
# gradients (the oracle is the ⟨G⟩ reference)


@pytest.mark.parametrize("name", ["linear", "conv2d_grouped"])
def test_oracle_is_differentiable(name: str) -> None:
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(16)
    w, b = base_params(layer, gen)
    x = make_input(layer, gen).requires_grad_(True)
    l_ff = adapter(layer, True, gen).params["ia3_l"].requires_grad_(True)
    l_out = adapter(layer, False, gen).params["ia3_l"].requires_grad_(True)

    def f(x: torch.Tensor, l_ff: torch.Tensor, l_out: torch.Tensor) -> torch.Tensor:
        adapters = [Adapter(config(True), {"ia3_l": l_ff}), Adapter(config(False), {"ia3_l": l_out})]
        return op(x, *ia3.effective(w, b, layer, adapters), layer)

    assert torch.autograd.gradcheck(f, (x, l_ff, l_out), eps=1e-6, atol=1e-5, rtol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# add_weighted_adapter: IA3-WADD-1


def test_weighted_vector_is_a_sum() -> None:
    l1 = torch.tensor([1.0, 2.0], dtype=F64)
    l2 = torch.tensor([3.0, 5.0], dtype=F64)
    assert torch.equal(ia3.weighted_vector([l1, l2], [0.5, 2.0]), torch.tensor([6.5, 11.0], dtype=F64))


def test_weighted_modules() -> None:
    assert ia3.weighted_modules([{"q", "v"}, ["v", "down"]]) == {"q", "v", "down"}
    assert ia3.weighted_modules(["q|v", ".*down"]) == "(q|v)|(.*down)"
    with pytest.raises(ValueError):
        ia3.weighted_modules([{"q"}, "v"])


def test_weighted_adapter_on_a_layer() -> None:
    layer = linear(2, 3)
    a1 = with_vector(layer, True, [1.0, 2.0])
    a2 = with_vector(layer, True, [3.0, 5.0])
    combined = ia3.weighted_adapter([a1, a2], [0.5, 2.0], layer)
    assert combined.config["feedforward"] is True
    assert torch.equal(combined.params["ia3_l"], torch.tensor([[6.5, 11.0]], dtype=F64))
    with pytest.raises(ValueError):
        ia3.weighted_adapter([a1, with_vector(layer, False, [1.0, 1.0, 1.0])], [1.0, 1.0], layer)
