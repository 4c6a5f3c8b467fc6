"""Family `safe_merge`: `safe_merge=True` checks the merged tensors before writing them (SPEC §1.8 CORE-MERGE-7…9,
IA3-MERGE-6): a non-finite merge is rejected naming the adapter with the base tensors untouched, a successful safe
merge equals the unsafe one bitwise, and a failure part-way through a list keeps exactly the adapters before it."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from conformance.assertions import assert_equal, assert_raises_clause
from conformance.drivers.base import Driver
from conformance.scenes import (
    ALL_DTYPES,
    SECOND,
    THIRD,
    Scene,
    assert_tensors_close,
    assert_unchanged,
    build,
    draw_setup,
    fill_row,
    offers,
    require_lifecycle,
)
from conformance.strategies import DTYPES

NON_FINITE = (math.nan, math.inf, -math.inf)


def breaker(data: st.DataObject, broken: str):
    """A `build` perturbation that sets one drawn entry of one drawn parameter of adapter `broken` (on every key) to
    a drawn non-finite value; the other adapters keep their generic values."""
    seed = data.draw(st.integers(0, 2**16), label="broken entry")
    value = data.draw(st.sampled_from(NON_FINITE), label="non-finite value")

    def perturb(name: str, key: str, params: dict) -> dict:
        if name != broken:
            return params
        generator = torch.Generator().manual_seed(seed)
        target = sorted(params)[int(torch.randint(len(params), (1,), generator=generator))]
        flat = params[target].flatten().clone()
        flat[int(torch.randint(flat.numel(), (1,), generator=generator))] = value
        return {**params, target: flat.reshape(params[target].shape)}

    return perturb


def merge_is_non_finite(scene: Scene, driver: Driver, name: str) -> bool:
    """Whether merging `name` into the live base tensors writes a non-finite element into the weight or a modified
    bias (in the base dtype), by the oracle; an adapter the oracle has no closed form for (e.g. HRA-R-3's
    non-finite column) counts too: a safe merge must reject it."""
    try:
        weight, bias = scene.effective(driver, [name])
    except ValueError:
        return True
    dtype = DTYPES[scene.setup.row.dtype]
    return any(t is not None and not bool(torch.isfinite(t.to(dtype)).all()) for t in (weight, bias))


@pytest.mark.contract("CORE-MERGE-7", axes=("variant",))
@given(data=st.data())
def test_safe_merge_rejects_non_finite(row, driver, data):
    """CORE-MERGE-7: a safe merge whose merged weight (or modified bias) would hold a non-finite element raises
    ValueError naming the adapter; the base tensors keep, bitwise, their values from before this adapter's merge
    (another adapter may be merged already) and the adapter is not recorded as merged."""
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    lifecycle = offers(driver, row.tuner, "lifecycle")
    setup = draw_setup(driver, row, data, ("default", SECOND) if lifecycle else (SECOND,))
    scene = build(driver, setup, perturb=breaker(data, SECOND))
    ctx, model = scene.context, scene.model
    merged_before = ["default"] if lifecycle and data.draw(st.booleans(), label="merge default first") else []
    if merged_before:
        driver.merge(model, merged_before)
    assume(merge_is_non_finite(scene, driver, SECOND))
    before = scene.tensors(driver)
    assert_raises_clause(ctx, (ValueError,), SECOND, lambda: driver.merge(model, [SECOND], safe=True))
    assert_unchanged(ctx, f"after the rejected safe merge of {SECOND!r}", scene.tensors(driver), before)
    assert_equal(
        ctx, f"merged_adapters after the rejected safe merge of {SECOND!r}", scene.merged(driver), merged_before
    )


@pytest.mark.contract("CORE-MERGE-8", axes=("dtype",))
@given(data=st.data())
def test_safe_merge_equals_unsafe(row, driver, data):
    """CORE-MERGE-8: a successful safe merge writes bitwise the same base tensors as the unsafe one (two models
    built identically, the same adapters merged in the same order)."""
    row = fill_row(row, driver, data)
    names = ("default", SECOND) if offers(driver, row.tuner, "lifecycle") else ("default",)
    setup = draw_setup(driver, row, data, names)
    unsafe, safe = build(driver, setup), build(driver, setup)
    order = data.draw(st.permutations(list(names)), label="merge order")
    driver.merge(unsafe.model, order, safe=False)
    driver.merge(safe.model, order, safe=True)
    ctx = safe.context
    assert_unchanged(ctx, f"safe merge of {order} vs the unsafe merge", safe.tensors(driver), unsafe.tensors(driver))
    assert_equal(ctx, "merged_adapters of the safe merge vs the unsafe one", safe.merged(driver), unsafe.merged(driver))


@pytest.mark.contract("CORE-MERGE-9", axes=("variant",))
@given(data=st.data())
def test_partial_safe_merge(row, driver, data):
    """CORE-MERGE-9: when a safe merge of [a1, a2, a3] fails at a_j, a_1…a_{j−1} stay merged and recorded, a_j…a_k
    are not merged, and the base tensors are those after a_{j−1} (bitwise the originals when j = 1, the oracle's
    effective tensors of a_1…a_{j−1} otherwise, ⟨N⟩)."""
    require_lifecycle(driver, row)
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    names = [SECOND, THIRD, "kappa"]
    j = data.draw(st.integers(0, len(names) - 1), label="failing position")
    scene = build(driver, draw_setup(driver, row, data, names), perturb=breaker(data, names[j]))
    ctx = scene.context
    assume(merge_is_non_finite(scene, driver, names[j]))
    original = scene.tensors(driver)
    expected = scene.effective(driver, names[:j])
    assert_raises_clause(ctx, (ValueError,), names[j], lambda: driver.merge(scene.model, names, safe=True))
    assert_equal(
        ctx, f"merged_adapters after the safe merge of {names} failed at {names[j]!r}", scene.merged(driver), names[:j]
    )
    what = f"base tensors after the safe merge of {names} failed at {names[j]!r}"
    if j == 0:
        assert_unchanged(ctx, what, scene.tensors(driver), original)
    else:
        assert_tensors_close(scene, what, scene.tensors(driver), expected)


@pytest.mark.contract("IA3-MERGE-6", axes=("variant",), variants=("plain",))
@given(data=st.data())
def test_ia3_safe_merge_checks_bias(row, driver, data):
    """IA3-MERGE-6: a non-feedforward safe merge checks the merged bias too: with a finite merged weight but a bias
    entry that overflows (b_o = max/2 of the dtype, l_o = 4), it raises ValueError naming the adapter and leaves the
    base tensors bitwise unchanged, the adapter unrecorded."""
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    setup = draw_setup(driver, row, data, (SECOND,))
    o = data.draw(st.integers(0, setup.layer.out_features - 1), label="overflowing channel")
    huge = torch.finfo(DTYPES[row.dtype]).max / 2

    def enlarge(name: str, key: str, params: dict) -> dict:
        out = {}
        for param, value in params.items():
            flat = value.flatten().clone()
            flat[o] = 4.0
            out[param] = flat.reshape(value.shape)
        return out

    def big_bias(base: nn.Module) -> None:
        with torch.no_grad():
            base.bias[o] = huge

    scene = build(driver, setup, perturb=enlarge, prepare=big_bias)
    ctx, model = scene.context, scene.model
    weight, bias = scene.effective(driver, [SECOND])
    dtype = DTYPES[row.dtype]
    assume(bool(torch.isfinite(weight.to(dtype)).all()) and not bool(torch.isfinite(bias.to(dtype)).all()))
    before = scene.tensors(driver)
    assert_raises_clause(ctx, (ValueError,), SECOND, lambda: driver.merge(model, [SECOND], safe=True))
    assert_unchanged(ctx, "after the rejected safe merge (overflowing bias)", scene.tensors(driver), before)
    assert_equal(ctx, "merged_adapters after the rejected safe merge (overflowing bias)", scene.merged(driver), [])
