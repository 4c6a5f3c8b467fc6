"""Golden and structural tests of the LoHa oracle (SPEC.md §6, §7.2, §7.3). Expected values come from the SPEC text
or are derived by hand; nothing here runs an implementation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from conformance.spec.layer import Adapter, Init, Layer, conv, flat, linear, op
from conformance.spec.oracles import loha

F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# helpers


def config(r: int = 8, alpha: float = 8, *, effective: bool = False, init: bool = True) -> dict:
    return {
        "r": r,
        "alpha": alpha,
        "rank_dropout": 0.0,
        "module_dropout": 0.0,
        "use_effective_conv2d": effective,
        "target_modules": None,
        "exclude_modules": None,
        "init_weights": init,
        "layers_to_transform": None,
        "layers_pattern": None,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def sample(init: Init, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if init.kind == "zeros":
        return torch.zeros(shape, dtype=F64)
    if init.kind == "uniform":
        return (2 * torch.rand(shape, dtype=F64, generator=gen) - 1) * init.bound
    raise AssertionError(init)


def draw_adapter(cfg: dict, layer: Layer, gen: torch.Generator) -> Adapter:
    """Parameters drawn from the documented init distributions (LOHA-INIT-1/2/3)."""
    shapes = loha.param_shapes(cfg, layer)
    inits = loha.init_distributions(cfg, layer)
    assert set(shapes) == set(inits)
    return Adapter(cfg, {name: sample(inits[name], shape, gen) for name, shape in shapes.items()})


def random_adapter(cfg: dict, layer: Layer, gen: torch.Generator) -> Adapter:
    """Order-one parameters (U(−1, 1)) in canonical shapes, w2b included (SPEC §8 input domain)."""
    shapes = loha.param_shapes(cfg, layer)
    return Adapter(cfg, {n: 2 * torch.rand(s, dtype=F64, generator=gen) - 1 for n, s in shapes.items()})


def base_params(layer: Layer, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = 2 * torch.rand(layer.weight_shape, dtype=F64, generator=gen) - 1
    b = 2 * torch.rand(layer.out_features, dtype=F64, generator=gen) - 1
    return w, b


def make_input(layer: Layer, gen: torch.Generator) -> torch.Tensor:
    if layer.is_conv:
        spatial = {"conv1d": (7,), "conv2d": (6, 5), "conv3d": (5, 5, 4)}[layer.kind]
        return 2 * torch.rand(2, layer.in_features, *spatial, dtype=F64, generator=gen) - 1
    return 2 * torch.rand(3, 2, layer.in_features, dtype=F64, generator=gen) - 1


def assert_n64(actual: torch.Tensor, reference: torch.Tensor) -> None:
    """⟨N⟩ single layer, float64 (§8): rtol 1e-10, atol 1e-10·S."""
    s = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
    assert actual.shape == reference.shape
    err = (actual - reference).abs()
    assert bool((err <= 1e-10 * s + 1e-10 * reference.abs()).all()), float(err.max())


LAYERS = {
    "linear": linear(10, 20),
    "hf_conv1d": linear(7, 5, "hf_conv1d"),
    "conv1d": conv("conv1d", 8, 16, 3, groups=2, padding=1),
    "conv1d_k1": conv("conv1d", 4, 6, 1),
    "conv2d": conv("conv2d", 5, 10, 3),
    "conv2d_1x1": conv("conv2d", 4, 6, 1),
    "conv2d_grouped": conv("conv2d", 6, 9, (3, 2), groups=3, stride=2, padding=1, padding_mode="reflect"),
    "conv3d": conv("conv3d", 4, 6, (1, 2, 3), groups=2, padding="same", padding_mode="replicate"),
}
MODES = [False, True]  # use_effective_conv2d


# ----------------------------------------------------------------------------------------------------------------
# structure: §6.4 worked examples, LOHA-PARAM-1/2, LOHA-COUNT-1, LOHA-LAYER-1/2


@pytest.mark.parametrize(
    ("layer", "r", "effective", "shapes", "count"),
    [
        (
            linear(10, 20),
            8,
            False,
            {"hada_w1_a": (20, 8), "hada_w1_b": (8, 10), "hada_w2_a": (20, 8), "hada_w2_b": (8, 10)},
            480,
        ),
        (
            conv("conv2d", 5, 10, 3),
            8,
            False,
            {"hada_w1_a": (10, 8), "hada_w1_b": (8, 45), "hada_w2_a": (10, 8), "hada_w2_b": (8, 45)},
            880,
        ),
        (
            conv("conv2d", 5, 10, 3),
            8,
            True,
            {
                "hada_w1_a": (8, 10),
                "hada_w1_b": (8, 5),
                "hada_w2_a": (8, 10),
                "hada_w2_b": (8, 5),
                "hada_t1": (8, 8, 3, 3),
                "hada_t2": (8, 8, 3, 3),
            },
            1392,
        ),
        (
            conv("conv1d", 8, 16, 3, groups=2),
            4,
            False,
            {"hada_w1_a": (16, 4), "hada_w1_b": (4, 12), "hada_w2_a": (16, 4), "hada_w2_b": (4, 12)},
            224,
        ),
        (
            conv("conv1d", 8, 16, 3, groups=2),
            4,
            True,
            {
                "hada_w1_a": (4, 16),
                "hada_w1_b": (4, 4),
                "hada_w2_a": (4, 16),
                "hada_w2_b": (4, 4),
                "hada_t1": (4, 4, 3, 1),
                "hada_t2": (4, 4, 3, 1),
            },
            256,
        ),
    ],
)
def test_worked_examples(layer: Layer, r: int, effective: bool, shapes: dict, count: int) -> None:
    cfg = config(r, effective=effective)
    assert loha.param_shapes(cfg, layer) == shapes
    assert loha.trainable_count(cfg, layer) == count
    assert sum(math.prod(s) for s in shapes.values()) == count


@pytest.mark.parametrize(
    ("layer", "shapes"),
    [
        (conv("conv2d", 4, 6, 1), {"a": (6, 3), "b": (3, 4)}),  # 1×1: flattened despite use_effective_conv2d
        (conv("conv1d", 4, 6, 1), {"a": (6, 3), "b": (3, 4)}),
        (conv("conv2d", 4, 6, (1, 1), groups=2), {"a": (6, 3), "b": (3, 2)}),
        (linear(4, 6), {"a": (6, 3), "b": (3, 4)}),
        (linear(4, 6, "hf_conv1d"), {"a": (6, 3), "b": (3, 4)}),
    ],
)
def test_effective_mode_needs_a_kernel_larger_than_one(layer: Layer, shapes: dict) -> None:
    """LOHA-PARAM-2: effective mode iff use_effective_conv2d and K > 1; a 1×1 / k=1 kernel silently stays
    flattened (LOHA-PARAM-1 shapes, no core)."""
    cfg = config(3, effective=True)
    assert not loha.is_effective(cfg, layer)
    expected = {"hada_w1_a": shapes["a"], "hada_w1_b": shapes["b"], "hada_w2_a": shapes["a"], "hada_w2_b": shapes["b"]}
    assert loha.param_shapes(cfg, layer) == expected
    assert loha.trainable_count(cfg, layer) == 2 * math.prod(shapes["a"]) + 2 * math.prod(shapes["b"])


def test_conv3d_effective_core() -> None:
    """LOHA-LAYER-2 (optional Conv3d): core (r, r, k1, k2, k3); count 2(r²K + r·out + r·C)."""
    layer = conv("conv3d", 6, 4, (2, 3, 1), groups=3)
    cfg = config(5, effective=True)
    assert loha.param_shapes(cfg, layer)["hada_t1"] == (5, 5, 2, 3, 1)
    assert loha.param_shapes(cfg, layer)["hada_w2_b"] == (5, 2)
    assert loha.trainable_count(cfg, layer) == 2 * (25 * 6 + 5 * 4 + 5 * 2)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("effective", MODES)
@pytest.mark.parametrize("r", [1, 3, 8])
def test_count_formula_equals_parameter_numel(name: str, effective: bool, r: int) -> None:
    layer = LAYERS[name]
    cfg = config(r, effective=effective)
    assert loha.trainable_count(cfg, layer) == sum(math.prod(s) for s in loha.param_shapes(cfg, layer).values())


def test_kinds() -> None:
    assert loha.supported_kinds(config()) == frozenset({"linear", "conv1d", "conv2d"})
    assert loha.optional_kinds(config()) == frozenset({"conv3d", "hf_conv1d"})


def test_tiny_llama_count() -> None:
    """§7.2: tiny Llama (hidden 64, intermediate 128, 2 layers), q/k/v/o/gate/up/down at r=8: 34,816."""
    hidden, inter = 64, 128
    shapes = [(hidden, hidden)] * 4 + [(hidden, inter)] * 2 + [(inter, hidden)]
    total = sum(loha.trainable_count(config(8), linear(n_in, n_out)) for _ in range(2) for n_in, n_out in shapes)
    assert total == 34816


# ----------------------------------------------------------------------------------------------------------------
# init: LOHA-INIT-1/2/3


def test_worked_example_bounds() -> None:
    """§6.4: Linear bounds at r=8, in=64: w?a 0.354, w1b 0.125; w2b zeros (LOHA-INIT-1)."""
    inits = loha.init_distributions(config(8), linear(64, 32))
    assert round(inits["hada_w1_a"].bound, 3) == 0.354 and round(inits["hada_w2_a"].bound, 3) == 0.354
    assert inits["hada_w1_a"].kind == inits["hada_w2_a"].kind == inits["hada_w1_b"].kind == "uniform"
    assert inits["hada_w1_b"].bound == 0.125
    assert inits["hada_w2_b"] == Init("zeros")
    random = loha.init_distributions(config(8, init=False), linear(64, 32))
    assert random["hada_w2_b"] == Init("uniform", 0.125)
    assert set(random) == {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}


def test_bounds_flattened_conv_and_effective() -> None:
    layer = conv("conv2d", 5, 10, 3)
    flat_inits = loha.init_distributions(config(8, init=False), layer)
    assert flat_inits["hada_w1_a"] == Init("uniform", 1 / math.sqrt(8))
    assert flat_inits["hada_w1_b"] == flat_inits["hada_w2_b"] == Init("uniform", 1 / math.sqrt(45))
    eff = loha.init_distributions(config(8, effective=True), layer)
    assert eff["hada_w1_a"] == eff["hada_w2_a"] == Init("uniform", 1 / math.sqrt(10))
    assert eff["hada_w1_b"] == Init("uniform", 1 / math.sqrt(5))
    assert eff["hada_w2_b"] == Init("zeros")
    assert eff["hada_t1"] == eff["hada_t2"] == Init("uniform", 1 / math.sqrt(72))
    eff_random = loha.init_distributions(config(8, effective=True, init=False), layer)
    assert eff_random["hada_w2_b"] == Init("uniform", 1 / math.sqrt(5))


# ----------------------------------------------------------------------------------------------------------------
# delta weight: LOHA-DELTA-1/2 — hand-computed cases


def test_hand_linear_delta() -> None:
    """r = 1, alpha = 2 (s = 2): (w1a w1b) = [[3, 4], [6, 8]], (w2a w2b) = [[1, 2], [1, 2]]
    → ΔW = [[6, 16], [12, 32]]; merge adds it, unmerge subtracts it, the bias never changes."""
    layer = linear(2, 2)
    params = {
        "hada_w1_a": torch.tensor([[1.0], [2.0]], dtype=F64),
        "hada_w1_b": torch.tensor([[3.0, 4.0]], dtype=F64),
        "hada_w2_a": torch.tensor([[1.0], [1.0]], dtype=F64),
        "hada_w2_b": torch.tensor([[1.0, 2.0]], dtype=F64),
    }
    a = Adapter(config(1, 2), params)
    assert torch.equal(loha.delta_weight(layer, a), torch.tensor([[6.0, 16.0], [12.0, 32.0]], dtype=F64))
    w = torch.ones(2, 2, dtype=F64)
    b = torch.tensor([0.5, -0.5], dtype=F64)
    w2, b2 = loha.effective(w, b, layer, [a])
    assert torch.equal(w2, torch.tensor([[7.0, 17.0], [13.0, 33.0]], dtype=F64)) and torch.equal(b2, b)
    w3, b3 = loha.unmerge(w2, b2, layer, a)
    assert torch.equal(w3, w) and torch.equal(b3, b)


def test_hand_effective_conv1d_delta() -> None:
    """Conv1d(1, 2, 3), r = 1, alpha = 1 (s = 1). P1[p, 0, κ] = t1[0, 0, κ]·w1a[0, p]·w1b[0, 0] with t1 = [1, 2, 3],
    w1a = [1, −1], w1b = [2]: rows [2, 4, 6] and [−2, −4, −6]; P2 = all ones. The trailing unit axis is dropped."""
    layer = conv("conv1d", 1, 2, 3)
    params = {
        "hada_t1": torch.tensor([1.0, 2.0, 3.0], dtype=F64).reshape(1, 1, 3, 1),
        "hada_w1_a": torch.tensor([[1.0, -1.0]], dtype=F64),
        "hada_w1_b": torch.tensor([[2.0]], dtype=F64),
        "hada_t2": torch.ones(1, 1, 3, 1, dtype=F64),
        "hada_w2_a": torch.ones(1, 2, dtype=F64),
        "hada_w2_b": torch.ones(1, 1, dtype=F64),
    }
    a = Adapter(config(1, 1, effective=True), params)
    delta = loha.delta_weight(layer, a)
    assert delta.shape == layer.weight_shape == (2, 1, 3)
    assert torch.equal(delta, torch.tensor([[[2.0, 4.0, 6.0]], [[-2.0, -4.0, -6.0]]], dtype=F64))


def test_cp_product_is_the_double_sum() -> None:
    """LOHA-DELTA-2 written as loops: P[p, q, κ] = Σ_{i,j} t[i, j, κ]·a[i, p]·b[j, q] for every kernel position."""
    gen = torch.Generator().manual_seed(1)
    r, out, c, kh, kw = 3, 4, 2, 2, 3
    t = torch.rand(r, r, kh, kw, dtype=F64, generator=gen)
    a = torch.rand(r, out, dtype=F64, generator=gen)
    b = torch.rand(r, c, dtype=F64, generator=gen)
    expected = torch.zeros(out, c, kh, kw, dtype=F64)
    for p in range(out):
        for q in range(c):
            for u in range(kh):
                for v in range(kw):
                    expected[p, q, u, v] = sum(t[i, j, u, v] * a[i, p] * b[j, q] for i in range(r) for j in range(r))
    assert_n64(loha.cp_product(t, a, b), expected)


@pytest.mark.parametrize("name", ["linear", "hf_conv1d", "conv1d", "conv2d", "conv2d_grouped", "conv3d"])
def test_flattened_delta_is_row_major_reshape(name: str) -> None:
    """LOHA-DELTA-1: ΔW_flat = s·(w1a w1b) ⊙ (w2a w2b), reshaped row-major to W's shape (explicit sum over i)."""
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(2)
    a = random_adapter(config(3, 6), layer, gen)
    p = a.params
    out, d = layer.out_features, layer.fan_in
    expected = torch.zeros(out, d, dtype=F64)
    for o in range(out):
        for k in range(d):
            left = sum(p["hada_w1_a"][o, i] * p["hada_w1_b"][i, k] for i in range(3))
            right = sum(p["hada_w2_a"][o, i] * p["hada_w2_b"][i, k] for i in range(3))
            expected[o, k] = 2.0 * left * right
    delta = loha.delta_weight(layer, a)
    assert delta.shape == layer.weight_shape
    assert_n64(flat(delta), expected)


@pytest.mark.parametrize("name", ["conv1d", "conv2d", "conv2d_grouped", "conv3d"])
def test_effective_delta_shape_and_product(name: str) -> None:
    """LOHA-DELTA-2: ΔW = s·P_1 ⊙ P_2 in W's logical shape (Conv1d: (out, C, k), the core's unit axis dropped)."""
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(3)
    a = random_adapter(config(2, 5, effective=True), layer, gen)
    p = a.params
    delta = loha.delta_weight(layer, a)
    assert delta.shape == layer.weight_shape
    p1 = loha.cp_product(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"])
    p2 = loha.cp_product(p["hada_t2"], p["hada_w2_a"], p["hada_w2_b"])
    assert_n64(delta, (2.5 * p1 * p2).reshape(layer.weight_shape))


def test_scale_is_alpha_over_r_per_module() -> None:
    layer = LAYERS["conv2d"]
    gen = torch.Generator().manual_seed(4)
    a = random_adapter(config(4, 16), layer, gen)
    unit = loha.delta_weight(layer, a, scale_value=1.0)
    assert loha.scale(a.config) == 4.0
    assert torch.equal(loha.delta_weight(layer, a), 4.0 * unit)
    b = Adapter(config(4, 3.0), a.params)  # float alpha accepted
    assert torch.equal(loha.delta_weight(layer, b), 0.75 * unit)


@st.composite
def rank_cases(draw: st.DrawFn) -> tuple[Layer, int]:
    kind = draw(st.sampled_from(["linear", "conv1d", "conv2d"]), label="kind")
    r = draw(st.integers(1, 5), label="r")
    if kind == "linear":
        return linear(draw(st.integers(1, 24), label="in"), draw(st.integers(1, 24), label="out")), r
    groups = draw(st.integers(1, 2), label="groups")
    k = draw(st.integers(1, 3), label="k")
    c = draw(st.integers(1, 3), label="C")
    m = draw(st.integers(1, 8), label="out per group")
    return conv(kind, groups * c, groups * m, k, groups=groups), r


@given(case=rank_cases(), seed=st.integers(0, 2**31 - 1))
@example(case=(linear(10, 20), 2), seed=0)
@example(case=(linear(10, 20), 8), seed=0)
@example(case=(conv("conv2d", 5, 10, 3), 2), seed=0)
def test_rank_bound(case: tuple[Layer, int], seed: int) -> None:
    """LOHA-DELTA-1: rank ΔW_flat ≤ min(r², out, D)."""
    layer, r = case
    a = random_adapter(config(r, 1), layer, torch.Generator().manual_seed(seed))
    rank = int(torch.linalg.matrix_rank(flat(loha.delta_weight(layer, a))))
    assert rank <= min(r * r, layer.out_features, layer.fan_in)


def test_rank_bound_attained_generically() -> None:
    """Linear 10→20, r = 2: rank (w1a w1b) ⊙ (w2a w2b) = 4 = r² for generic factors (rank ≤ r² is sharp)."""
    layer = linear(10, 20)
    a = random_adapter(config(2, 1), layer, torch.Generator().manual_seed(5))
    assert int(torch.linalg.matrix_rank(loha.delta_weight(layer, a))) == 4


# ----------------------------------------------------------------------------------------------------------------
# identity table §7.3, LOHA-ID-1


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("effective", MODES)
def test_identity_at_init_in_every_mode(name: str, effective: bool) -> None:
    """init_weights=True: w2b = 0 ⇒ ΔW = 0 and the output equals base(x) exactly (⟨Z⟩) in every kind and mode;
    init_weights=False: not identity."""
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(6)
    w, b = base_params(layer, gen)
    x = make_input(layer, gen)
    a = draw_adapter(config(4, 8, effective=effective), layer, gen)
    assert torch.equal(a.params["hada_w2_b"], torch.zeros_like(a.params["hada_w2_b"]))
    assert torch.equal(loha.delta_weight(layer, a), torch.zeros(layer.weight_shape, dtype=F64))
    w2, b2 = loha.effective(w, b, layer, [a])
    assert torch.equal(w2, w) and torch.equal(b2, b)
    assert torch.equal(op(x, w2, b2, layer), op(x, w, b, layer))
    random = draw_adapter(config(4, 8, effective=effective, init=False), layer, gen)
    w3, _ = loha.effective(w, b, layer, [random])
    assert not torch.equal(w3, w)
    assert not torch.allclose(op(x, w3, b, layer), op(x, w, b, layer))


def test_identity_with_w2b_zero_whatever_the_other_factors() -> None:
    """Only w2b = 0 is needed: ΔW = s·P_1 ⊙ 0 = 0 for arbitrary w1a, w1b, w2a, t1, t2."""
    for name, effective in [("conv2d", True), ("conv1d", True), ("conv3d", True), ("linear", False)]:
        layer = LAYERS[name]
        a = random_adapter(config(3, 7, effective=effective), layer, torch.Generator().manual_seed(7))
        a.params["hada_w2_b"] = torch.zeros_like(a.params["hada_w2_b"])
        assert torch.equal(loha.delta_weight(layer, a), torch.zeros(layer.weight_shape, dtype=F64))


# ----------------------------------------------------------------------------------------------------------------
# forward, composition, merge: LOHA-FWD-1, LOHA-MULTI-1, LOHA-MERGE-1


@pytest.mark.parametrize("name", list(LAYERS))
def test_forward_splits_into_base_and_delta_path(name: str) -> None:
    """LOHA-FWD-1: op(x; W + Σ ΔW_a, b) = base(x) + Σ_a op(x; ΔW_a, no bias), every conv hyper-parameter kept."""
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(8)
    w, b = base_params(layer, gen)
    x = make_input(layer, gen)
    adapters = [random_adapter(config(2, 3, effective=True), layer, gen), random_adapter(config(3, 1), layer, gen)]
    expected = op(x, w, b, layer)
    for a in adapters:
        expected = expected + op(x, loha.delta_weight(layer, a), None, layer)
    assert_n64(op(x, *loha.effective(w, b, layer, adapters), layer), expected)


@pytest.mark.parametrize("name", ["linear", "conv1d", "conv2d_grouped", "conv3d"])
def test_adapters_add_in_any_order_and_unmerge_restores(name: str) -> None:
    """LOHA-MULTI-1 (order irrelevant, own r/alpha/mode each) and LOHA-MERGE-1 (merge adds, unmerge subtracts, bias
    never changes): merge a1, a2, a3 one by one, unmerge LIFO → W within ⟨N⟩."""
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(9)
    w, b = base_params(layer, gen)
    cfgs = [config(2, 4, effective=True), config(5, 3), config(1, 1, effective=True)]
    adapters = [random_adapter(c, layer, gen) for c in cfgs]
    w_ref, b_ref = loha.effective(w, b, layer, adapters)
    assert torch.equal(b_ref, b)
    w_rev, _ = loha.effective(w, b, layer, adapters[::-1])
    assert_n64(w_rev, w_ref)
    w_m, b_m = w, b
    for a in adapters:
        w_m, b_m = loha.effective(w_m, b_m, layer, [a])
    assert_n64(w_m, w_ref)
    for a in reversed(adapters):
        w_m, b_m = loha.unmerge(w_m, b_m, layer, a)
    assert_n64(w_m, w)
    assert torch.equal(b_m, b)


# ----------------------------------------------------------------------------------------------------------------
# rank dropout: LOHA-DROP-1/2; scale_layer: LOHA-SCALE-1


def test_rank_dropout_hand() -> None:
    """ΔW[o, …]·m_o·out/Σ m: out = 4, m = [1, 0, 1, 0] → rows 0 and 2 doubled, rows 1 and 3 zero."""
    delta = torch.arange(1.0, 25.0, dtype=F64).reshape(4, 2, 3)
    got = loha.rank_dropout(delta, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    expected = delta.clone()
    expected[0] *= 2
    expected[2] *= 2
    expected[1] = 0
    expected[3] = 0
    assert torch.equal(got, expected)
    assert torch.equal(loha.rank_dropout(delta, torch.ones(4)), delta)
    third = loha.rank_dropout(delta, torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert torch.equal(third[2], 4 * delta[2]) and torch.equal(third[0], torch.zeros(2, 3, dtype=F64))


def test_rank_dropout_all_dropped_is_exactly_zero() -> None:
    """LOHA-DROP-2 ⟨Z⟩: Σ m = 0 → the adapter contributes exactly 0, finite (never NaN)."""
    delta = 2 * torch.rand(5, 3, dtype=F64, generator=torch.Generator().manual_seed(10)) - 1
    got = loha.rank_dropout(delta, torch.zeros(5))
    assert torch.equal(got, torch.zeros(5, 3, dtype=F64)) and bool(torch.isfinite(got).all())


def test_rank_dropout_is_differentiable_and_finite_when_all_dropped() -> None:
    layer = LAYERS["linear"]
    a = random_adapter(config(2, 2), layer, torch.Generator().manual_seed(11))
    a.params["hada_w1_a"].requires_grad_(True)
    loha.rank_dropout(loha.delta_weight(layer, a), torch.zeros(20)).sum().backward()
    assert torch.equal(a.params["hada_w1_a"].grad, torch.zeros(20, 2, dtype=F64))


def test_scale_operations() -> None:
    """LOHA-SCALE-1: scale_layer(f): s·f (f = 1 no-op); unscale_layer(None): alpha/r; unscale_layer(f): s/f;
    set_scale(a, f): f·alpha/r."""
    cfg = config(4, 8)  # alpha/r = 2
    assert loha.scale_after(cfg, []) == 2.0
    assert loha.scale_after(cfg, [("scale_layer", 1.0)]) == 2.0
    assert loha.scale_after(cfg, [("scale_layer", 3.0)]) == 6.0
    assert loha.scale_after(cfg, [("scale_layer", 3.0), ("scale_layer", 0.5)]) == 3.0
    assert loha.scale_after(cfg, [("scale_layer", 3.0), ("unscale_layer", None)]) == 2.0
    assert loha.scale_after(cfg, [("scale_layer", 3.0), ("unscale_layer", 2.0)]) == 3.0
    assert loha.scale_after(cfg, [("scale_layer", 3.0), ("set_scale", 0.25)]) == 0.5
    with pytest.raises(ValueError):
        loha.scale_after(cfg, [("rescale", 2.0)])


# ----------------------------------------------------------------------------------------------------------------
# gradients: LOHA-GRAD-1 (the oracle is the ⟨G⟩ reference)


@pytest.mark.parametrize(("name", "effective"), [("linear", False), ("conv2d", True), ("conv1d", True)])
def test_oracle_is_differentiable(name: str, effective: bool) -> None:
    layer = LAYERS[name]
    gen = torch.Generator().manual_seed(12)
    w, b = base_params(layer, gen)
    x = make_input(layer, gen).requires_grad_(True)
    cfg = config(2, 3, effective=effective)
    a = random_adapter(cfg, layer, gen)
    names = sorted(a.params)
    leaves = [a.params[n].requires_grad_(True) for n in names]

    def f(x: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        adapter = Adapter(cfg, dict(zip(names, tensors, strict=True)))
        return op(x, *loha.effective(w, b, layer, [adapter]), layer)

    assert torch.autograd.gradcheck(f, (x, *leaves), eps=1e-6, atol=1e-5, rtol=1e-3)
