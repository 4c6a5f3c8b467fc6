"""Family `forward`: the layer's output equals its tuner's closed form (SPEC §1.6 and each tuner's forward
clauses), on every layer kind, variant, input rank (1-D to 4-D, batch 0) and conv hyper-parameter."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conformance.assertions import assert_close_to_oracle
from conformance.harness import adapt_layer
from conformance.spec.layer import op
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import scale, tolerance


@pytest.mark.contract("CORE-FWD-1", axes=("variant", "layer_kind", "dtype"))
@given(data=st.data())
def test_forward_equals_closed_form(row, driver, data):
    """CORE-FWD-1: enabled and unmerged, the output is op(x; W_eff, b_eff) of the oracle, evaluated on the
    parameters read back through the driver."""
    adapted = adapt_layer(driver, row, RECORDS[row.tuner], data)
    x = adapted.input(data)
    with torch.no_grad():
        y = adapted.model(x)
    weight, bias = adapted.base_tensors(driver)
    eff_weight, eff_bias = adapted.record.oracle.effective(weight, bias, adapted.layer, [adapted.adapter(driver)])
    expected = op(x.double(), eff_weight, eff_bias, adapted.layer)
    assert_close_to_oracle(
        context=adapted.context,
        what="output",
        actual=y,
        expected=expected,
        tol=tolerance("N", row.dtype),
        scale=scale(expected),
    )
