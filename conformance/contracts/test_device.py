"""Family `device`: `.to(dtype)` and `.to(device)` on the adapted model move and cast the adapter parameters with it
(SPEC §1.10 CORE-DTYPE-5).

The dtype rows vary over the target dtype (the source dtype is drawn among the other three). The device row moves
the model to CUDA and back where CUDA is available; on a machine without CUDA the row checks the `.to("cpu")` move
and then reports `skip`: a move within the CPU cannot show that the adapter parameters follow a device change."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conformance.assertions import Context, assert_equal, fail
from conformance.drivers.base import DTYPES as DTYPE_NAMES
from conformance.drivers.base import Driver
from conformance.harness import KEY, AdaptedLayer, adapt_layer
from conformance.rows import RowSpec
from conformance.spec.records import RECORDS
from conformance.strategies import DTYPES

NO_CUDA = (
    "CUDA is not available on this machine: the .to('cuda') part of CORE-DTYPE-5 is not checked "
    "(only the .to('cpu') move, which cannot show a device change)"
)


def _adapt(driver: Driver, row: RowSpec, data: st.DataObject, dtype: str) -> AdaptedLayer:
    """`harness.adapt_layer` for a base in `dtype`, with a claimed variant and layer kind drawn."""
    record, claims = RECORDS[row.tuner], driver.capabilities().tuners[row.tuner]
    variants = [v.name for v in record.variants if v.name in claims.variants]
    variant = data.draw(st.sampled_from(variants), label="variant") if variants else None
    kinds = [] if variant is None else [k for k in sorted(record.kinds) if _claimed(driver, row, variant, k)]
    if not kinds:
        context = Context(row.clause, row.tuner, driver.name, dtype=dtype)
        fail(context, f"unsupported, required by {row.clause}: no claimed variant and layer kind of {row.tuner}")
    kind = data.draw(st.sampled_from(kinds), label="layer_kind")
    adapted = adapt_layer(driver, replace(row, variant=variant, layer_kind=kind, dtype=dtype), record, data)
    # Context has no field for drawn row axes: name them beside the clause so the one-line detail carries them.
    adapted.context.clause = f"{row.clause} on {kind}, variant {variant}, base dtype {dtype}"
    return adapted


def _claimed(driver: Driver, row: RowSpec, variant: str, kind: str) -> bool:
    record, claims = RECORDS[row.tuner], driver.capabilities().tuners[row.tuner]
    if not record.variant(variant).applies_to(kind):
        return False
    optional = record.optional_kinds.get(kind)
    return optional in claims.optional if optional else kind in claims.layer_kinds


def _check_moved(
    driver: Driver,
    adapted: AdaptedLayer,
    before: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None,
    device: torch.device,
    step: str,
) -> None:
    """After `step`, every adapter parameter is on `device`, in `dtype` (None: unchanged) and holds exactly its
    previous value cast to that dtype; the base weight moved with it."""
    after = driver.get_params(adapted.model, KEY, "default")
    assert_equal(adapted.context, f"adapter parameters after {step}", sorted(after), sorted(before))
    for name, value in after.items():
        want_dtype = before[name].dtype if dtype is None else dtype
        assert_equal(adapted.context, f"{name} device after {step}", value.device, device)
        assert_equal(adapted.context, f"{name} dtype after {step}", value.dtype, want_dtype)
        assert_equal(adapted.context, f"{name} values after {step}", value.cpu(), before[name].to(want_dtype))
    weight = driver.layer_state(adapted.model, KEY).base_layer.weight
    assert_equal(adapted.context, f"base weight device after {step}", weight.device, device)


@pytest.mark.contract("CORE-DTYPE-5", axes=("dtype",))
@given(data=st.data())
def test_to_dtype_casts_adapter_parameters(row, driver, data):
    """CORE-DTYPE-5 (dtype): `model.to(dtype)` casts every adapter parameter to `dtype` (values cast, device kept);
    the row's dtype is the target, the base starts in one of the other dtypes."""
    source = data.draw(st.sampled_from([d for d in DTYPE_NAMES if d != row.dtype]), label="source_dtype")
    adapted = _adapt(driver, row, data, source)
    before = driver.get_params(adapted.model, KEY, "default")
    device = driver.layer_state(adapted.model, KEY).base_layer.weight.device
    adapted.model.to(DTYPES[row.dtype])
    _check_moved(driver, adapted, before, dtype=DTYPES[row.dtype], device=device, step=f".to({row.dtype})")


@pytest.mark.contract("CORE-DTYPE-5")
def test_to_device_moves_adapter_parameters(row, driver):
    """CORE-DTYPE-5 (device): `model.to("cuda")` moves every adapter parameter to the GPU (values and dtype kept),
    and `.to("cpu")` brings them back; skipped where CUDA is not available (after checking the `.to("cpu")` move)."""
    cuda = torch.cuda.is_available()

    @given(data=st.data())
    def moves(data: Any) -> None:
        dtype = data.draw(st.sampled_from(DTYPE_NAMES), label="base_dtype")
        adapted = _adapt(driver, row, data, dtype)
        before = driver.get_params(adapted.model, KEY, "default")
        if cuda:
            adapted.model.to("cuda")
            gpu = torch.device("cuda", torch.cuda.current_device())
            _check_moved(driver, adapted, before, dtype=None, device=gpu, step='.to("cuda")')
            x = adapted.input(data).to("cuda")
            with torch.no_grad():
                y = adapted.model(x)
            assert_equal(adapted.context, "output device after .to('cuda')", y.device, x.device)
        adapted.model.to("cpu")
        _check_moved(driver, adapted, before, dtype=None, device=torch.device("cpu"), step='.to("cpu")')

    moves()
    if not cuda:
        pytest.skip(NO_CUDA)
