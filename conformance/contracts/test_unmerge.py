"""Family `unmerge`: unmerging reverts merged adapters last-in-first-out and restores the base weights within each
tuner's unmerge class (SPEC §1.8 CORE-MERGE-5/6, §8's round-trip scale rule), with the tuners' own unmerge rules:
BAT's inverse and its singular case (BONE-BAT-3/4), HRA's transpose (HRA-MERGE-2) and IA3's approximate division
(IA3-MERGE-2…5)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conformance.assertions import assert_close_to_oracle, assert_equal, assert_raises_clause, fail
from conformance.drivers.base import Discrepancy, Driver
from conformance.rows import RowSpec
from conformance.scenes import (
    ALL_DTYPES,
    SECOND,
    assert_restored,
    assert_unchanged,
    assert_warned,
    build,
    caught_warnings,
    draw_setup,
    fill_row,
    offers,
    scene_for,
    unmerge_class,
    user_warnings,
)
from conformance.spec.tolerances import scale, tolerance


def _names(driver: Driver, row: RowSpec, data: st.DataObject, most: int = 2) -> tuple[str, ...]:
    """One adapter, or up to `most` where the lifecycle surface lets the suite add a second one."""
    count = data.draw(st.integers(1, most), label="adapters") if offers(driver, row.tuner, "lifecycle") else 1
    return ("default", SECOND)[:count]


@pytest.mark.contract("CORE-MERGE-5", axes=("variant",))
@given(data=st.data())
def test_unmerge_lifo(row, driver, data):
    """CORE-MERGE-5: with nothing merged, `unmerge()` warns and changes nothing; after merging a1 then a2 (separate
    calls; their order matters for HRA and BAT) it reverts them last-in-first-out: nothing stays merged and the
    base tensors are restored within the tuner's unmerge class (FIFO would leave W R1 R2 R1ᵀ R2ᵀ ≠ W)."""
    names = ("default", SECOND) if offers(driver, row.tuner, "lifecycle") else ("default",)
    scene = scene_for(row, driver, data, names)
    ctx, model = scene.context, scene.model
    original = scene.tensors(driver)
    assert_warned(ctx, "unmerge() with nothing merged", caught_warnings(lambda: driver.unmerge(model)))
    assert_unchanged(ctx, "after unmerge() with nothing merged", scene.tensors(driver), original)
    assert_equal(ctx, "merged_adapters after unmerge() with nothing merged", scene.merged(driver), [])

    order = data.draw(st.permutations(scene.names), label="merge order")
    for name in order:
        driver.merge(model, [name])
    merged = scene.tensors(driver)
    driver.unmerge(model)
    restored = scene.tensors(driver)
    assert_equal(ctx, f"merged_adapters after merging {order} one by one and unmerge()", scene.merged(driver), [])
    assert_restored(
        scene,
        restored=restored,
        original=original,
        written=[*merged, *restored],
        reverted=scene.adapters(driver, order),
        what=f"after merging {order} one by one and unmerge()",
    )


@pytest.mark.contract("CORE-MERGE-6", axes=("variant", "dtype"))
@given(data=st.data())
def test_merge_unmerge_restores(row, driver, data):
    """CORE-MERGE-6: merge then unmerge restores the base weight and bias within the tuner's unmerge class: ⟨N⟩,
    IA3 ⟨A⟩ (IA3-MERGE-2's bound in float64), BAT A-INV, with §8's round-trip scale."""
    scene = scene_for(row, driver, data)
    original = scene.tensors(driver)
    driver.merge(scene.model)
    merged = scene.tensors(driver)
    driver.unmerge(scene.model)
    restored = scene.tensors(driver)
    assert_equal(scene.context, "merged_adapters after merge() and unmerge()", scene.merged(driver), [])
    assert_restored(
        scene,
        restored=restored,
        original=original,
        written=[*merged, *restored],
        reverted=scene.adapters(driver, ["default"]),
    )


def check_unmerge_rule(row: RowSpec, driver: Driver, data: st.DataObject) -> None:
    """A tuner's unmerge rule: after merging one or two adapters, `unmerge()` writes the oracle's LIFO unmerge of the
    merged tensors read back, and so restores the originals, both within the tuner's unmerge class (round-trip S)."""
    scene = scene_for(row, driver, data, _names(driver, row, data))
    record, layer = scene.setup.record, scene.setup.layer
    order = data.draw(st.permutations(scene.names), label="merge order")
    original = scene.tensors(driver)
    driver.merge(scene.model, order)
    merged = scene.tensors(driver)
    expected = merged
    for adapter in reversed(scene.adapters(driver, order)):
        expected = record.oracle.unmerge(*expected, layer, adapter)
    driver.unmerge(scene.model)
    restored = scene.tensors(driver)
    cls = unmerge_class(record, scene.setup.row.variant)
    tol = tolerance(cls, scene.setup.row.dtype)
    for index, part in enumerate(("weight", "bias")):
        if expected[index] is None:
            continue
        assert_close_to_oracle(
            context=scene.context,
            what=f"base {part} after merging {order} and unmerge(), vs the unmerge rule applied LIFO (class {cls})",
            actual=restored[index],
            expected=expected[index],
            tol=tol,
            scale=scale(expected[index], *merged, *restored),
        )
    assert_restored(
        scene,
        restored=restored,
        original=original,
        written=[*merged, *restored],
        reverted=scene.adapters(driver, order),
        what=f"after merging {order} and unmerge()",
    )


@pytest.mark.contract("BONE-BAT-3", axes=("variant", "dtype"), variants=("bat",))
@given(data=st.data())
def test_bat_unmerge_inverse(row, driver, data):
    """BONE-BAT-3: unmerge (LIFO) applies W_{p,c} ← (W_{p,c} − B[p])(I + B[p])⁻¹ tile-wise and restores W within
    the A-INV class."""
    check_unmerge_rule(row, driver, data)


@pytest.mark.contract("HRA-MERGE-2", axes=("variant", "dtype"))
@given(data=st.data())
def test_hra_unmerge_transpose(row, driver, data):
    """HRA-MERGE-2: unmerge (LIFO) applies W_flat ← W_flat R_aᵀ (R_GS itself with Gram–Schmidt) and restores W
    up to round-off (⟨N⟩)."""
    check_unmerge_rule(row, driver, data)


@pytest.mark.contract("BONE-BAT-4", axes=("variant",), variants=("bat",))
@given(data=st.data())
def test_bat_singular_unmerge(row, driver, data):
    """BONE-BAT-4: if some I + B[p] is exactly singular (B[p] = −I), unmerge raises ValueError (or LinAlgError)
    naming the adapter, which stays merged and recorded with the weight untouched; adapters merged after it are
    reverted first (LIFO); no non-finite weight is ever written."""
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    names = ("default", SECOND) if offers(driver, row.tuner, "lifecycle") else (SECOND,)
    setup = draw_setup(driver, row, data, names)
    r = setup.configs[SECOND]["r"]
    p = data.draw(st.integers(0, setup.layer.out_features // r - 1), label="singular block")

    def singular(name: str, key: str, params: dict) -> dict:
        if name != SECOND:
            return params
        out = {}
        for param, value in params.items():
            value = value.clone()
            value[p] = -torch.eye(r, dtype=value.dtype)
            out[param] = value
        return out

    scene = build(driver, setup, perturb=singular)
    ctx, model = scene.context, scene.model
    order = data.draw(st.permutations(scene.names), label="merge order")
    driver.merge(model, order)
    merged = scene.tensors(driver)
    assert_raises_clause(ctx, (ValueError, torch.linalg.LinAlgError), SECOND, lambda: driver.unmerge(model))
    stays = order[: order.index(SECOND) + 1]
    assert_equal(ctx, f"merged_adapters after the failed unmerge (merge order {order})", scene.merged(driver), stays)
    now = scene.tensors(driver)
    if not torch.isfinite(now[0]).all():
        fail(ctx, "the failed unmerge wrote non-finite weight elements")
    if stays == order:
        assert_unchanged(ctx, f"after the failed unmerge of {SECOND!r} (merged last)", now, merged)
        return
    expected = merged
    for adapter in reversed(scene.adapters(driver, order[len(stays) :])):
        expected = scene.setup.record.oracle.unmerge(*expected, scene.setup.layer, adapter)
    assert_close_to_oracle(
        context=ctx,
        what=f"base weight after unmerge() reverted {order[len(stays) :]} and stopped at {SECOND!r}",
        actual=now[0],
        expected=expected[0],
        tol=tolerance("A-INV", row.dtype),
        scale=scale(expected[0], merged[0], now[0]),
    )


# ---------------------------------------------------------------------------------------------------------------
# IA3's approximate unmerge


@pytest.mark.contract("IA3-MERGE-2", axes=("variant", "dtype"))
@given(data=st.data())
def test_ia3_unmerge_bound(row, driver, data):
    """IA3-MERGE-2: merging one or two IA3 adapters and unmerging (LIFO) restores W (and, non-feedforward, b) within
    §8's ⟨A⟩ rule: |W_rec − W| ≤ |W|·Σ_a 1e-8/|l_a + 1e-8| plus ⟨N⟩ in float64, ⟨N⟩ in the other dtypes."""
    scene = scene_for(row, driver, data, _names(driver, row, data))
    order = data.draw(st.permutations(scene.names), label="merge order")
    original = scene.tensors(driver)
    driver.merge(scene.model, order)
    merged = scene.tensors(driver)
    driver.unmerge(scene.model)
    restored = scene.tensors(driver)
    assert_restored(
        scene,
        restored=restored,
        original=original,
        written=[*merged, *restored],
        reverted=scene.adapters(driver, order),
        what=f"after merging {order} and unmerge()",
        cls="A-IA3",
    )


@pytest.mark.contract("IA3-MERGE-3")
@given(data=st.data())
def test_ia3_unmerge_warns(row, driver, data):
    """IA3-MERGE-3: every `unmerge()` that reverts an IA3 adapter warns that the result can be inaccurate."""
    scene = scene_for(row, driver, data, dtypes=ALL_DTYPES)
    for attempt in ("first", "second"):
        driver.merge(scene.model)
        assert_warned(
            scene.context,
            f"the {attempt} unmerge() of a merged adapter",
            caught_warnings(lambda: driver.unmerge(scene.model)),
        )


@pytest.mark.contract("IA3-MERGE-4")
@given(data=st.data())
def test_ia3_zero_entries_stay_zero(row, driver, data):
    """IA3-MERGE-4: entries scaled by l = 0 are exactly 0 after merging and stay 0 after unmerging (⟨Z⟩)."""
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    setup = draw_setup(driver, row, data)
    zero_seed = data.draw(st.integers(0, 2**16), label="zero entries")

    def zeros(name: str, key: str, params: dict) -> dict:
        generator = torch.Generator().manual_seed(zero_seed)
        out = {}
        for param, value in params.items():
            flat = value.flatten().clone()
            mask = torch.rand(flat.shape, generator=generator) < 0.4
            mask[int(torch.randint(flat.numel(), (1,), generator=generator))] = True
            flat[mask] = 0.0
            out[param] = flat.reshape(value.shape)
        return out

    scene = build(driver, setup, perturb=zeros)
    ctx = scene.context
    effective = scene.effective(driver, ["default"])
    masks = [None if t is None else t == 0 for t in effective]
    driver.merge(scene.model)
    merged = scene.tensors(driver)
    driver.unmerge(scene.model)
    restored = scene.tensors(driver)
    for step, tensors in (("merge", merged), ("merge and unmerge", restored)):
        for index, part in enumerate(("weight", "bias")):
            if masks[index] is None:
                continue
            values = tensors[index][masks[index]]
            assert_equal(ctx, f"base {part} entries scaled by l = 0, after {step}", values, torch.zeros_like(values))


# IA3-MERGE-5's explicit warning says that non-finite values were produced ("inaccurate" does not).
NON_FINITE_WORDING = re.compile(r"non-?finite|not finite|\bnan\b|\binf\b|infinit", re.IGNORECASE)


@pytest.mark.contract("IA3-MERGE-5")
@given(data=st.data())
def test_ia3_unmerge_never_silently_non_finite(row, driver, data):
    """IA3-MERGE-5: unmerging an adapter with an entry l = −1e-8 (divisor l + 1e-8 = 0) never writes non-finite
    values silently: it raises ValueError naming the adapter before changing its tensors (which stay merged), or
    warns explicitly, naming the adapter, that non-finite values were produced (IA3-MERGE-3's general inaccuracy
    warning does not count)."""
    row = fill_row(row, driver, data, dtypes=("float64", "float32"))
    setup = draw_setup(driver, row, data, (SECOND,))
    entry_seed = data.draw(st.integers(0, 2**16), label="entry")

    def tiny(name: str, key: str, params: dict) -> dict:
        generator = torch.Generator().manual_seed(entry_seed)
        out = {}
        for param, value in params.items():
            flat = value.flatten().clone()
            flat[int(torch.randint(flat.numel(), (1,), generator=generator))] = -1e-8
            out[param] = flat.reshape(value.shape)
        return out

    scene = build(driver, setup, perturb=tiny)
    ctx, model = scene.context, scene.model
    driver.merge(model)
    merged = scene.tensors(driver)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            driver.unmerge(model)
            raised = None
        except Exception as exc:  # the verdict depends on the exception's type and message
            raised = exc
    if raised is not None:
        if not isinstance(raised, ValueError):
            fail(ctx, f"unmerge() raised {type(raised).__name__}({raised}), but should raise ValueError or warn")
        if SECOND.lower() not in str(raised).lower():
            fail(ctx, f"the ValueError raised by unmerge() does not name the adapter {SECOND!r}: {raised}")
        assert_unchanged(ctx, "after the rejected unmerge", scene.tensors(driver), merged)
        assert_equal(ctx, "merged_adapters after the rejected unmerge", scene.merged(driver), [SECOND])
        return
    now = scene.tensors(driver)
    finite = all(t is None or bool(torch.isfinite(t).all()) for t in now)
    explicit = [w for w in user_warnings(list(caught), SECOND) if NON_FINITE_WORDING.search(str(w.message))]
    if not finite and not explicit:
        emitted = [f"{w.category.__name__}: {w.message}" for w in caught]
        shown = Discrepancy("the checked operation", (), ("UserWarning", SECOND), emitted, 0.0, "call",
                            kind="silent_nonfinite", wording=NON_FINITE_WORDING.pattern)  # fmt: skip
        fail(
            ctx,
            f"unmerge() wrote non-finite values silently (no ValueError, no warning naming {SECOND!r} that says "
            "non-finite values were produced)",
            shown,
        )
