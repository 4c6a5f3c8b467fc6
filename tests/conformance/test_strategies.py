"""The layer and input strategies draw only valid cases, and the float64 `op` is the module's own."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conformance.spec.layer import op
from conformance.strategies import build_base, input_shapes, layers, logical_weight, random_tensor, seeds


@pytest.mark.parametrize("edge_cases", [False, True])
@pytest.mark.parametrize("kind", ["linear", "hf_conv1d", "conv1d", "conv2d", "conv3d"])
@given(data=st.data(), seed=seeds)
def test_drawn_layers_run_and_op_is_the_modules_computation(kind, edge_cases, data, seed):
    layer = data.draw(layers(kind), label="layer")
    shape = data.draw(input_shapes(layer, edge_cases), label="shape")
    if not edge_cases:  # an ordinary input: batched, 2-D or 3-D for linear kinds, never empty
        assert all(shape) and (len(shape) in (2, 3) if not layer.is_conv else len(shape) == len(layer.kernel_size) + 2)
    module = build_base(layer, "float64", seed)
    x = random_tensor(shape, "float64", seed + 1)
    bias = None if module.bias is None else module.bias.detach()
    expected = module(x)
    assert expected.shape == op(x, logical_weight(module, layer), bias, layer).shape
    torch.testing.assert_close(op(x, logical_weight(module, layer), bias, layer), expected, rtol=1e-12, atol=1e-12)
