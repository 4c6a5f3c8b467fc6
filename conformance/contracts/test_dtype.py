"""Family `dtype`: output dtype, adapter dtypes with and without autocast, precision of the adapter path, half
precision end to end without errors or non-finite values, float64 end to end (SPEC §1.6 CORE-FWD-8, §1.10) and the
tuners' dtype clauses (BONE-DTYPE-1, GRALORA-DTYPE-1, HRA-DTYPE-1, IA3-DTYPE-1, LOHA-DTYPE-1).

Rows vary over the dtype (all four, or the ones a clause speaks of) and, for CORE-DTYPE-3 and BONE-DTYPE-1, the
variant; otherwise the variant, and always the layer kind and `autocast_adapter_dtype`, are drawn per example among
what the driver claims, and named in every failure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from conformance.assertions import Context, assert_close_to_oracle, assert_equal, fail, outcome
from conformance.drivers.base import Driver
from conformance.harness import KEY, AdaptedLayer, adapt_layer
from conformance.recording import calls_made
from conformance.rows import RowSpec
from conformance.spec.layer import op
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import scale, tolerance
from conformance.strategies import DTYPES

HALF = ("bfloat16", "float16")
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
autocasts = st.booleans()


# ---- building a row's adapted layer ---------------------------------------------------------------------------


class _Autocast:
    """The driver, with `adapt(..., autocast_adapter_dtype=flag)`; every other attribute is the driver's own."""

    def __init__(self, driver: Driver, flag: bool) -> None:
        self._driver, self._flag = driver, flag

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    def adapt(
        self, model: nn.Module, tuner: str, config: object, adapter: str = "default", *, autocast_adapter_dtype=True
    ) -> nn.Module:
        """The driver's `adapt` with this proxy's flag in place of `autocast_adapter_dtype`."""
        return self._driver.adapt(model, tuner, config, adapter, autocast_adapter_dtype=self._flag)


def _claimed_kinds(driver: Driver, row: RowSpec, variant: str) -> list[str]:
    """Layer kinds of the tuner the variant applies to and the driver supports (optional ones only if declared)."""
    record, claims = RECORDS[row.tuner], driver.capabilities().tuners[row.tuner]
    kinds = []
    for kind in sorted(record.kinds):
        if not record.variant(variant).applies_to(kind):
            continue
        optional = record.optional_kinds.get(kind)
        if (optional in claims.optional) if optional else (kind in claims.layer_kinds):
            kinds.append(kind)
    return kinds


def _adapt(driver: Driver, row: RowSpec, data: st.DataObject, *, autocast: bool) -> AdaptedLayer:
    """`harness.adapt_layer` with `autocast_adapter_dtype=autocast`; the row's variant (else a claimed one) and a
    claimed layer kind are drawn."""
    record, claims = RECORDS[row.tuner], driver.capabilities().tuners[row.tuner]
    variants = [row.variant] if row.variant else [v.name for v in record.variants if v.name in claims.variants]
    context = Context(row.clause, row.tuner, driver.name, dtype=row.dtype)
    if not variants:
        fail(context, f"unsupported, required by {row.clause}: the driver claims none of the variants of {row.tuner}")
    variant = data.draw(st.sampled_from(variants), label="variant")
    kinds = _claimed_kinds(driver, row, variant)
    if not kinds:
        fail(context, f"unsupported, required by {row.clause}: no layer kind claimed for variant {variant}")
    kind = data.draw(st.sampled_from(kinds), label="layer_kind")
    adapted = adapt_layer(_Autocast(driver, autocast), replace(row, variant=variant, layer_kind=kind), record, data)
    # Context has no field for drawn row axes: name them beside the clause so the one-line detail carries them.
    adapted.context.clause = f"{row.clause} on {kind}, variant {variant}, autocast_adapter_dtype={autocast}"
    return adapted


# ---- small helpers ----------------------------------------------------------------------------------------------


def _adapter_dtypes(driver: Driver, adapted: AdaptedLayer, name: str = "default") -> set[torch.dtype]:
    return {t.dtype for t in driver.get_params(adapted.model, KEY, name).values()}


def _lowest(*dtypes: torch.dtype) -> str:
    """The lower-precision dtype involved (largest machine epsilon), by name: its §8 column applies."""
    return DTYPE_NAMES[max(dtypes, key=lambda d: torch.finfo(d).eps)]


def _base(driver: Driver, adapted: AdaptedLayer) -> nn.Module:
    return driver.layer_state(adapted.model, KEY).base_layer


def _expected_output(driver: Driver, adapted: AdaptedLayer, x: torch.Tensor) -> torch.Tensor:
    weight, bias = adapted.base_tensors(driver)
    eff_weight, eff_bias = adapted.record.oracle.effective(weight, bias, adapted.layer, [adapted.adapter(driver)])
    return op(x.double(), eff_weight, eff_bias, adapted.layer)


def _check_output(driver: Driver, adapted: AdaptedLayer, x: torch.Tensor, tol_dtype: str) -> torch.Tensor:
    """Forward (eval, no grad) equals the oracle on the read-back values within ⟨N⟩ of `tol_dtype`."""
    expected = _expected_output(driver, adapted, x)
    with torch.no_grad():
        y = adapted.model(x)
    assert_close_to_oracle(
        context=adapted.context,
        what="output",
        actual=y,
        expected=expected,
        tol=tolerance("N", tol_dtype),
        scale=scale(expected),
    )
    return y


def _check_merged(driver: Driver, adapted: AdaptedLayer, tol_dtype: str) -> None:
    """Merge; the live base weight (and bias) equal the oracle's effective tensors within ⟨N⟩ of `tol_dtype` and
    keep the base dtype."""
    base = _base(driver, adapted)
    weight_dtype = base.weight.dtype
    bias_dtype = None if base.bias is None else base.bias.dtype
    weight, bias = adapted.base_tensors(driver)
    eff_weight, eff_bias = adapted.record.oracle.effective(weight, bias, adapted.layer, [adapted.adapter(driver)])
    driver.merge(adapted.model)
    base = _base(driver, adapted)
    assert_equal(adapted.context, "merged base weight dtype", base.weight.dtype, weight_dtype)
    merged_weight, merged_bias = adapted.base_tensors(driver)
    tol = tolerance("N", tol_dtype)
    assert_close_to_oracle(
        context=adapted.context,
        what="merged weight",
        actual=merged_weight,
        expected=eff_weight,
        tol=tol,
        scale=scale(eff_weight),
    )
    if eff_bias is not None:
        assert_equal(adapted.context, "merged base bias dtype", base.bias.dtype, bias_dtype)
        assert_close_to_oracle(
            context=adapted.context,
            what="merged bias",
            actual=merged_bias,
            expected=eff_bias,
            tol=tol,
            scale=scale(eff_bias),
        )


def _run(adapted: AdaptedLayer, what: str, call: Callable[[], Any], forward: bool = False) -> Any:
    """CORE-DTYPE-3 requires these operations to run without error: an exception is the violation itself. `forward`:
    the call is the current model's eval-mode forward on `x` (what a repro runs again), else a driver call."""
    __tracebackhide__ = True
    before = calls_made()
    try:
        return call()
    except Exception as exc:
        raised = outcome("raised", "", type(exc).__name__, before)
        fail(
            adapted.context,
            f"{what} raised {type(exc).__name__}: {exc}, but should run without error",
            replace(raised, target="output") if forward else raised,
        )


def _check_finite(adapted: AdaptedLayer, what: str, tensor: torch.Tensor | None) -> None:
    __tracebackhide__ = True
    if tensor is not None and not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        fail(adapted.context, f"{what} has {bad} non-finite of {tensor.numel()} elements, but should be finite")


def _check_base_finite(driver: Driver, adapted: AdaptedLayer, when: str) -> None:
    base = _base(driver, adapted)
    _check_finite(adapted, f"base weight after {when}", base.weight)
    _check_finite(adapted, f"base bias after {when}", base.bias)


# ---- CORE ---------------------------------------------------------------------------------------------------------


@pytest.mark.contract("CORE-FWD-8", axes=("dtype",))
@given(data=st.data())
def test_output_has_input_dtype(row, driver, data):
    """CORE-FWD-8: for `x` in the base weight's dtype the output has `x`'s dtype (eval and train mode)."""
    adapted = _adapt(driver, row, data, autocast=data.draw(autocasts, label="autocast"))
    x = adapted.input(data)
    adapted.model.train(data.draw(st.booleans(), label="train_mode"))
    with torch.no_grad():
        y = adapted.model(x)
    assert_equal(adapted.context, "output dtype", y.dtype, x.dtype)


@pytest.mark.contract("CORE-DTYPE-1", axes=("dtype",))
@given(data=st.data())
def test_adapter_parameters_dtype_and_device(row, driver, data):
    """CORE-DTYPE-1: new adapter parameters are on the base weight's device in its dtype, except that autocast
    (the default) makes float16/bfloat16 adapters float32; `autocast_adapter_dtype=False` keeps the base dtype.
    Where the lifecycle surface is offered, `add_adapter` (autocast by default) follows the same rule."""
    for autocast in (True, False):
        adapted = _adapt(driver, row, data, autocast=autocast)
        weight = _base(driver, adapted).weight
        want = torch.float32 if autocast and row.dtype in HALF else weight.dtype
        names = ["default"]
        if "lifecycle" in driver.capabilities().tuners[row.tuner].surfaces:
            config = driver.make_config(row.tuner, {**adapted.config, "target_modules": [KEY]})
            driver.add_adapter(adapted.model, row.tuner, "other", config)
            names.append("other")
        for name in names:
            want_here = torch.float32 if name == "other" and row.dtype in HALF else want
            for param, value in driver.get_params(adapted.model, KEY, name).items():
                what = f"adapter {name!r} parameter {param}"
                assert_equal(adapted.context, f"{what} dtype", value.dtype, want_here)
                assert_equal(adapted.context, f"{what} device", value.device, weight.device)


@pytest.mark.contract("CORE-DTYPE-2", axes=("dtype",))
@given(data=st.data())
def test_adapter_path_precision(row, driver, data):
    """CORE-DTYPE-2: the output (adapter path in the adapter dtype, cast to the output dtype) equals the oracle
    within ⟨N⟩ of the lower-precision dtype involved (base/input or adapter), with and without autocast."""
    adapted = _adapt(driver, row, data, autocast=data.draw(autocasts, label="autocast"))
    x = adapted.input(data)
    _check_output(driver, adapted, x, _lowest(x.dtype, *_adapter_dtypes(driver, adapted)))


@pytest.mark.contract("CORE-DTYPE-3", axes=("variant", "dtype"), dtypes=HALF)
@given(data=st.data())
def test_half_precision_runs_finite(row, driver, data):
    """CORE-DTYPE-3: with a float16/bfloat16 base, with and without autocast, forward, backward, merge, unmerge,
    safe merge and merge_and_unload run without error and give finite results (base output finite, adapter
    parameters of order one)."""
    adapted = _adapt(driver, row, data, autocast=data.draw(autocasts, label="autocast"))
    model = adapted.model
    x = adapted.input(data)
    with torch.no_grad():
        assume(bool(torch.isfinite(_base(driver, adapted)(x)).all()))
    x_in = x.clone().requires_grad_(True)
    y = _run(adapted, "forward", lambda: model(x_in), forward=True)
    _check_finite(adapted, "output", y)
    _run(adapted, "backward", lambda: y.float().sum().backward())
    _check_finite(adapted, "x.grad", x_in.grad)
    for param, grad in driver.get_grads(model, KEY, "default").items():
        _check_finite(adapted, f"gradient of {param}", grad)
    for safe in (False, True):
        label = "safe merge" if safe else "merge"
        _run(adapted, label, lambda safe=safe: driver.merge(model, safe=safe))
        _check_base_finite(driver, adapted, label)
        with torch.no_grad():
            y = _run(adapted, f"forward after {label}", lambda: model(x), forward=True)
            _check_finite(adapted, f"output after {label}", y)
        _run(adapted, f"unmerge after {label}", lambda: driver.unmerge(model))
        _check_base_finite(driver, adapted, f"unmerge after {label}")
    plain = _run(adapted, "merge_and_unload", lambda: driver.merge_and_unload(model))
    for name, param in plain.named_parameters():
        _check_finite(adapted, f"{name} after merge_and_unload", param)
    with torch.no_grad():
        y = _run(adapted, "unloaded forward", lambda: plain(x), forward=True)
        _check_finite(adapted, "output after merge_and_unload", y)


@pytest.mark.contract("CORE-DTYPE-4", axes=("dtype",), dtypes=("float64",))
@given(data=st.data())
def test_float64_end_to_end(row, driver, data):
    """CORE-DTYPE-4: a float64 model stays float64 end to end: adapter parameters, output (at float64 precision:
    the oracle's ⟨N⟩), gradients, merged and unmerged weights, and the model merge_and_unload returns."""
    adapted = _adapt(driver, row, data, autocast=data.draw(autocasts, label="autocast"))
    model, f64 = adapted.model, torch.float64
    for param, value in driver.get_params(model, KEY, "default").items():
        assert_equal(adapted.context, f"adapter parameter {param} dtype", value.dtype, f64)
    x = adapted.input(data)
    y = _check_output(driver, adapted, x, "float64")
    assert_equal(adapted.context, "output dtype", y.dtype, f64)
    x_in = x.clone().requires_grad_(True)
    model(x_in).sum().backward()
    assert_equal(adapted.context, "x.grad dtype", x_in.grad.dtype, f64)
    for param, grad in driver.get_grads(model, KEY, "default").items():
        if grad is not None:
            assert_equal(adapted.context, f"gradient of {param} dtype", grad.dtype, f64)
    for step, call in (("merge", lambda: driver.merge(model)), ("unmerge", lambda: driver.unmerge(model))):
        call()
        for name, tensor in _base(driver, adapted).named_parameters():
            assert_equal(adapted.context, f"base {name} dtype after {step}", tensor.dtype, f64)
        with torch.no_grad():
            assert_equal(adapted.context, f"output dtype after {step}", model(x).dtype, f64)
    plain = driver.merge_and_unload(model)
    for name, param in plain.named_parameters():
        assert_equal(adapted.context, f"{name} dtype after merge_and_unload", param.dtype, f64)
    with torch.no_grad():
        assert_equal(adapted.context, "output dtype after merge_and_unload", plain(x).dtype, f64)


# ---- tuner dtype clauses --------------------------------------------------------------------------------------------


def _check_tuner_dtype(driver: Driver, adapted: AdaptedLayer, data: st.DataObject) -> str:
    """Forward equals the oracle and has the input's dtype; merged weights equal the oracle in the base dtype; all
    within ⟨N⟩ of the lower-precision dtype involved. Returns that dtype's name."""
    x = adapted.input(data)
    tol_dtype = _lowest(x.dtype, *_adapter_dtypes(driver, adapted))
    y = _check_output(driver, adapted, x, tol_dtype)
    assert_equal(adapted.context, "output dtype", y.dtype, x.dtype)
    _check_merged(driver, adapted, tol_dtype)
    return tol_dtype


@pytest.mark.contract("GRALORA-DTYPE-1", "HRA-DTYPE-1", "IA3-DTYPE-1", "LOHA-DTYPE-1", axes=("dtype",))
@given(data=st.data())
def test_tuner_dtype_rules(row, driver, data):
    """GRALORA-DTYPE-1, HRA-DTYPE-1, IA3-DTYPE-1, LOHA-DTYPE-1: the adapter computation in the adapter dtype (HRA:
    float32 for half-precision adapters), the result in the input dtype, merges written in the base dtype — checked
    as forward and merged weights equal to the oracle within the lower precision's ⟨N⟩, output in the input dtype."""
    adapted = _adapt(driver, row, data, autocast=data.draw(autocasts, label="autocast"))
    _check_tuner_dtype(driver, adapted, data)


@pytest.mark.contract("BONE-DTYPE-1", axes=("variant", "dtype"), variants=("bat",))
@given(data=st.data())
def test_bat_dtype_rules(row, driver, data):
    """BONE-DTYPE-1: BAT tiles transformed in the adapter dtype and stored in the base dtype (forward and merged
    weight equal the oracle, output in the input dtype), and the unmerge's `(I + B[p])⁻¹` precise enough (float32
    for half/float32 blocks, float64 for float64 blocks): one unmerge of the merged weight equals the oracle's
    `(W′ − B[p])(I + B[p])⁻¹` within the same ⟨N⟩."""
    adapted = _adapt(driver, row, data, autocast=data.draw(autocasts, label="autocast"))
    tol_dtype = _check_tuner_dtype(driver, adapted, data)
    merged_weight, merged_bias = adapted.base_tensors(driver)
    expected, _ = adapted.record.oracle.unmerge(merged_weight, merged_bias, adapted.layer, adapted.adapter(driver))
    driver.unmerge(adapted.model)
    actual, _ = adapted.base_tensors(driver)
    assert_close_to_oracle(
        context=adapted.context,
        what="unmerged weight",
        actual=actual,
        expected=expected,
        tol=tolerance("N", tol_dtype),
        scale=scale(expected),
    )
