"""Golden and property tests of the GraLoRA oracle (SPEC.md §3, §7.2, §7.3). Expected values come from SPEC text or
hand derivation, never from an implementation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from conformance.spec.layer import Adapter, Init, Layer
from conformance.spec.oracles import gralora

A, B, A_GEN, B_GEN = gralora.A, gralora.B, gralora.A_GENERAL, gralora.B_GENERAL
LINEAR_10_20 = Layer("linear", 10, 20)


def config(**fields) -> dict:
    """A canonical GraLoRA config dict: §3.1's table with its defaults, overridden by `fields`."""
    base = dict(
        r=32,
        hybrid_r=0,
        target_modules=None,
        alpha=64,
        gralora_dropout=0.0,
        gralora_k=2,
        fan_in_fan_out=False,
        bias="none",
        modules_to_save=None,
        init_weights=True,
        layers_to_transform=None,
        layers_pattern=None,
    )
    return base | fields


def random_params(cfg: dict, layer: Layer, seed: int) -> dict[str, torch.Tensor]:
    """Every parameter i.i.d. U(−1, 1) in float64 (§8's input domain), from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    shapes = gralora.param_shapes(cfg, layer)
    return {name: torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1 for name, shape in shapes.items()}


def assert_n(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """⟨N⟩ float64 single layer (§8): rtol 1e-10, atol 1e-10·S."""
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10 * scale)


def einsum_delta(cfg: dict, layer: Layer, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """GRALORA-FWD-2 restated by tensor reshapes (independent of the oracle's loops): with A viewed as
    [n, i, j, t] and B as [j, n, t, o], ΔW viewed as [j, o, n, i] = σ Σ_t A[n, i, j, t] B[j, n, t, o]."""
    n_blocks, r = cfg["gralora_k"], cfg["r"]
    rho, d_in, d_out = r // n_blocks, layer.in_features, layer.out_features
    a = params[A].reshape(n_blocks, d_in // n_blocks, n_blocks, rho)
    b = params[B].reshape(n_blocks, n_blocks, rho, d_out // n_blocks)
    delta = gralora.scaling(cfg) * torch.einsum("nijt,jnto->joni", a, b).reshape(d_out, d_in)
    if cfg["hybrid_r"] > 0:
        delta = delta + gralora.scaling(cfg) * params[B_GEN] @ params[A_GEN]
    return delta


# §3.5 worked examples (Linear 10→20) ------------------------------------------------------------------------------

WORKED_ROWS = [
    (dict(r=4, gralora_k=2), {A: (2, 5, 4), B: (2, 4, 10)}, 120),
    (dict(r=4, gralora_k=2, hybrid_r=2), {A: (2, 5, 4), B: (2, 4, 10), A_GEN: (2, 10), B_GEN: (20, 2)}, 180),
    (dict(), {A: (2, 5, 32), B: (2, 32, 10)}, 960),
    (dict(r=12, gralora_k=2, hybrid_r=0), {A: (2, 5, 12), B: (2, 12, 10)}, 360),
    (dict(r=10, gralora_k=2, hybrid_r=2), {A: (2, 5, 10), B: (2, 10, 10), A_GEN: (2, 10), B_GEN: (20, 2)}, 360),
    (dict(r=10, gralora_k=5, hybrid_r=2), {A: (5, 2, 10), B: (5, 10, 4), A_GEN: (2, 10), B_GEN: (20, 2)}, 360),
]


@pytest.mark.parametrize(("fields", "shapes", "count"), WORKED_ROWS)
def test_worked_example_shapes_and_counts(fields, shapes, count):
    cfg = config(**fields)
    assert gralora.param_shapes(cfg, LINEAR_10_20) == shapes
    assert gralora.trainable_count(cfg, LINEAR_10_20) == count
    assert sum(math.prod(s) for s in shapes.values()) == count  # the formula agrees with the shapes


def test_scaling_default_is_two_and_counts_hybrid_rank():
    assert gralora.scaling(config()) == 2.0  # 64 / 32, GRALORA-PARAM-2
    assert gralora.scaling(config(r=4, hybrid_r=2, alpha=3)) == 0.5  # α / (r + h), not α / r


def test_block_example():
    """§3.5: N=2, r=4 (ρ=2): the block for output chunk 1, input chunk 0 is σ (A_0[:, 2:4] · B_1[0:2, :])ᵀ."""
    cfg = config(r=4, gralora_k=2, alpha=3)
    params = random_params(cfg, LINEAR_10_20, seed=0)
    delta = gralora.delta_weight(cfg, LINEAR_10_20, params)
    expected = gralora.scaling(cfg) * (params[A][0][:, 2:4] @ params[B][1][0:2, :]).T
    assert_n(delta[10:20, 0:5], expected)


@pytest.mark.parametrize(
    ("d_in", "d_out", "n_blocks", "r", "h"), [(10, 20, 2, 4, 0), (12, 6, 3, 6, 2), (8, 8, 4, 4, 1)]
)
def test_every_block_is_the_product_of_its_slices(d_in, d_out, n_blocks, r, h):
    """Hand derivation from GRALORA-FWD-2: block (j, n) = σ (A_n[:, jρ:(j+1)ρ] B_j[nρ:(n+1)ρ, :])ᵀ + hybrid block."""
    layer, cfg = Layer("linear", d_in, d_out), config(r=r, gralora_k=n_blocks, hybrid_r=h, alpha=5)
    params = random_params(cfg, layer, seed=1)
    delta, sigma, rho = gralora.delta_weight(cfg, layer, params), gralora.scaling(cfg), r // n_blocks
    ci, co = d_in // n_blocks, d_out // n_blocks
    hybrid = sigma * params[B_GEN] @ params[A_GEN] if h else torch.zeros(d_out, d_in, dtype=torch.float64)
    for j, n in itertools.product(range(n_blocks), repeat=2):
        block = sigma * (params[A][n][:, j * rho : (j + 1) * rho] @ params[B][j][n * rho : (n + 1) * rho, :]).T
        rows, cols = slice(j * co, (j + 1) * co), slice(n * ci, (n + 1) * ci)
        assert_n(delta[rows, cols], block + hybrid[rows, cols])


def test_delta_weight_entrywise_by_scalar_loops():
    """GRALORA-FWD-2 evaluated entry by entry with Python scalars (in=4, out=6, N=2, r=2, h=1, α=6: σ = 2)."""
    layer, cfg = Layer("linear", 4, 6), config(r=2, gralora_k=2, hybrid_r=1, alpha=6)
    params = random_params(cfg, layer, seed=2)
    a, b, a_gen, b_gen = (params[k].tolist() for k in (A, B, A_GEN, B_GEN))
    sigma, n_blocks, rho, ci, co = 2.0, 2, 1, 2, 3
    expected = [[0.0] * 4 for _ in range(6)]
    for j, n, o, i in itertools.product(range(n_blocks), range(n_blocks), range(co), range(ci)):
        value = sum(a[n][i][j * rho + t] * b[j][n * rho + t][o] for t in range(rho))
        expected[j * co + o][n * ci + i] = sigma * (value + b_gen[j * co + o][0] * a_gen[0][n * ci + i])
    assert_n(gralora.delta_weight(cfg, layer, params), torch.tensor(expected, dtype=torch.float64))


# GRALORA-FWD-1..4 ------------------------------------------------------------------------------------------------


@given(
    ci=st.integers(1, 4),
    co=st.integers(1, 4),
    n_blocks=st.integers(1, 4),
    rho=st.integers(1, 3),
    h=st.integers(0, 3),
    alpha=st.sampled_from([1, 7, 64, 2.5]),
    lead=st.sampled_from([(), (3,), (2, 3), (2, 1, 3), (0,)]),
    seed=st.integers(0, 2**31 - 1),
)
@example(ci=1, co=1, n_blocks=1, rho=1, h=0, alpha=1, lead=(), seed=0)  # rank 1, 1-D input
@example(ci=2, co=3, n_blocks=2, rho=2, h=1, alpha=64, lead=(0,), seed=1)  # batch of zero
@example(ci=2, co=2, n_blocks=3, rho=1, h=2, alpha=8, lead=(2, 1, 3), seed=2)  # 4-D input
def test_block_forward_equals_delta_weight_equals_reshape_form(ci, co, n_blocks, rho, h, alpha, lead, seed):
    """GRALORA-FWD-1 (loops over j, n, t) = x ΔWᵀ with ΔW of GRALORA-FWD-2 = the reshape restatement; any input rank
    (GRALORA-FWD-4, CORE-FWD-2)."""
    layer = Layer("linear", ci * n_blocks, co * n_blocks)
    cfg = config(r=rho * n_blocks, gralora_k=n_blocks, hybrid_r=h, alpha=alpha)
    params = random_params(cfg, layer, seed)
    x = torch.rand((*lead, layer.in_features), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    delta = gralora.delta_weight(cfg, layer, params)
    assert_n(delta, einsum_delta(cfg, layer, params))
    delta_y = gralora.adapter_output(x, cfg, layer, params)
    assert delta_y.shape == (*lead, layer.out_features)
    assert_n(delta_y, x @ delta.T)


def test_k1_is_lora():
    """GRALORA-FWD-3: N = 1 gives ΔW = σ (A[0] B[0])ᵀ + σ B_gen A_gen."""
    layer, cfg = Layer("linear", 7, 5), config(r=3, gralora_k=1, hybrid_r=2, alpha=4)
    params = random_params(cfg, layer, seed=3)
    sigma = 4 / 5
    expected = sigma * (params[A][0] @ params[B][0]).T + sigma * params[B_GEN] @ params[A_GEN]
    assert_n(gralora.delta_weight(cfg, layer, params), expected)


@pytest.mark.parametrize(("n_blocks", "r", "h"), [(2, 4, 0), (3, 3, 0), (4, 8, 0), (3, 3, 2)])
def test_block_ranks_at_most_rho(n_blocks, r, h):
    """GRALORA-FWD-2: block (j, n) of the grid part has rank ≤ ρ; rank ΔW ≤ min(N·r + h, in, out)."""
    d = 12 * n_blocks
    layer, cfg = Layer("linear", d, d), config(r=r, gralora_k=n_blocks, hybrid_r=h, alpha=1)
    params = random_params(cfg, layer, seed=4)
    grid = gralora.delta_weight(
        config(r=r, gralora_k=n_blocks, alpha=1, hybrid_r=0), layer, {A: params[A], B: params[B]}
    )
    rho, c = r // n_blocks, d // n_blocks
    for j, n in itertools.product(range(n_blocks), repeat=2):
        assert torch.linalg.matrix_rank(grid[j * c : (j + 1) * c, n * c : (n + 1) * c]) <= rho
    assert torch.linalg.matrix_rank(gralora.delta_weight(cfg, layer, params)) <= min(n_blocks * r + h, d, d)


def test_hf_conv1d_uses_the_same_logical_formula():
    """Weights are logical (out × in) for `Conv1D` too (§0.4), so the closed form does not depend on the kind."""
    cfg = config(r=4, gralora_k=2, hybrid_r=1)
    params = random_params(cfg, LINEAR_10_20, seed=5)
    conv1d = Layer("hf_conv1d", 10, 20)
    assert torch.equal(gralora.delta_weight(cfg, conv1d, params), gralora.delta_weight(cfg, LINEAR_10_20, params))


# Merge, unmerge, composition, identity ----------------------------------------------------------------------------


def _base(layer: Layer, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(layer.weight_shape, generator=gen, dtype=torch.float64) * 2 - 1
    return w, torch.rand(layer.out_features, generator=gen, dtype=torch.float64) * 2 - 1


def test_adapters_add_in_any_order_and_unmerge_exactly():
    """GRALORA-MULTI-1 (sum, order irrelevant, each with its own r, k, h, α) and GRALORA-MERGE-1 (W + ΔW; unmerge
    subtracts; bias unchanged)."""
    layer = Layer("linear", 12, 24)
    w, b = _base(layer, seed=6)
    cfg_a, cfg_b = config(r=4, gralora_k=2, hybrid_r=1, alpha=3), config(r=6, gralora_k=3, hybrid_r=0, alpha=9)
    a1 = Adapter(cfg_a, random_params(cfg_a, layer, seed=7))
    a2 = Adapter(cfg_b, random_params(cfg_b, layer, seed=8))
    w12, b12 = gralora.effective(w, b, layer, [a1, a2])
    w21, _ = gralora.effective(w, b, layer, [a2, a1])
    assert b12 is b
    assert_n(w12, w + gralora.delta_weight(cfg_a, layer, a1.params) + gralora.delta_weight(cfg_b, layer, a2.params))
    assert_n(w21, w12)
    w_back, b_back = gralora.unmerge(*gralora.unmerge(w12, b12, layer, a2), layer, a1)
    assert b_back is b
    assert_n(w_back, w)
    assert not torch.allclose(w12, w)


@pytest.mark.parametrize("h", [0, 2])
def test_identity_table(h):
    """GRALORA-ID-1 / §7.3: zero B (init_weights=True) gives W bitwise (⟨Z⟩); random B (False) does not."""
    layer = Layer("linear", 8, 12)
    w, b = _base(layer, seed=9)
    cfg = config(r=4, gralora_k=2, hybrid_r=h)
    params = random_params(cfg, layer, seed=10)
    at_init = params | {name: torch.zeros_like(params[name]) for name in (B, B_GEN) if name in params}
    assert torch.equal(gralora.effective(w, b, layer, [Adapter(cfg, at_init)])[0], w)
    assert not torch.allclose(gralora.effective(w, b, layer, [Adapter(cfg, params)])[0], w)


# Initialisation, kinds, counts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("h", [0, 3])
def test_init_distributions(h):
    """GRALORA-INIT-1..3 on Linear 12→24, N = 3, r = 6."""
    layer = Layer("linear", 12, 24)
    zero = gralora.init_distributions(config(r=6, gralora_k=3, hybrid_r=h, init_weights=True), layer)
    rand = gralora.init_distributions(config(r=6, gralora_k=3, hybrid_r=h, init_weights=False), layer)
    assert zero[A] == rand[A] == Init("uniform", 0.5)  # 1/√(12/3)
    assert zero[B] == Init("zeros")
    assert rand[B] == Init("uniform", 1 / math.sqrt(6))
    if h:
        assert zero[A_GEN] == rand[A_GEN] == Init("uniform", 1 / math.sqrt(12))
        assert zero[B_GEN] == Init("zeros")
        assert rand[B_GEN] == Init("uniform", 1 / math.sqrt(3))
    else:
        assert set(zero) == set(rand) == {A, B}


def test_kinds():
    assert gralora.supported_kinds(config()) == {"linear", "hf_conv1d"}
    assert gralora.optional_kinds(config()) == frozenset()


@pytest.mark.parametrize(
    ("fields", "layer"),
    [
        (dict(r=5, gralora_k=2), LINEAR_10_20),  # GRALORA-CFG-3
        (dict(r=4, gralora_k=4), LINEAR_10_20),  # GRALORA-CFG-5: 10 % 4
        (dict(r=3, gralora_k=3), Layer("linear", 9, 10)),  # GRALORA-CFG-5: out
        (dict(r=4), Layer("conv2d", 4, 4, (1, 1), (1, 1), (0, 0), (1, 1))),  # GRALORA-LAYER-1
    ],
)
def test_outside_the_domain_is_an_error(fields, layer):
    with pytest.raises(ValueError):
        gralora.param_shapes(config(**fields), layer)


def _tiny_llama_layers() -> list[Layer]:
    """§7.2's tiny Llama: hidden 64, intermediate 128, 2 layers; q/k/v/o 64→64, gate/up 64→128, down 128→64."""
    per_layer = [(64, 64)] * 4 + [(64, 128)] * 2 + [(128, 64)]
    return [Layer("linear", i, o) for i, o in per_layer * 2]


@pytest.mark.parametrize(("h", "total"), [(0, 34_816), (4, 43_520)])
def test_tiny_llama_counts(h, total):
    """§7.2: GraLoRA r16 k4 34,816 (with hybrid_r=4 43,520)."""
    cfg = config(r=16, gralora_k=4, hybrid_r=h)
    assert sum(gralora.trainable_count(cfg, layer) for layer in _tiny_llama_layers()) == total


# Gradients (the oracle is also the ⟨G⟩ reference) -----------------------------------------------------------------


def test_oracle_is_differentiable_and_its_two_forms_agree_in_gradient():
    layer, cfg = Layer("linear", 4, 6), config(r=4, gralora_k=2, hybrid_r=1, alpha=3)
    params = random_params(cfg, layer, seed=11)
    x = torch.rand(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    names = list(params)

    def via_loops(x, *tensors):
        return gralora.adapter_output(x, cfg, layer, dict(zip(names, tensors, strict=True)))

    def via_delta(x, *tensors):
        return x @ gralora.delta_weight(cfg, layer, dict(zip(names, tensors, strict=True))).T

    inputs = [t.clone().requires_grad_() for t in (x, *params.values())]
    assert torch.autograd.gradcheck(via_loops, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)
    assert torch.autograd.gradcheck(via_delta, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)
    weights = torch.rand(2, 6, dtype=torch.float64)
    grads_loops = torch.autograd.grad((via_loops(*inputs) * weights).sum(), inputs)
    grads_delta = torch.autograd.grad((via_delta(*inputs) * weights).sum(), inputs)
    for g1, g2 in zip(grads_loops, grads_delta, strict=True):
        assert_n(g1, g2)
