"""Golden and property tests of the Bone / BAT / MiSS oracle (SPEC §2). Golden values come from SPEC's text
(§2.8, §7.2, §7.3) or are derived by hand in the comments; nothing here runs an implementation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from conformance.spec.layer import Adapter, Init, Layer, op
from conformance.spec.oracles import bone as oracle

F64 = torch.float64
N_RTOL = N_ATOL = 1e-10  # SPEC §8 ⟨N⟩ single layer, float64
AINV_RTOL = AINV_ATOL = 1e-6  # SPEC §8 ⟨A⟩ A-INV, float64


def bone_config(r: int, init_weights: bool | str = True) -> dict:
    return {
        "r": r,
        "target_modules": None,
        "exclude_modules": None,
        "init_weights": init_weights,
        "layers_to_transform": None,
        "layers_pattern": None,
        "bias": "none",
        "modules_to_save": None,
    }


def miss_config(r: int, init_weights: bool | str = True, mini_r: int = 1, miss_dropout: float = 0.0) -> dict:
    return {**bone_config(r, init_weights), "mini_r": mini_r, "miss_dropout": miss_dropout}


def linear(n_in: int, n_out: int, kind: str = "linear") -> Layer:
    return Layer(kind, n_in, n_out)


def uniform(shape: tuple[int, ...], g: torch.Generator, bound: float = 1.0) -> torch.Tensor:
    return (torch.rand(shape, generator=g, dtype=F64) * 2 - 1) * bound


def adapter(config: dict, block: torch.Tensor) -> Adapter:
    return Adapter(config, {oracle.param_name(config): block})


def assert_close(actual, expected, rtol=N_RTOL, atol=N_ATOL, extra=()) -> None:
    """SPEC §8: |actual − reference| ≤ a·S + r·|reference|, S = max(1, max|reference|, max|T| for T in extra)."""
    scale = max([1.0, expected.abs().max().item() if expected.numel() else 0.0] + [t.abs().max().item() for t in extra])
    err = (actual - expected).abs()
    bound = atol * scale + rtol * expected.abs()
    assert actual.shape == expected.shape and bool((err <= bound).all()), f"max error {err.max().item():.3e}"


def bat_block(n_blocks: int, r: int, g: torch.Generator, spectral: float = 0.8) -> torch.Tensor:
    """B[p] = s·G/‖G‖_F with s ≤ 0.8, so ‖B[p]‖₂ ≤ 0.8 and cond(I + B[p]) ≤ 1.8/0.2 = 9 ≤ 10 (SPEC §8 domain)."""
    blocks = []
    for _ in range(n_blocks):
        raw = uniform((r, r), g)
        s = spectral * torch.rand((), generator=g, dtype=F64)
        blocks.append(s * raw / raw.norm())
    return torch.stack(blocks)


# --- §2.8 worked examples, §7.2 counts, init and kinds ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "name", "shape", "count"),
    [
        (bone_config(4), "bone_block", (4, 20), 80),
        (bone_config(2, "bat"), "bone_block", (10, 2, 2), 40),
        (miss_config(3, "mini", mini_r=5), "miss_block", (3, 5), 15),
        (miss_config(4), "miss_block", (4, 20), 80),
        (miss_config(2, "bat"), "miss_block", (10, 2, 2), 40),
    ],
)
def test_worked_example_shapes_and_counts(config, name, shape, count):
    """§2.8 (Linear 10→20): BONE-PARAM-1/2, MISS-MINI-1, BONE-COUNT-1, MISS-COUNT-1."""
    layer = linear(10, 20)
    assert oracle.param_shapes(config, layer) == {name: shape}
    assert oracle.trainable_count(config, layer) == count == math.prod(shape)


TINY_LLAMA = [(64, 64)] * 4 + [(64, 128), (64, 128), (128, 64)]  # q, k, v, o, gate, up, down: (in, out)


@pytest.mark.parametrize(
    ("config", "total"),
    [
        (bone_config(16), 18_432),
        (miss_config(16), 18_432),
        (bone_config(16, "bat"), 18_432),
        (miss_config(16, "bat"), 18_432),
        (miss_config(16, "mini", mini_r=8), 1_792),
    ],
)
def test_tiny_llama_counts(config, total):
    """§7.2: per-layer BONE-COUNT-1 / MISS-COUNT-1 summed over 2 decoder layers of the tiny Llama."""
    assert sum(oracle.trainable_count(config, linear(i, o)) for i, o in TINY_LLAMA) * 2 == total


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (bone_config(4, True), Init("zeros")),
        (bone_config(2, "bat"), Init("zeros")),
        (bone_config(4, False), Init("uniform", 1 / math.sqrt(20))),
        (miss_config(4, False), Init("uniform", 1 / math.sqrt(20))),
        (miss_config(3, "mini", mini_r=5), Init("zeros")),
    ],
)
def test_init_distributions(config, expected):
    """BONE-INIT-1 (zeros), BONE-INIT-2 (KU on (r, out): U(±1/√out)), MISS-MINI-1 (zeros)."""
    assert oracle.init_distributions(config, linear(10, 20)) == {oracle.param_name(config): expected}


def test_kinds():
    """BONE-LAYER-1 (Linear, MUST), BONE-LAYER-2 (Conv1D, optional)."""
    assert oracle.supported_kinds(bone_config(4)) == frozenset({"linear"})
    assert oracle.optional_kinds(miss_config(4)) == frozenset({"hf_conv1d"})


@pytest.mark.parametrize(
    ("config", "layer", "subject"),
    [
        (bone_config(0), linear(4, 4), "r=0"),
        (bone_config(5), linear(4, 8), "r=5"),
        (bone_config(2, "bat"), linear(5, 4), "divisible"),
        (bone_config(2, "bat"), linear(4, 5), "divisible"),
        (miss_config(2, "mini", mini_r=0), linear(4, 4), "mini_r"),
        (miss_config(2, "mini", mini_r=3), linear(4, 4), "mini_r"),
        (bone_config(2, "mini"), linear(4, 4), "init_weights"),
        (miss_config(2, "other"), linear(4, 4), "init_weights"),
        (bone_config(2), Layer("conv2d", 4, 4, kernel_size=(1, 1)), "conv2d"),
    ],
)
def test_rejected_geometry(config, layer, subject):
    """BONE-CFG-2, BONE-CFG-5, MISS-CFG-2/3, BONE-LAYER-3: the oracle's domain ends where SPEC rejects."""
    with pytest.raises(ValueError, match=subject):
        oracle.param_shapes(config, layer)


def test_block_name_either():
    """Params hold `bone_block` or `miss_block`; both at once is a misuse."""
    b = torch.ones(2, 3, dtype=F64)
    layer = linear(4, 3)
    for name in ("bone_block", "miss_block"):
        w, _ = oracle.effective(torch.zeros(3, 4, dtype=F64), None, layer, [Adapter(bone_config(2), {name: b})])
        assert torch.equal(w, torch.ones(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="exactly one"):
        oracle.block(Adapter(bone_config(2), {"bone_block": b, "miss_block": b}))


# --- plain mode: T(B) -------------------------------------------------------------------------------------------------


def test_tiling_example():
    """§2.8: in=5, r=2 → columns 0, 2, 4 of ΔW equal B[0]ᵀ, columns 1, 3 equal B[1]ᵀ (BONE-FWD-2: column 4 ≥ ⌊5/2⌋·2
    uses row 4 mod 2 = 0). Hand value for B = [[1,2,3],[4,5,6]] (out=3)."""
    b = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
    delta = oracle.tiled_delta(b, 5)
    for col, row in [(0, 0), (2, 0), (4, 0), (1, 1), (3, 1)]:
        assert torch.equal(delta[:, col], b[row])
    hand = torch.tensor([[1, 4, 1, 4, 1], [2, 5, 2, 5, 2], [3, 6, 3, 6, 3]], dtype=F64)
    assert torch.equal(delta, hand)
    w, bias = torch.zeros(3, 5, dtype=F64), torch.arange(3, dtype=F64)
    w_eff, b_eff = oracle.effective(w, bias, linear(5, 3), [adapter(bone_config(2, False), b)])
    assert torch.equal(w_eff, hand) and b_eff is bias


@given(seed=st.integers(0, 2**31 - 1), n_in=st.integers(1, 9), n_out=st.integers(1, 6), data=st.data())
@example(seed=0, n_in=1, n_out=1, data=None)
@example(seed=1, n_in=7, n_out=3, data=None)
def test_tiled_delta_index_formula(seed, n_in, n_out, data):
    """BONE-FWD-1/2: T(B)[o, i] = B[i mod r, o], checked entry by entry; BONE-FWD-3: rank T(B) ≤ r."""
    r = data.draw(st.integers(1, n_in), label="r") if data else n_in // 2 + 1
    b = uniform((r, n_out), torch.Generator().manual_seed(seed))
    delta = oracle.tiled_delta(b, n_in)
    assert delta.shape == (n_out, n_in)
    for o in range(n_out):
        for i in range(n_in):
            assert delta[o, i] == b[i % r, o]
    assert torch.linalg.matrix_rank(delta) <= r


@given(
    seed=st.integers(0, 2**31 - 1),
    n_in=st.integers(1, 9),
    n_out=st.integers(1, 6),
    lead=st.lists(st.integers(0, 3), max_size=3),
    data=st.data(),
)
@example(seed=0, n_in=5, n_out=3, lead=[], data=None)  # 1-D input, in % r ≠ 0
@example(seed=1, n_in=6, n_out=2, lead=[0, 2], data=None)  # batch of zero
@example(seed=2, n_in=7, n_out=4, lead=[2, 1, 3], data=None)  # 4-D input
def test_chunk_sum_equals_index_form(seed, n_in, n_out, lead, data):
    """§2.4: zero-pad/chunk-sum s(x)B equals x T(B)ᵀ for any leading dims (CORE-FWD-2), in % r ≠ 0 included; and
    the plain forward op(x; W + T(B), b) equals base(x) + x T(B)ᵀ (BONE-FWD-1), independent of W (BONE-FWD-3)."""
    r = data.draw(st.integers(1, n_in), label="r") if data else n_in // 2 + 1
    g = torch.Generator().manual_seed(seed)
    b, x = uniform((r, n_out), g), uniform((*lead, n_in), g)
    w, bias, w2 = uniform((n_out, n_in), g), uniform((n_out,), g), uniform((n_out, n_in), g)
    layer = linear(n_in, n_out)
    index_form = x @ oracle.tiled_delta(b, n_in).T
    chunk_form = oracle.chunk_sum_delta(x, b)
    assert chunk_form.shape == (*lead, n_out)
    assert_close(chunk_form, index_form)
    for base_w in (w, w2):
        y = op(x, *oracle.effective(base_w, bias, layer, [adapter(bone_config(r, False), b)]), layer)
        assert_close(y - op(x, base_w, bias, layer), index_form)


@given(seed=st.integers(0, 2**31 - 1), n_in=st.integers(1, 8), n_out=st.integers(1, 6))
def test_plain_adapters_add_in_any_order(seed, n_in, n_out):
    """BONE-MULTI-1: y = base(x) + Σ_a x T(B_a)ᵀ, each adapter with its own r; the order is irrelevant."""
    g = torch.Generator().manual_seed(seed)
    r1, r2 = 1 + seed % n_in, n_in
    a1, a2 = adapter(bone_config(r1, False), uniform((r1, n_out), g)), adapter(miss_config(r2), uniform((r2, n_out), g))
    w, bias, x = uniform((n_out, n_in), g), uniform((n_out,), g), uniform((4, n_in), g)
    layer = linear(n_in, n_out)
    expected = (
        op(x, w, bias, layer)
        + oracle.chunk_sum_delta(x, oracle.block(a1))
        + oracle.chunk_sum_delta(x, oracle.block(a2))
    )
    for order in ([a1, a2], [a2, a1]):
        assert_close(op(x, *oracle.effective(w, bias, layer, order), layer), expected)


@given(seed=st.integers(0, 2**31 - 1), n_in=st.integers(1, 8), n_out=st.integers(1, 6), data=st.data())
def test_plain_merge_unmerge(seed, n_in, n_out, data):
    """BONE-MERGE-1: merge W ← W + T(B), unmerge W ← W − T(B) (exact, ⟨N⟩), the bias never changes; MISS-MINI-2 for
    mini; LIFO over two adapters."""
    g = torch.Generator().manual_seed(seed)
    r = data.draw(st.integers(1, n_in), label="r")
    mini_r = data.draw(st.sampled_from([d for d in range(1, n_out + 1) if n_out % d == 0]), label="mini_r")
    a1 = adapter(bone_config(r, False), uniform((r, n_out), g))
    a2 = adapter(miss_config(r, "mini", mini_r=mini_r), uniform((r, mini_r), g))
    w, bias = uniform((n_out, n_in), g), uniform((n_out,), g)
    layer = linear(n_in, n_out)
    merged, merged_bias = oracle.effective(w, bias, layer, [a1, a2])
    assert torch.equal(merged_bias, bias)
    half, half_bias = oracle.unmerge(merged, merged_bias, layer, a2)
    assert_close(half, w + oracle.tiled_delta(oracle.block(a1), n_in))
    restored, restored_bias = oracle.unmerge(half, half_bias, layer, a1)
    assert_close(restored, w, extra=(merged, half))
    assert torch.equal(restored_bias, bias)


def test_hf_conv1d_is_linear_in_logical_orientation():
    """BONE-LAYER-2: Conv1D formulas are the Linear ones on the logical (out × in) weight."""
    g = torch.Generator().manual_seed(3)
    w, b = uniform((4, 6), g), uniform((2, 4), g)
    a = adapter(bone_config(2, False), b)
    lin, _ = oracle.effective(w, None, linear(6, 4), [a])
    conv, _ = oracle.effective(w, None, linear(6, 4, "hf_conv1d"), [a])
    assert torch.equal(lin, conv)


# --- MiSS mini --------------------------------------------------------------------------------------------------------


def test_mini_hand_example():
    """MISS-MINI-2 by hand: r=2, mini_r=2, out=4, in=3, B=[[1,2],[3,4]] → B_full = [[1,2,1,2],[3,4,3,4]],
    ΔW[o, i] = B_full[i mod 2, o]."""
    b = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    assert torch.equal(oracle.expand_mini(b, 4), torch.tensor([[1, 2, 1, 2], [3, 4, 3, 4]], dtype=F64))
    hand = torch.tensor([[1, 3, 1], [2, 4, 2], [1, 3, 1], [2, 4, 2]], dtype=F64)
    w, _ = oracle.effective(torch.zeros(4, 3, dtype=F64), None, linear(3, 4), [adapter(miss_config(2, "mini", 2), b)])
    assert torch.equal(w, hand)


@given(seed=st.integers(0, 2**31 - 1), n_in=st.integers(1, 7), n_out=st.integers(1, 8), data=st.data())
def test_mini_expansion_and_mini_r_out_is_plain(seed, n_in, n_out, data):
    """MISS-MINI-2: ΔW[o, i] = B[i mod r, o mod mini_r], entry by entry. MISS-MINI-3: mini_r = out equals plain Bone
    with bone_block = miss_block."""
    g = torch.Generator().manual_seed(seed)
    r = data.draw(st.integers(1, n_in), label="r")
    mini_r = data.draw(st.sampled_from([d for d in range(1, n_out + 1) if n_out % d == 0]), label="mini_r")
    b, w = uniform((r, mini_r), g), uniform((n_out, n_in), g)
    layer = linear(n_in, n_out)
    delta = oracle.delta_weight(adapter(miss_config(r, "mini", mini_r), b), layer)
    for o in range(n_out):
        for i in range(n_in):
            assert delta[o, i] == b[i % r, o % mini_r]
    full = uniform((r, n_out), g)
    mini_w, _ = oracle.effective(w, None, layer, [adapter(miss_config(r, "mini", n_out), full)])
    plain_w, _ = oracle.effective(w, None, layer, [adapter(bone_config(r, False), full)])
    assert torch.equal(mini_w, plain_w)


# --- BAT --------------------------------------------------------------------------------------------------------------


def test_bat_tile_example():
    """§2.8: BAT on a 4×4 weight with r=2 — tiles W_{0,0}, W_{0,1} use B[0]; W_{1,0}, W_{1,1} use B[1].
    By hand with W = I₄, B[0] = [[1,2],[3,4]], B[1] = [[0,1],[1,0]]: identity tiles become I + 2B[p], zero tiles
    B[p]."""
    b = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]], dtype=F64)
    hand = torch.tensor([[3, 4, 1, 2], [6, 9, 3, 4], [0, 1, 1, 2], [1, 0, 2, 1]], dtype=F64)
    assert torch.equal(oracle.tile_transform(torch.eye(4, dtype=F64), b), hand)
    bias = torch.ones(4, dtype=F64)
    w, b_eff = oracle.effective(torch.eye(4, dtype=F64), bias, linear(4, 4), [adapter(bone_config(2, "bat"), b)])
    assert torch.equal(w, hand) and b_eff is bias  # BONE-BAT-1: the bias is not transformed
    # rows of block p depend on B[p] only
    other = oracle.tile_transform(torch.eye(4, dtype=F64), torch.stack([b[0], 5 * b[1]]))
    assert torch.equal(other[:2], hand[:2]) and not torch.equal(other[2:], hand[2:])


def test_bat_tile_formula_on_generic_weight():
    """BONE-BAT-1, tile by tile: W_{p,c}(I + B[p]) + B[p] on a 6×4 weight with r=2 (loops written separately)."""
    g = torch.Generator().manual_seed(5)
    w, b = uniform((6, 4), g), uniform((3, 2, 2), g)
    got = oracle.tile_transform(w, b)
    for p in range(3):
        for c in range(2):
            tile = w[2 * p : 2 * p + 2, 2 * c : 2 * c + 2]
            assert_close(got[2 * p : 2 * p + 2, 2 * c : 2 * c + 2], tile @ (torch.eye(2, dtype=F64) + b[p]) + b[p])


@given(seed=st.integers(0, 2**31 - 1), blocks=st.tuples(st.integers(1, 3), st.integers(1, 3)), r=st.integers(1, 3))
def test_bat_sequential_and_order_dependent(seed, blocks, r):
    """BONE-BAT-1/2: W_eff = 𝒯_{a2}(𝒯_{a1}(W)); by hand per tile, W(I+B1)(I+B2) + B1(I+B2) + B2. Order matters:
    for non-commuting blocks (r ≥ 2) [a1, a2] ≠ [a2, a1]; equal blocks commute."""
    g = torch.Generator().manual_seed(seed)
    n_out, n_in = blocks[0] * r, blocks[1] * r
    b1, b2, w = uniform((blocks[0], r, r), g), uniform((blocks[0], r, r), g), uniform((n_out, n_in), g)
    a1, a2 = adapter(bone_config(r, "bat"), b1), adapter(miss_config(r, "bat"), b2)
    layer = linear(n_in, n_out)
    w12, _ = oracle.effective(w, None, layer, [a1, a2])
    w21, _ = oracle.effective(w, None, layer, [a2, a1])
    eye = torch.eye(r, dtype=F64)
    for p in range(blocks[0]):
        for c in range(blocks[1]):
            tile = w[p * r : (p + 1) * r, c * r : (c + 1) * r]
            hand = tile @ (eye + b1[p]) @ (eye + b2[p]) + b1[p] @ (eye + b2[p]) + b2[p]
            assert_close(w12[p * r : (p + 1) * r, c * r : (c + 1) * r], hand)
    if r >= 2:
        assert not torch.allclose(w12, w21, rtol=1e-6, atol=1e-6)
    w11, _ = oracle.effective(w, None, layer, [a1, adapter(bone_config(r, "bat"), b1)])
    assert_close(w11, oracle.tile_transform(oracle.tile_transform(w, b1), b1))


@given(
    seed=st.integers(0, 2**31 - 1),
    blocks=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    r=st.integers(1, 4),
    n_adapters=st.integers(1, 3),
)
@example(seed=0, blocks=(1, 1), r=1, n_adapters=1)
def test_bat_merge_unmerge_round_trip(seed, blocks, r, n_adapters):
    """BONE-BAT-3: LIFO unmerge (W_{p,c} − B[p])(I + B[p])⁻¹ restores W within A-INV (§8, float64) for draws with
    cond(I + B[p]) ≤ 10; S includes every weight written during the round trip."""
    g = torch.Generator().manual_seed(seed)
    n_out, n_in = blocks[0] * r, blocks[1] * r
    layer = linear(n_in, n_out)
    adapters = [adapter(bone_config(r, "bat"), bat_block(blocks[0], r, g)) for _ in range(n_adapters)]
    for a in adapters:
        assert all(torch.linalg.cond(torch.eye(r, dtype=F64) + bp) <= 10 for bp in a.params["bone_block"])
    w, bias = uniform((n_out, n_in), g), uniform((n_out,), g)
    current, written = w, []
    for a in adapters:
        current, _ = oracle.effective(current, bias, layer, [a])
        written.append(current)
    for a in reversed(adapters):
        current, b_now = oracle.unmerge(current, bias, layer, a)
        written.append(current)
        assert b_now is bias
    assert_close(current, w, rtol=AINV_RTOL, atol=AINV_ATOL, extra=written)


def test_bat_unmerge_rejects_singular_and_non_finite():
    """BONE-BAT-4: singular I + B[p] → ValueError; a non-finite unmerged weight → ValueError."""
    layer = linear(2, 4)
    singular = torch.stack([torch.zeros(2, 2, dtype=F64), -torch.eye(2, dtype=F64)])
    with pytest.raises(ValueError, match="singular"):
        oracle.unmerge(torch.ones(4, 2, dtype=F64), None, layer, adapter(bone_config(2, "bat"), singular))
    eps = torch.finfo(F64).eps
    near = torch.diag(torch.tensor([-1 + eps, 0.0], dtype=F64))  # (I + B)⁻¹ = diag(1/eps, 1), finite
    blk = torch.stack([torch.zeros(2, 2, dtype=F64), near])
    with pytest.raises(ValueError, match="non-finite"):  # 1e300 / eps overflows
        oracle.unmerge(torch.full((4, 2), 1e300, dtype=F64), None, layer, adapter(bone_config(2, "bat"), blk))


def test_mixed_modes_hand_example():
    """BONE-MULTI-2 by hand on W = 0 (2×2): plain a (r=1, B_a = [[1, 2]] → T = [[1,1],[2,2]]), BAT b (r=2,
    B_b[0] = [[0,1],[0,0]]). [a, b]: 𝒯_b(T) = T + T B_b + B_b = [[1,3],[2,4]]. [b, a]: 𝒯_b(0) + T = [[1,2],[2,2]]."""
    a = adapter(bone_config(1, False), torch.tensor([[1.0, 2.0]], dtype=F64))
    b = adapter(miss_config(2, "bat"), torch.tensor([[[0.0, 1.0], [0.0, 0.0]]], dtype=F64))
    layer, zero = linear(2, 2), torch.zeros(2, 2, dtype=F64)
    assert torch.equal(
        oracle.effective(zero, None, layer, [a, b])[0], torch.tensor([[1.0, 3.0], [2.0, 4.0]], dtype=F64)
    )
    assert torch.equal(
        oracle.effective(zero, None, layer, [b, a])[0], torch.tensor([[1.0, 2.0], [2.0, 2.0]], dtype=F64)
    )


def test_miss_is_bone():
    """MISS-MATH-1: for True/False/"bat" a MiSS config gives Bone's effective weight and unmerge."""
    g = torch.Generator().manual_seed(11)
    w, layer = uniform((4, 6), g), linear(6, 4)
    for init, shape in [(False, (2, 4)), ("bat", (2, 2, 2))]:
        blk = uniform(shape, g, 0.3)
        bone_w, _ = oracle.effective(w, None, layer, [adapter(bone_config(2, init), blk)])
        miss_w, _ = oracle.effective(w, None, layer, [adapter(miss_config(2, init), blk)])
        assert torch.equal(bone_w, miss_w)
        bone_u, _ = oracle.unmerge(bone_w, None, layer, adapter(bone_config(2, init), blk))
        miss_u, _ = oracle.unmerge(miss_w, None, layer, adapter(miss_config(2, init), blk))
        assert torch.equal(bone_u, miss_u)


# --- identity at init (§7.3), gradients, purity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", [bone_config(2, True), bone_config(2, "bat"), miss_config(2, True), miss_config(2, "mini", mini_r=3)]
)
def test_identity_at_init(config):
    """§7.3 / BONE-ID-1 / MISS-MINI-1: True, "bat", "mini" (zero blocks) give W and b exactly (⟨Z⟩)."""
    g = torch.Generator().manual_seed(7)
    layer = linear(4, 6)
    w, bias, x = uniform((6, 4), g), uniform((6,), g), uniform((3, 4), g)
    (shape,) = oracle.param_shapes(config, layer).values()
    w_eff, b_eff = oracle.effective(w, bias, layer, [adapter(config, torch.zeros(shape, dtype=F64))])
    assert torch.equal(w_eff, w) and torch.equal(b_eff, bias)
    assert torch.equal(op(x, w_eff, b_eff, layer), op(x, w, bias, layer))


def test_random_init_is_not_identity():
    """§7.3 / BONE-ID-1: init_weights=False (U(±1/√out) block) changes the output for generic x."""
    g = torch.Generator().manual_seed(8)
    config, layer = bone_config(2, False), linear(4, 6)
    (dist,) = oracle.init_distributions(config, layer).values()
    blk = uniform((2, 6), g, dist.bound)
    w, x = uniform((6, 4), g), uniform((3, 4), g)
    assert not torch.allclose(
        op(x, *oracle.effective(w, None, layer, [adapter(config, blk)]), layer), op(x, w, None, layer)
    )


@pytest.mark.parametrize(
    ("config", "n_out", "shape"),
    [
        (bone_config(2, False), 6, (2, 6)),
        (bone_config(2, "bat"), 4, (2, 2, 2)),
        (miss_config(3, "mini", mini_r=2), 6, (3, 2)),
    ],
)
def test_gradients(config, n_out, shape):
    """BONE-BAT-5 / CORE-GRAD-1: the oracle is differentiable in the block, x and bias (gradcheck, §8 ⟨G⟩); W is a
    constant input of it."""
    g = torch.Generator().manual_seed(9)
    layer, w = linear(4, n_out), uniform((n_out, 4), g)
    blk = uniform(shape, g, 0.3).requires_grad_()
    x, bias = uniform((2, 4), g).requires_grad_(), uniform((n_out,), g).requires_grad_()

    def f(blk_, x_, b_):
        return op(x_, *oracle.effective(w, b_, layer, [adapter(config, blk_)]), layer)

    assert torch.autograd.gradcheck(f, (blk, x, bias), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_inputs_not_modified():
    """No in-place writes on inputs (effective and unmerge, both modes)."""
    g = torch.Generator().manual_seed(10)
    w, bias = uniform((4, 4), g), uniform((4,), g)
    blocks = {"bat": uniform((2, 2, 2), g, 0.3), False: uniform((2, 4), g)}
    saved = [t.clone() for t in (w, bias, *blocks.values())]
    for init, blk in blocks.items():
        a = adapter(bone_config(2, init), blk)
        merged, _ = oracle.effective(w, bias, linear(4, 4), [a])
        oracle.unmerge(merged, bias, linear(4, 4), a)
    assert all(torch.equal(a, b) for a, b in zip(saved, (w, bias, *blocks.values()), strict=True))


def test_no_adapter_is_base():
    """CORE-FWD-5: an empty active list leaves W and b unchanged."""
    w = torch.arange(6, dtype=F64).reshape(2, 3)
    assert torch.equal(oracle.effective(w, None, linear(3, 2), [])[0], w)


# --- MISS-CONV --------------------------------------------------------------------------------------------------------


def _bone_files() -> tuple[dict, dict]:
    tensors = {
        "base_model.model.lin0.bone_block": torch.arange(6.0).reshape(2, 3),
        "base_model.model.lin0.base_layer.bias": torch.ones(3),
        "base_model.model.head.weight": torch.zeros(2, 3),
    }
    config = {**bone_config(2, "bat"), "peft_type": "BONE", "task_type": None, "bias": "bone_only", "revision": None}
    return tensors, config


def test_convert_bone_to_miss():
    """MISS-CONV-1: ".bone_" → ".miss_" in every key, peft_type "MISS", every other field kept, miss_dropout 0.0 and
    mini_r 1 added; tensors bitwise equal; inputs untouched."""
    tensors, config = _bone_files()
    before = dict(config)
    new_tensors, new_config = oracle.convert_bone_to_miss(tensors, config)
    assert set(new_tensors) == {
        "base_model.model.lin0.miss_block",
        "base_model.model.lin0.base_layer.bias",
        "base_model.model.head.weight",
    }
    assert torch.equal(new_tensors["base_model.model.lin0.miss_block"], tensors["base_model.model.lin0.bone_block"])
    assert new_config == {**before, "peft_type": "MISS", "miss_dropout": 0.0, "mini_r": 1}
    assert config == before and "base_model.model.lin0.bone_block" in tensors
    with pytest.raises(ValueError, match="peft_type"):
        oracle.convert_bone_to_miss(tensors, {**config, "peft_type": "MISS"})


def test_convert_miss_to_bone_and_round_trip():
    """MISS-CONV-2: reverse rename, peft_type "BONE", mini_r and miss_dropout dropped; Bone → MiSS → Bone is the
    identity on keys, tensors and config."""
    tensors, config = _bone_files()
    back_tensors, back_config = oracle.convert_miss_to_bone(*oracle.convert_bone_to_miss(tensors, config))
    assert back_config == config
    assert back_tensors.keys() == tensors.keys()
    assert all(torch.equal(back_tensors[k], tensors[k]) for k in tensors)


def test_convert_miss_to_bone_rejects_mini_and_warns_on_dropout():
    """MISS-CONV-2: "mini" → ValueError naming init_weights; miss_dropout > 0 warns (training-time dropout dropped)."""
    tensors = {"base_model.model.lin0.miss_block": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="init_weights"):
        oracle.convert_miss_to_bone(tensors, {**miss_config(2, "mini", mini_r=2), "peft_type": "MISS"})
    with pytest.warns(UserWarning, match="dropout"):
        _, cfg = oracle.convert_miss_to_bone(tensors, {**miss_config(2, False, miss_dropout=0.1), "peft_type": "MISS"})
    assert "miss_dropout" not in cfg and "mini_r" not in cfg and cfg["peft_type"] == "BONE"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle.convert_miss_to_bone(tensors, {**miss_config(2, True), "peft_type": "MISS"})
