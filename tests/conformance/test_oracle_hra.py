"""Golden and property tests of the HRA oracle (SPEC.md §4, §7.2, §7.3). Expected values come from SPEC text or hand
derivation, never from an implementation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from conformance.spec.layer import Adapter, Init, Layer, flat, op
from conformance.spec.oracles import hra

F64 = torch.float64
LINEAR_10_20 = Layer("linear", 10, 20)


def conv2d(c_in: int, c_out: int, kernel: tuple[int, int], **hyper) -> Layer:
    defaults = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, padding_mode="zeros")
    return Layer("conv2d", c_in, c_out, kernel, **(defaults | hyper))


def config(**fields) -> dict:
    """A canonical HRA config dict: §4.1's table with its defaults, overridden by `fields`."""
    base = dict(
        r=8,
        apply_GS=False,
        target_modules=None,
        exclude_modules=None,
        init_weights=True,
        layers_to_transform=None,
        layers_pattern=None,
        bias="none",
        modules_to_save=None,
    )
    return base | fields


def uniform(shape: tuple[int, ...], seed: int, bound: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen, dtype=F64) * 2 - 1) * bound


def symmetric_u(d: int, r: int, seed: int) -> torch.Tensor:
    """HRA-INIT-1's shape: U = [h_0, h_0, h_1, h_1, …] with h_j i.i.d. U(±√(2/r))."""
    return uniform((d, r // 2), seed, math.sqrt(2 / r)).repeat_interleave(2, dim=1)


def well_conditioned_u(d: int, r: int, seed: int) -> torch.Tensor:
    """HRA-GS-1's closed-form domain: full column rank, every MGS residual ‖v‖ ≥ 10⁻²‖u_i‖ (checked via QR)."""
    u = uniform((d, r), seed)
    residuals = torch.linalg.qr(u).R.diagonal().abs() / torch.linalg.vector_norm(u, dim=0)
    assert bool((residuals >= 1e-2).all())
    return u


def near_dependent_u(d: int, r: int, ratio: float, seed: int) -> torch.Tensor:
    """Columns whose residual against the span of the earlier ones is exactly `ratio`·‖u_i‖ (hand construction)."""
    gen = torch.Generator().manual_seed(seed)
    columns = [torch.rand(d, generator=gen, dtype=F64) * 2 - 1]
    for _ in range(1, r):
        span = torch.stack(columns, dim=1)
        in_span = span @ (torch.rand(len(columns), generator=gen, dtype=F64) * 2 - 1)
        basis = torch.linalg.qr(span).Q
        normal = torch.rand(d, generator=gen, dtype=F64) * 2 - 1
        normal = normal - basis @ (basis.T @ normal)
        normal = normal / torch.linalg.vector_norm(normal)
        # ‖v‖/‖u‖ = ratio with v = s·normal ⟂ in_span: s = ratio·‖in_span‖/√(1 − ratio²)
        columns.append(in_span + ratio * torch.linalg.vector_norm(in_span) / math.sqrt(1 - ratio**2) * normal)
    return torch.stack(columns, dim=1)


def assert_n(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """⟨N⟩ float64 single layer (§8): rtol 1e-10, atol 1e-10·S."""
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10 * scale)


def eye(d: int) -> torch.Tensor:
    return torch.eye(d, dtype=F64)


def adapter(u: torch.Tensor, apply_gs: bool = False) -> Adapter:
    return Adapter(config(r=u.shape[1], apply_GS=apply_gs), {hra.U: u})


# §4.5 worked examples ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "r", "d", "count"),
    [(LINEAR_10_20, 8, 10, 80), (conv2d(5, 10, (3, 3)), 8, 45, 360), (conv2d(4, 6, (3, 1)), 2, 12, 24)],
)
def test_worked_example_shapes_and_counts(layer, r, d, count):
    assert hra.fan_in(layer) == d
    assert hra.param_shapes(config(r=r), layer) == {"hra_u": (d, r)}
    assert hra.trainable_count(config(r=r), layer) == count


def test_two_equal_columns_give_the_identity():
    """§4.5: r = 2, U = [h, h] gives R = H H = I."""
    h = uniform((7, 1), seed=0)
    assert_n(hra.reflection_chain(torch.cat([h, 3 * h], dim=1)), eye(7))  # û ignores the scale (HRA-R-1)


def test_init_bounds():
    """§4.5: at r = 8 the paired bound is √(2/8) = 0.5 (HRA-INIT-1); at odd r = 7, 1/√7 ≈ 0.378 (HRA-INIT-2);
    init_weights=False: 1/√r (HRA-INIT-3)."""
    layer = LINEAR_10_20
    assert hra.init_distributions(config(r=8), layer) == {"hra_u": Init("paired_uniform", 0.5)}
    odd = hra.init_distributions(config(r=7), layer)["hra_u"]
    assert odd.kind == "uniform" and odd.bound == pytest.approx(0.378, abs=5e-4)
    random_init = hra.init_distributions(config(r=8, init_weights=False), layer)
    assert random_init == {"hra_u": Init("uniform", 1 / math.sqrt(8))}
    assert hra.init_distributions(config(r=8, apply_GS=True), layer) == {"hra_u": Init("paired_uniform", 0.5)}


def test_tiny_llama_count():
    """§7.2: HRA r8 on the tiny Llama (hidden 64, intermediate 128, 2 layers, q/k/v/o/gate/up/down) is 8,192."""
    per_layer = [(64, 64)] * 4 + [(64, 128)] * 2 + [(128, 64)]
    layers = [Layer("linear", i, o) for i, o in per_layer * 2]
    assert sum(hra.trainable_count(config(r=8), layer) for layer in layers) == 8_192


def test_kinds():
    assert hra.supported_kinds(config()) == {"linear", "conv2d"}
    assert hra.optional_kinds(config()) == frozenset()
    with pytest.raises(ValueError):
        hra.param_shapes(config(), Layer("hf_conv1d", 4, 4))  # HRA-LAYER-3


def test_grouped_conv2d_fan_in():
    """HRA-LAYER-2 (optional): d = (in_channels/groups)·kh·kw."""
    layer = conv2d(4, 6, (3, 3), groups=2)
    assert hra.param_shapes(config(r=3), layer) == {"hra_u": (18, 3)}
    assert hra.trainable_count(config(r=3), layer) == 54
    w = uniform(layer.weight_shape, seed=1)
    w_new, _ = hra.effective(w, None, layer, [adapter(uniform((18, 3), seed=2))])
    assert w_new.shape == (6, 2, 3, 3)
    assert_n(flat(w_new) @ flat(w_new).T, flat(w) @ flat(w).T)


# HRA-R-1, HRA-R-2: the reflection chain ---------------------------------------------------------------------------


def test_hand_computed_chain():
    """d = 2, u_0 = (1, 0), u_1 = (1, 1): H_0 = diag(−1, 1), H_1 = [[0, −1], [−1, 0]], R = H_0 H_1 = [[0, 1], [−1, 0]].
    With W = [[1, 2]] the effective weight is W R = [[−2, 1]] (input side, HRA-FWD-1)."""
    u = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=F64)
    r = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    assert_n(hra.reflection(u[:, 0]), torch.diag(torch.tensor([-1.0, 1.0], dtype=F64)))
    assert_n(hra.reflection_chain(u), r)
    w, b = torch.tensor([[1.0, 2.0]], dtype=F64), torch.tensor([0.5], dtype=F64)
    w_new, b_new = hra.effective(w, b, Layer("linear", 2, 1), [adapter(u)])
    assert_n(w_new, torch.tensor([[-2.0, 1.0]], dtype=F64))
    assert b_new is b


@pytest.mark.parametrize(("d", "r"), [(6, 1), (6, 2), (6, 5), (3, 7), (1, 2)])
def test_chain_is_orthogonal_with_determinant_and_reversed_inverse(d, r):
    """HRA-R-2: RᵀR = I, det R = (−1)^r, Rᵀ = H_{r−1} ⋯ H_0; r > d is allowed (HRA-CFG-3)."""
    u = uniform((d, r), seed=3)
    chain = hra.reflection_chain(u)
    assert_n(chain.T @ chain, eye(d))
    assert_n(torch.linalg.det(chain), torch.tensor((-1.0) ** r, dtype=F64))
    reversed_product = eye(d)
    for i in reversed(range(r)):
        reversed_product = reversed_product @ hra.reflection(u[:, i])
    assert_n(chain.T, reversed_product)


# HRA-GS-1..4: Gram–Schmidt ---------------------------------------------------------------------------------------


def test_hand_computed_gram_schmidt():
    """u_0 = (2, 0, 0), u_1 = (1, 1, 0): q_0 = e_0, q_1 = e_1, R_GS = diag(−1, −1, 1); u_2 = 5u_0 − 3u_1 lies in their
    span and is omitted (HRA-GS-4)."""
    u = torch.tensor([[2.0, 1.0, 7.0], [0.0, 1.0, -3.0], [0.0, 0.0, 0.0]], dtype=F64)
    assert_n(hra.gram_schmidt(u), eye(3)[:, :2])
    assert_n(hra.gs_reflection(u), torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=F64)))


@pytest.mark.parametrize(("d", "r", "seed"), [(6, 3, 4), (8, 4, 5), (5, 1, 6)])
def test_gs_reflection_properties(d, r, seed):
    """HRA-GS-2: symmetric, orthogonal, involution, = ∏ (I − 2 q_i q_iᵀ) in every order; and (hand derivation)
    QQᵀ is the orthogonal projector onto span U, so R_GS = I − 2 U (UᵀU)⁻¹ Uᵀ."""
    u = well_conditioned_u(d, r, seed)
    r_gs, q = hra.gs_reflection(u), hra.gram_schmidt(u)
    assert q.shape == (d, r)
    assert_n(q.T @ q, eye(r))
    assert_n(r_gs, r_gs.T)
    assert_n(r_gs @ r_gs, eye(d))
    for order in itertools.permutations(range(r)):
        product = eye(d)
        for i in order:
            product = product @ (eye(d) - 2 * torch.outer(q[:, i], q[:, i]))
        assert_n(product, r_gs)
    assert_n(r_gs, eye(d) - 2 * u @ torch.linalg.solve(u.T @ u, u.T))


@pytest.mark.parametrize("r", [2, 4, 6])
def test_gs_with_symmetric_init_reflects_the_span_of_h(r):
    """HRA-GS-4: with U = [h_0, h_0, …] each repeated column is omitted, R_GS = I − 2 · (projector onto span{h_j});
    finite (HRA-GS-3) and not the identity (HRA-ID-2)."""
    u = symmetric_u(9, r, seed=7)
    h = u[:, ::2]
    assert hra.gram_schmidt(u).shape == (9, r // 2)
    r_gs = hra.gs_reflection(u)
    assert_n(r_gs, eye(9) - 2 * h @ torch.linalg.solve(h.T @ h, h.T))
    assert not torch.allclose(r_gs, eye(9))


def test_gs_omission_uses_the_given_dtype_epsilon():
    """HRA-GS-4: a residual ratio of 1e-6 is above √ε64 ≈ 1.5e-8 (kept) but below √ε32 ≈ 3.5e-4 (omitted); 1e-10 is
    omitted in float64 too."""
    for ratio, kept64, kept32 in [(1e-6, 2, 1), (1e-10, 1, 1), (1e-2, 2, 2)]:
        u = near_dependent_u(5, 2, ratio, seed=8)
        assert hra.gram_schmidt(u).shape[1] == kept64
        assert hra.gram_schmidt(u, eps_dtype=torch.float32).shape[1] == kept32


def test_gs_more_columns_than_dimensions():
    """HRA-CFG-3: r > d with Gram–Schmidt keeps d directions, so R_GS = I − 2I = −I."""
    u = uniform((3, 6), seed=9)
    assert hra.gram_schmidt(u).shape == (3, 3)
    assert_n(hra.gs_reflection(u), -eye(3))


@pytest.mark.parametrize("ratio", [1e-2, 1e-6, 1e-7])
def test_gs_second_pass_keeps_orthogonality_near_the_threshold(ratio):
    """HRA-GS-3's SHOULD (re-orthogonalisation): Q stays orthonormal to round-off even for residual ratios just above
    √ε64. One pass would lose orthogonality in proportion to ε/ratio (≈1e-8 at ratio 1e-7)."""
    u = near_dependent_u(12, 4, ratio, seed=10)
    q = hra.gram_schmidt(u)
    assert q.shape == (12, 4)
    assert float((q.T @ q - eye(4)).abs().max()) <= 1e-14
    r_gs = hra.gs_reflection(u)
    assert_n(r_gs.T @ r_gs, eye(12))


def test_gs_gradient_matches_the_projector_form():
    """⟨G⟩ reference quality at §8's residual floor (10⁻²): the oracle's autograd gradient equals that of the
    projector form I − 2·QR(U).Q QR(U).Qᵀ (a different, Householder-based route) within fp64 ⟨N⟩."""
    u0 = near_dependent_u(12, 4, 1.05e-2, seed=11)
    w, g = uniform((16, 12), seed=12), uniform((16, 12), seed=13)

    def grad(rotation) -> torch.Tensor:
        u = u0.clone().requires_grad_()
        return torch.autograd.grad((w @ rotation(u) * g).sum(), u)[0]

    def projector_form(u):
        basis = torch.linalg.qr(u).Q
        return eye(12) - 2 * basis @ basis.T

    assert_n(grad(hra.gs_reflection), grad(projector_form))


# HRA-R-3: invalid columns ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("apply_gs", [False, True])
def test_zero_or_non_finite_columns_are_outside_the_domain(apply_gs):
    u = uniform((4, 5), seed=14)
    u[:, 1] = 0.0
    u[2, 2] = math.nan
    u[0, 3] = math.inf
    assert hra.invalid_columns(u) == [1, 2, 3]
    assert hra.invalid_columns(uniform((4, 5), seed=14)) == []
    layer, w = Layer("linear", 4, 3), uniform((3, 4), seed=15)
    with pytest.raises(ValueError, match="HRA-R-3"):
        hra.effective(w, None, layer, [adapter(u, apply_gs)])
    with pytest.raises(ValueError, match="HRA-R-3"):
        hra.unmerge(w, None, layer, adapter(u, apply_gs))


# HRA-FWD, HRA-MULTI, HRA-MERGE ------------------------------------------------------------------------------------


@pytest.mark.parametrize("apply_gs", [False, True])
def test_conv2d_effective_weight_acts_on_patches(apply_gs):
    """HRA-FWD-2: with P = unfold(x) (channel slowest, last kernel axis fastest, as W_flat's columns),
    op(x; reshape(W_flat R), b) = W_flat (R P) + b — hand derivation; checks the reshape convention and that every
    hyper-parameter reaches op."""
    layer = conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    w, b, x = uniform(layer.weight_shape, 16), uniform((5,), 17), uniform((2, 3, 7, 8), 18)
    u = well_conditioned_u(18, 4, seed=19)
    w_new, b_new = hra.effective(w, b, layer, [adapter(u, apply_gs)])
    rotation = hra.gs_reflection(u) if apply_gs else hra.reflection_chain(u)
    patches = F.unfold(x, (3, 2), dilation=(1, 2), padding=(1, 0), stride=(2, 1))  # (2, 18, L)
    y = flat(w) @ (rotation @ patches) + b[:, None]
    out = op(x, w_new, b_new, layer)
    assert_n(out, y.reshape(out.shape))


@pytest.mark.parametrize("apply_gs", [False, True])
@pytest.mark.parametrize("layer", [Layer("linear", 6, 4), conv2d(2, 3, (2, 2))])
def test_norm_preservation(layer, apply_gs):
    """HRA-FWD-3: W′_flat W′_flatᵀ = W_flat W_flatᵀ."""
    w = uniform(layer.weight_shape, seed=20)
    w_new, _ = hra.effective(w, None, layer, [adapter(well_conditioned_u(layer.fan_in, 3, seed=21), apply_gs)])
    assert_n(flat(w_new) @ flat(w_new).T, flat(w) @ flat(w).T)


def test_multi_adapter_order_and_lifo_unmerge():
    """HRA-MULTI-1: R_tot = R_a R_b in active order (order matters); HRA-MERGE-1: merging a then b gives the same;
    HRA-MERGE-2: LIFO unmerge (W R_bᵀ, then R_aᵀ; R_GS itself) restores W; FIFO does not."""
    layer = Layer("linear", 6, 4)
    w, b = uniform((4, 6), seed=22), uniform((4,), seed=23)
    a1, a2 = adapter(uniform((6, 3), seed=24)), adapter(well_conditioned_u(6, 2, seed=25), apply_gs=True)
    w12, b12 = hra.effective(w, b, layer, [a1, a2])
    assert b12 is b
    assert_n(w12, w @ hra.reflection_chain(a1.params["hra_u"]) @ hra.gs_reflection(a2.params["hra_u"]))
    assert_n(w12, hra.effective(hra.effective(w, b, layer, [a1])[0], b, layer, [a2])[0])
    assert not torch.allclose(w12, hra.effective(w, b, layer, [a2, a1])[0])
    w_back, b_back = hra.unmerge(*hra.unmerge(w12, b12, layer, a2), layer, a1)
    assert b_back is b
    assert_n(w_back, w)
    assert not torch.allclose(hra.unmerge(hra.unmerge(w12, b, layer, a1)[0], b, layer, a2)[0], w)


# HRA-ID-1/2, §7.3 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [LINEAR_10_20, conv2d(2, 3, (3, 3))])
@pytest.mark.parametrize(
    ("name", "r", "make_u", "apply_gs", "identity"),
    [
        ("init True, even r", 4, symmetric_u, False, True),
        ("init True, odd r", 5, lambda d, r, seed: uniform((d, r), seed, r**-0.5), False, False),
        ("init False", 4, lambda d, r, seed: uniform((d, r), seed, r**-0.5), False, False),
        ("GS, symmetric init", 4, symmetric_u, True, False),
        ("GS, init False", 4, lambda d, r, seed: uniform((d, r), seed, r**-0.5), True, False),
    ],
)
def test_identity_table(layer, name, r, make_u, apply_gs, identity):
    """HRA-ID-1 (⟨N⟩ identity for even r, symmetric init, no GS) and HRA-ID-2's documented non-identities."""
    w = uniform(layer.weight_shape, seed=26)
    w_new, _ = hra.effective(w, None, layer, [adapter(make_u(layer.fan_in, r, 27), apply_gs)])
    assert torch.isfinite(w_new).all()
    if identity:
        assert_n(w_new, w)
    else:
        assert not torch.allclose(w_new, w, atol=1e-6), name


# Properties over random draws, and gradients ---------------------------------------------------------------------


@given(d=st.integers(1, 8), r=st.integers(1, 10), apply_gs=st.booleans(), seed=st.integers(0, 2**31 - 1))
@example(d=1, r=1, apply_gs=False, seed=0)
@example(d=1, r=3, apply_gs=True, seed=0)
@example(d=8, r=10, apply_gs=True, seed=1)
def test_adapter_matrix_is_orthogonal(d, r, apply_gs, seed):
    """HRA-R-2 and HRA-GS-3 on random U (any r, r > d included): RᵀR = I; det (−1)^r without GS; R_GS symmetric."""
    matrix = hra.adapter_matrix(config(r=r, apply_GS=apply_gs), {"hra_u": uniform((d, r), seed)})
    assert_n(matrix.T @ matrix, eye(d))
    if apply_gs:
        assert_n(matrix, matrix.T)
    else:
        assert_n(torch.linalg.det(matrix), torch.tensor((-1.0) ** r, dtype=F64))


@pytest.mark.parametrize(("u", "apply_gs"), [(uniform((5, 3), seed=28), False), (well_conditioned_u(5, 2, 29), True)])
def test_oracle_gradcheck(u, apply_gs):
    """The oracle is a differentiable ⟨G⟩ reference (§8: eps 1e-6, atol 1e-5, rtol 1e-3)."""
    layer, w = Layer("linear", 5, 3), uniform((3, 5), seed=31)

    def weight_of(u):
        return hra.effective(w, None, layer, [adapter(u, apply_gs)])[0]

    assert torch.autograd.gradcheck(weight_of, [u.clone().requires_grad_()], eps=1e-6, atol=1e-5, rtol=1e-3)


def test_gs_gradient_at_the_symmetric_init_is_finite():
    """HRA-GS-3: finite gradients at HRA-INIT-1's init under Gram–Schmidt. Finite differences do not apply there:
    R_GS jumps once paired columns separate (HRA-GS-5), so only autograd is checked; an omitted column gets none."""
    u = symmetric_u(5, 4, seed=30).requires_grad_()
    w_new, _ = hra.effective(uniform((3, 5), seed=31), None, Layer("linear", 5, 3), [adapter(u, apply_gs=True)])
    (grad,) = torch.autograd.grad(w_new.sum(), u)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[:, 1::2], torch.zeros(5, 2, dtype=F64))
