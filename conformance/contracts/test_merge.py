"""Family `merge`: merging folds adapters into the base weights (SPEC §1.8 CORE-MERGE-1…4, 10…12, 14, CORE-FWD-9)
and the merged weight is the oracle's effective weight (each tuner's merge clause).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from conformance.assertions import assert_close_to_oracle, assert_equal, assert_raises_clause, fail
from conformance.drivers.base import Driver
from conformance.harness import KEY, Holder
from conformance.rows import RowSpec
from conformance.scenes import (
    ALL_DTYPES,
    INNER,
    SECOND,
    THIRD,
    assert_restored,
    assert_tensors_close,
    assert_unchanged,
    assert_warned,
    build,
    caught_warnings,
    draw_setup,
    fill_row,
    offers,
    require_lifecycle,
    scene_for,
    user_warnings,
)
from conformance.spec.record import TunerRecord
from conformance.spec.tolerances import scale, tolerance
from conformance.strategies import build_base

# ---------------------------------------------------------------------------------------------------------------
# CORE-MERGE-1: selection and order


@pytest.mark.contract("CORE-MERGE-1")
@given(data=st.data())
def test_merge_selection_and_order(row, driver, data):
    """CORE-MERGE-1: `merge()` takes the active adapters in active-list order; a list merges its names in list
    order, inactive ones included, and names absent from a layer are skipped there silently; a bare string is
    rejected with TypeError (changing nothing)."""
    require_lifecycle(driver, row)
    row = fill_row(row, driver, data)
    targets = {THIRD: r"inner\.layer"}  # a regex string: only `inner.layer` carries THIRD
    scene = build(driver, draw_setup(driver, row, data, ("default", SECOND, THIRD), twin=True, targets=targets))
    ctx, model = scene.context, scene.model
    before = {key: scene.tensors(driver, key) for key in scene.setup.keys}

    assert_raises_clause(ctx, (TypeError,), "", lambda: driver.merge(model, "default"))
    for key in scene.setup.keys:
        assert_equal(ctx, f"merged_adapters of {key} after merge('default')", scene.merged(driver, key), [])
        assert_unchanged(ctx, f"{key} after the rejected merge('default')", scene.tensors(driver, key), before[key])

    driver.set_active(model, [SECOND, "default"])
    driver.merge(model)
    for key in scene.setup.keys:
        got = scene.merged(driver, key)
        assert_equal(
            ctx, f"merged_adapters of {key} after merge() with active [{SECOND}, default]", got, [SECOND, "default"]
        )
    driver.unmerge(model)

    driver.set_active(model, ["default"])
    requested = [THIRD, SECOND, "default"]
    caught = caught_warnings(lambda: driver.merge(model, requested))
    expected = {KEY: [SECOND, "default"], INNER: requested}
    for key in scene.setup.keys:
        got = scene.merged(driver, key)
        assert_equal(
            ctx, f"merged_adapters of {key} after merge({requested}) with active [default]", got, expected[key]
        )
    noisy = user_warnings(caught, THIRD)
    if noisy:
        fail(
            ctx, f"merging {requested}: {THIRD} is absent from `layer` and must be skipped silently: {noisy[0].message}"
        )


# ---------------------------------------------------------------------------------------------------------------
# CORE-MERGE-2, CORE-MERGE-3: idempotence and bookkeeping


@pytest.mark.contract("CORE-MERGE-2")
@given(data=st.data())
def test_merge_is_idempotent(row, driver, data):
    """CORE-MERGE-2: names already merged are skipped with a warning; when none remain the warning says so and
    nothing changes (bitwise)."""
    require_lifecycle(driver, row)
    scene = scene_for(row, driver, data, ("default", SECOND), dtypes=ALL_DTYPES)
    ctx, model = scene.context, scene.model
    original = scene.tensors(driver)
    driver.merge(model, ["default"])
    once = scene.tensors(driver)
    assert_warned(
        ctx, "merging the merged adapter ['default'] again", caught_warnings(lambda: driver.merge(model, ["default"]))
    )
    assert_unchanged(ctx, "after merging ['default'] twice", scene.tensors(driver), once)
    assert_equal(ctx, "merged_adapters after merging ['default'] twice", scene.merged(driver), ["default"])

    caught = caught_warnings(lambda: driver.merge(model, ["default", SECOND]))
    assert_warned(ctx, f"merge(['default', {SECOND!r}]) with 'default' merged", caught)
    assert_equal(
        ctx, f"merged_adapters after merge(['default', {SECOND!r}])", scene.merged(driver), ["default", SECOND]
    )
    expected = scene.effective(driver, ["default", SECOND], base=original)
    assert_tensors_close(
        scene,
        f"merged tensors after merge(['default', {SECOND!r}]) with 'default' merged",
        scene.tensors(driver),
        expected,
    )

    both = scene.tensors(driver)
    assert_warned(ctx, "merge() with every active adapter merged", caught_warnings(lambda: driver.merge(model)))
    assert_unchanged(ctx, "after merge() with every active adapter merged", scene.tensors(driver), both)
    assert_equal(ctx, "merged_adapters after the idle merge()", scene.merged(driver), ["default", SECOND])


@pytest.mark.contract("CORE-MERGE-3")
@given(data=st.data())
def test_merged_adapters_bookkeeping(row, driver, data):
    """CORE-MERGE-3: `merged_adapters` lists the merged names in merge order (empty when nothing is merged).
    (`merged` is not observable through the driver's LayerState.)"""
    require_lifecycle(driver, row)
    scene = scene_for(row, driver, data, ("default", SECOND))
    ctx, model = scene.context, scene.model
    assert_equal(ctx, "merged_adapters of a fresh model", scene.merged(driver), [])
    first, second = data.draw(st.permutations(["default", SECOND]), label="merge order")
    driver.merge(model, [first])
    assert_equal(ctx, f"merged_adapters after merge([{first!r}])", scene.merged(driver), [first])
    driver.merge(model, [second])
    assert_equal(
        ctx, f"merged_adapters after merge([{first!r}]), merge([{second!r}])", scene.merged(driver), [first, second]
    )
    driver.unmerge(model)
    assert_equal(ctx, "merged_adapters after unmerge()", scene.merged(driver), [])
    driver.merge(model, [second, first])
    assert_equal(ctx, f"merged_adapters after merge([{second!r}, {first!r}])", scene.merged(driver), [second, first])


# ---------------------------------------------------------------------------------------------------------------
# CORE-MERGE-4, CORE-FWD-9 and the tuners' merge clauses: merged weight = oracle, merged output = unmerged output


@pytest.mark.contract("CORE-MERGE-4", axes=("dtype",))
@given(data=st.data())
def test_merged_output_equals_unmerged(row, driver, data):
    """CORE-MERGE-4: after merging a1, …, ak in that order the output equals the unmerged forward with active list
    [a1, …, ak] (eval mode), compared at the row dtype's ⟨N⟩ tolerance."""
    require_lifecycle(driver, row)
    scene = scene_for(row, driver, data, ("default", SECOND))
    order = data.draw(st.permutations(scene.names), label="merge order")
    x = scene.input(data)
    driver.set_active(scene.model, order)
    with torch.no_grad():
        unmerged = scene.model(x)
    driver.merge(scene.model, data.draw(st.sampled_from([None, order]), label="adapter_names"))
    with torch.no_grad():
        merged = scene.model(x)
    what = f"merged output (merge order {order}) vs the unmerged output with active {order}"
    scene.assert_output_close(what, merged, unmerged)


@pytest.mark.contract("CORE-FWD-9")
@given(data=st.data())
def test_merged_forward_uses_merged_weights_only(row, driver, data):
    """CORE-FWD-9: while an adapter is merged, the layer computes op(x; W_merged, b_merged) with the live base
    tensors and applies no unmerged adapter, active or not; that output equals the unmerged forward with active list
    = merged_adapters."""
    require_lifecycle(driver, row)
    scene = scene_for(row, driver, data, ("default", SECOND), dtypes=ALL_DTYPES)
    merged_name = data.draw(st.sampled_from(scene.names), label="merged adapter")
    x = scene.input(data)
    driver.set_active(scene.model, [merged_name])
    with torch.no_grad():
        unmerged = scene.model(x)
    driver.set_active(scene.model, scene.names)
    driver.merge(scene.model, [merged_name])
    with torch.no_grad():
        y = scene.model(x)
    what = f"output with {merged_name!r} merged and {scene.names} active"
    for versus, expected in (
        ("op(x; W_merged, b_merged)", scene.expected_output(x, {KEY: scene.tensors(driver)})),
        (f"the unmerged output with active [{merged_name!r}]", unmerged),
    ):
        scene.assert_output_close(f"{what} vs {versus}", y, expected)


def check_merged_weight(row: RowSpec, driver: Driver, data: st.DataObject) -> None:
    """A tuner's merge clause: merging adapters in order writes the oracle's effective weight and bias for that
    order (computed from the base tensors before the merge and the adapter parameters read back), ⟨N⟩."""
    names = ("default", SECOND) if offers(driver, row.tuner, "lifecycle") else ("default",)
    scene = scene_for(row, driver, data, names)
    order = data.draw(st.permutations(scene.names), label="merge order")
    expected = scene.effective(driver, order)
    driver.merge(scene.model, order)
    assert_tensors_close(scene, f"merged tensors (merge order {order})", scene.tensors(driver), expected)


@pytest.mark.contract("BONE-BAT-2", axes=("variant", "layer_kind"), variants=("bat",))
@given(data=st.data())
def test_bat_merge(row, driver, data):
    """BONE-BAT-2: merge applies W ← 𝒯_a(W) per adapter in merge order."""
    check_merged_weight(row, driver, data)


@pytest.mark.contract("BONE-MERGE-1", axes=("variant", "layer_kind"), variants=("plain",))
@given(data=st.data())
def test_bone_plain_merge(row, driver, data):
    """BONE-MERGE-1: merge W ← W + T(B); the bias never changes."""
    check_merged_weight(row, driver, data)


@pytest.mark.contract("GRALORA-MERGE-1", "HRA-MERGE-1", "IA3-MERGE-1", "LOHA-MERGE-1", axes=("variant", "layer_kind"))
@given(data=st.data())
def test_merged_weight_equals_oracle(row, driver, data):
    """GRALORA-MERGE-1 (W + ΔW), HRA-MERGE-1 (W_flat R_a in merge order), IA3-MERGE-1 (W′ of IA3-FWD-3, non-feedforward
    b ← l ⊙ b), LOHA-MERGE-1 (W + ΔW): the merged tensors are the oracle's effective ones."""
    check_merged_weight(row, driver, data)


# ---------------------------------------------------------------------------------------------------------------
# CORE-MERGE-10: in place


@pytest.mark.contract("CORE-MERGE-10")
@given(data=st.data())
def test_merge_in_place(row, driver, data):
    """CORE-MERGE-10: merge and unmerge keep shape, dtype and device of the base weight and bias and update them in
    place: the same Parameter objects stay registered in the model."""
    scene = scene_for(row, driver, data, dtypes=ALL_DTYPES)
    ctx, model = scene.context, scene.model
    base = driver.layer_state(model, KEY).base_layer
    params = {"weight": base.weight, "bias": base.bias}
    layout = {part: (p.shape, p.dtype, p.device) for part, p in params.items() if p is not None}
    for step, call in (("merge()", driver.merge), ("unmerge()", driver.unmerge)):
        call(model)
        live = driver.layer_state(model, KEY).base_layer
        registered = [p for p in model.parameters()]
        for part, param in params.items():
            now = getattr(live, part)
            if param is None:
                assert_equal(ctx, f"base {part} after {step}", now, None)
                continue
            if now is not param:
                fail(ctx, f"after {step} the base layer's {part} is a new object, but should be the same Parameter")
            if not any(p is param for p in registered):
                fail(ctx, f"after {step} the base {part} Parameter is no longer registered in the model")
            assert_equal(
                ctx,
                f"base {part} (shape, dtype, device) after {step}",
                (now.shape, now.dtype, now.device),
                layout[part],
            )


# ---------------------------------------------------------------------------------------------------------------
# CORE-MERGE-11: model level


@pytest.mark.contract("CORE-MERGE-11", scope="model")
@given(data=st.data())
def test_model_level_merge(row, driver, data):
    """CORE-MERGE-11: `merge_adapter` merges on every tuner layer (merged tensors = oracle, output = the adapted
    model's) and `unmerge_adapter` restores every layer's weights within the tuner's unmerge class; a model with
    two tuner layers, model-scope tolerances."""
    row = fill_row(row, driver, data)
    scene = build(driver, draw_setup(driver, row, data, twin=True))
    ctx, model, keys = scene.context, scene.model, scene.setup.keys
    x = scene.input(data)
    original = {key: scene.tensors(driver, key) for key in keys}
    effective = {key: scene.effective(driver, ["default"], key) for key in keys}
    driver.merge(model)
    merged = {key: scene.tensors(driver, key) for key in keys}
    for key in keys:
        assert_equal(ctx, f"merged_adapters of {key} after merge_adapter()", scene.merged(driver, key), ["default"])
        assert_tensors_close(scene, f"merged tensors of {key}", merged[key], effective[key])
    with torch.no_grad():
        y = model(x)
    expected = scene.expected_output(x, effective)
    tol = tolerance("N", row.dtype, "model")
    assert_close_to_oracle(
        context=ctx, what="merged model output", actual=y, expected=expected, tol=tol, scale=scale(expected)
    )
    driver.unmerge(model)
    for key in keys:
        assert_equal(ctx, f"merged_adapters of {key} after unmerge_adapter()", scene.merged(driver, key), [])
        assert_restored(
            scene,
            restored=scene.tensors(driver, key),
            original=original[key],
            written=[*merged[key], *scene.tensors(driver, key)],
            reverted=scene.adapters(driver, ["default"], key),
            what=f"{key} after merge_adapter() and unmerge_adapter()",
        )


# ---------------------------------------------------------------------------------------------------------------
# CORE-MERGE-12: merge_and_unload


def _structure(model: nn.Module) -> list[tuple[str, type, list[str], list[str]]]:
    """Every module's name, class, parameter names and instance attributes: what unloading must give back."""
    return [
        (name, type(module), [n for n, _ in module.named_parameters(recurse=False)], sorted(vars(module)))
        for name, module in model.named_modules()
    ]


@pytest.mark.contract("CORE-MERGE-12")
@given(data=st.data())
def test_merge_and_unload(row, driver, data):
    """CORE-MERGE-12: `merge_and_unload(safe_merge=…, adapter_names=…)` returns the model with every tuner layer
    replaced by its base layer of the original class (a Conv1D stays Conv1D), nothing of the tuner left, and the
    outputs of the adapted model with those adapters merged."""
    row = fill_row(row, driver, data)
    lifecycle = offers(driver, row.tuner, "lifecycle")
    setup = draw_setup(driver, row, data, ("default", SECOND) if lifecycle else ("default",))
    scene = build(driver, setup)
    choices = [None, ["default"], [SECOND, "default"]] if lifecycle else [None, ["default"]]
    names = data.draw(st.sampled_from(choices), label="adapter_names")
    safe = data.draw(st.booleans(), label="safe_merge")
    x = scene.input(data)
    expected = scene.expected_output(x, {KEY: scene.effective(driver, names or ["default"])})
    unloaded = driver.merge_and_unload(scene.model, names, safe=safe)
    fresh = Holder(build_base(setup.layer, row.dtype, setup.seed))
    assert_equal(
        scene.context,
        "the unloaded model's modules (name, class, parameters, attributes)",
        _structure(unloaded),
        _structure(fresh),
    )
    with torch.no_grad():
        y = unloaded(x)
    assert_close_to_oracle(
        context=scene.context,
        what=f"output of merge_and_unload(adapter_names={names}, safe_merge={safe})",
        actual=y,
        expected=expected,
        tol=tolerance("N", row.dtype),
        scale=scale(expected),
    )


# ---------------------------------------------------------------------------------------------------------------
# CORE-MERGE-14: merging is dropout-free


def _with_dropout(config: dict, record: TunerRecord, p: float) -> dict:
    """The config with every dropout probability of the tuner's table (CORE-CFG-6's fields) set to `p`."""
    return {**config, **{field: p for field in record.defaults if field.endswith("dropout")}}


@pytest.mark.contract("CORE-MERGE-14")
@given(data=st.data())
def test_merge_in_train_mode_is_dropout_free(row, driver, data):
    """CORE-MERGE-14: in train mode with every dropout probability > 0, merge writes the eval-mode effective weight
    (⟨N⟩) and merge then unmerge restores the base tensors within the tuner's unmerge class."""
    row = fill_row(row, driver, data)
    setup = draw_setup(driver, row, data)
    p = data.draw(st.sampled_from([0.5, 1.0]), label="dropout")
    setup.configs = {name: _with_dropout(config, setup.record, p) for name, config in setup.configs.items()}
    scene = build(driver, setup)
    scene.model.train()
    original = scene.tensors(driver)
    effective = scene.effective(driver, ["default"])
    driver.merge(scene.model)
    merged = scene.tensors(driver)
    assert_tensors_close(scene, f"tensors merged in train mode (dropout {p})", merged, effective)
    driver.unmerge(scene.model)
    restored = scene.tensors(driver)
    assert_restored(
        scene,
        restored=restored,
        original=original,
        written=[*merged, *restored],
        reverted=scene.adapters(driver, ["default"]),
        what=f"after merge and unmerge in train mode (dropout {p})",
    )
