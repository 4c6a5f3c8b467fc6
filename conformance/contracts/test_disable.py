"""Family `disable`: inside `disable_adapter()` every tuner layer computes its base layer and `modules_to_save`
wrappers their original module (SPEC §1.7 CORE-LIFE-6); leaving the context, also by an exception, restores the
adapters and the outputs (CORE-LIFE-7); with a `bias` option other than "none" disabling warns (CORE-BIAS-4).

Merged adapters make the comparisons round trips: §8's unmerge class of the tuner, with the round-trip scale over
the tensors written, and for IA3 in float64 the ⟨A⟩ bound of its unmerge carried through `op` (`op(|x|; B_W, B_b)`
bounds the output error of weights within `B`)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conformance.assertions import assert_close_to_oracle, assert_equal, fail
from conformance.contracts.test_lifecycle import (
    HEAD,
    batched_input,
    bias_values,
    build_rig,
    draw_bias,
    has_bias_option,
    setup_for,
)
from conformance.drivers.base import Driver
from conformance.harness import KEY
from conformance.rows import RowSpec
from conformance.scenes import (
    ALL_DTYPES,
    SECOND,
    Scene,
    assert_restored,
    assert_warned,
    caught_warnings,
    fill_row,
    unmerge_class,
)
from conformance.spec.layer import Adapter, op
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import scale, tolerance

ORDERS = (["default"], [SECOND], ["default", SECOND], [SECOND, "default"])


class Raised(Exception):
    """Raised inside the disable context by the suite (CORE-LIFE-7: leaving it by an exception)."""


def round_trip_extra(
    scene: Scene, x: torch.Tensor, bounds_from: dict, reverted: dict[str, list[Adapter]]
) -> torch.Tensor | float:
    """§8's "plus ⟨N⟩" part of the IA3 ⟨A⟩ unmerge class for an output (float64 only; 0 for every other class):
    Σ over keys of op(|x|; B_W, B_b), with (B_W, B_b) the oracle's `unmerge_bound` over the reverted adapters taken
    on `bounds_from[key]` — the original tensors for weights restored from them, the merged tensors for outputs of
    adapters re-applied to restored weights (the error scales with the merged weight, |l|·|W|·1e-8/|l + 1e-8|)."""
    row, record = scene.setup.row, scene.setup.record
    if unmerge_class(record, row.variant) != "A-IA3" or row.dtype != "float64":
        return 0.0
    total = 0.0
    for key, (weight, bias) in bounds_from.items():
        if reverted[key]:
            bound_w, bound_b = record.oracle.unmerge_bound(weight, bias, scene.setup.layer, reverted[key])
            total = total + op(x.double().abs(), bound_w, bound_b, scene.setup.layer)
    return total


def merged_scene(
    row: RowSpec, driver: Driver, data: st.DataObject, *, merged: bool, head: bool = False, orders: tuple = ORDERS
) -> tuple[Scene, dict, dict, dict]:
    """Two adapters on a one- or two-layer Rig (optionally with a `modules_to_save` head owned by `default`, its copy
    set to its own values), a drawn active list and `bias` option, the active adapters merged if `merged`. Returns
    the scene, the original and the written (after the merge) tensors per key, and the merged adapters per key."""
    record = RECORDS[row.tuner]
    setup = setup_for(row, driver, data, ("default", SECOND), twin=data.draw(st.booleans(), label="twin"))
    bias = draw_bias(record, data, allow_all=not head)  # "all" would also train the frozen original head's bias
    if bias is not None:
        setup.configs["default"]["bias"] = bias
    if head:
        setup.configs["default"]["modules_to_save"] = [HEAD]
    scene, _ = build_rig(driver, setup, head=head)
    model, keys = scene.model, setup.keys
    active = data.draw(st.sampled_from(orders), label="active list")
    driver.set_active(model, active)
    copy_ = driver.saved_module(model, HEAD, "default") if head else None
    if copy_ is not None:
        generator = torch.Generator().manual_seed(setup.seed + 4)
        with torch.no_grad():
            for p in copy_.parameters():
                p.copy_(torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1)
    original = {key: scene.tensors(driver, key) for key in keys}
    reverted = {key: scene.adapters(driver, active, key) if merged else [] for key in keys}
    if merged:
        driver.merge(model)
    written = {key: scene.tensors(driver, key) for key in keys}
    return scene, original, written, reverted


@pytest.mark.contract("CORE-LIFE-6")
@given(data=st.data())
def test_disabled_is_base(row, driver, data):
    """CORE-LIFE-6: inside `disable_adapter()` the output is the base model's: with nothing merged, bitwise the live
    base layers applied to x (then the original `modules_to_save` head, not the active adapter's copy); with the
    active adapters merged, op(x; W, b) of the original tensors within the tuner's unmerge class (round-trip scale,
    IA3's ⟨A⟩ bound carried through op)."""
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    merged = data.draw(st.booleans(), label="merged")
    head = not merged and data.draw(st.booleans(), label="modules_to_save head")
    scene, original, written, reverted = merged_scene(row, driver, data, merged=merged, head=head)
    ctx, model, keys, setup = scene.context, scene.model, scene.setup.keys, scene.setup
    x = batched_input(scene, data)
    entry = scene.merged(driver)
    with torch.no_grad(), driver.disabled(model):
        y = model(x)
    if not merged:
        with torch.no_grad():
            z = driver.layer_state(model, KEY).base_layer(x)
            for key in keys[1:]:
                z = z + driver.layer_state(model, key).base_layer(x)
            if head:
                z = driver.saved_module(model, HEAD)(z)
        what = "output inside disable_adapter() vs the base layers" + (" and the original head" if head else "")
        assert_equal(ctx, what, y, z)
        return
    expected = scene.expected_output(x, original)
    cls = unmerge_class(setup.record, row.variant)
    now = [t for key in keys for t in (*written[key], *scene.tensors(driver, key)) if t is not None]
    assert_close_to_oracle(
        context=ctx,
        what=f"output inside disable_adapter() with {entry} merged, vs op(x; W, b) of the original tensors ({cls})",
        actual=y,
        expected=expected,
        tol=tolerance(cls, row.dtype),
        scale=scale(expected, *now),
        extra=round_trip_extra(scene, x, original, reverted),
    )


@pytest.mark.contract("CORE-LIFE-7")
@given(data=st.data())
def test_leaving_disable(row, driver, data):
    """CORE-LIFE-7: after leaving `disable_adapter()` (after a forward inside; normally or by an exception, which
    propagates) the active lists (both adapters, in a drawn order) are those before; `merged_adapters` describes
    the weights (nothing merged: restored within the unmerge class; still merged: the merged tensors within it);
    the output equals the one before entering: ⟨N⟩ if nothing was merged, within the unmerge class if it was."""
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    merged = data.draw(st.booleans(), label="merged")
    scene, original, written, reverted = merged_scene(row, driver, data, merged=merged, orders=ORDERS[2:])
    ctx, model, keys, record = scene.context, scene.model, scene.setup.keys, scene.setup.record
    x = batched_input(scene, data)
    lists = {key: driver.layer_state(model, key).active_adapters for key in keys}
    entry = {key: scene.merged(driver, key) for key in keys}
    with torch.no_grad():
        before = model(x)
    by_exception = data.draw(st.booleans(), label="leave by an exception")
    escaped = False
    try:
        with torch.no_grad(), driver.disabled(model):
            model(x)
            if by_exception:
                raise Raised("raised by the suite inside disable_adapter()")
    except Raised:
        escaped = True
    how = "by an exception" if by_exception else "normally"
    if by_exception and not escaped:
        fail(ctx, "an exception raised inside disable_adapter() did not propagate out of it")
    written_now = []
    for key in keys:
        got = driver.layer_state(model, key).active_adapters
        assert_equal(ctx, f"active adapters of {key!r} after leaving disable_adapter() {how}", got, lists[key])
        now, live = scene.merged(driver, key), scene.tensors(driver, key)
        written_now += [t for t in (*written[key], *live) if t is not None]
        what = f"{key} after leaving disable_adapter() {how} with merged_adapters {now} (on entry {entry[key]})"
        if now == entry[key] and now:
            assert_restored(
                scene,
                restored=live,
                original=written[key],
                written=[*written[key], *live],
                reverted=reverted[key],
                what=what,
            )
        elif not now:
            assert_restored(
                scene,
                restored=live,
                original=original[key],
                written=[*written[key], *live],
                reverted=reverted[key],
                what=what,
            )
        else:
            fail(
                ctx, f"merged_adapters of {key!r} after leaving disable_adapter() {how} = {now}, on entry {entry[key]}"
            )
    with torch.no_grad():
        after = model(x)
    cls = unmerge_class(record, row.variant) if merged else "N"
    assert_close_to_oracle(
        context=ctx,
        what=f"output after leaving disable_adapter() {how} vs before entering ({entry[KEY]} merged, class {cls})",
        actual=after,
        expected=before,
        tol=tolerance(cls, row.dtype),
        scale=scale(before, *written_now),
        extra=round_trip_extra(scene, x, written, reverted),
    )


@pytest.mark.contract("CORE-BIAS-4")
@given(data=st.data())
def test_disable_with_bias_warns(row, driver, data):
    """CORE-BIAS-4: entering `disable_adapter()` (and a forward inside) while an active adapter has `bias` other than
    "none" warns that the output is not the base model's. (Tuners without the option: not applicable.)"""
    if not has_bias_option(RECORDS[row.tuner]):
        pytest.skip("not applicable: the tuner has no `bias` option (CORE-BIAS-1: it behaves as 'none')")
    row = fill_row(row, driver, data)
    setup = setup_for(row, driver, data, ("default", SECOND))
    holder = data.draw(st.sampled_from(["default", SECOND]), label="adapter with the bias option")
    bias = data.draw(bias_values(), label="its bias")
    setup.configs[holder]["bias"] = bias
    scene, _ = build_rig(driver, setup)
    model = scene.model
    active = data.draw(st.sampled_from([a for a in ORDERS if holder in a]), label="active list")
    driver.set_active(model, active)
    x = batched_input(scene, data)

    def run() -> None:
        with torch.no_grad(), driver.disabled(model):
            model(x)

    what = f"disable_adapter() with {active} active, {holder!r} having bias={bias!r}"
    assert_warned(scene.context, what, caught_warnings(run))
