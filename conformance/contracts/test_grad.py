"""Family `grad`: gradients of the implementation equal autograd of the float64 closed form and central finite
differences (SPEC §1.11, ⟨G⟩ of §0.3/§8), and the base weight is a constant (CORE-GRAD-2). Float64 rows only,
on every layer kind and variant; each example runs in eval mode or in train mode (every dropout probability is 0
in the records' configs)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd.gradcheck import GradcheckError

from conformance.assertions import assert_close_to_oracle, fail
from conformance.drivers.base import Discrepancy, Driver
from conformance.harness import KEY, AdaptedLayer, adapt_layer
from conformance.scenes import fill_row
from conformance.spec.layer import Adapter, Layer, op
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import GRADCHECK, Tolerance, scale, tolerance
from conformance.strategies import random_tensor

# ⟨G⟩ is float64 only (§8); every layer kind and variant.
GRAD_ROWS = {"axes": ("variant", "layer_kind", "dtype"), "dtypes": ("float64",)}
# gradcheck's own criterion |analytical − numerical| ≤ atol + rtol·|numerical| (§8 ⟨G⟩: absolute atol, S = 1).
FINITE_DIFFERENCE = Tolerance(rtol=GRADCHECK["rtol"], a=GRADCHECK["atol"])
modes = st.sampled_from(["eval", "train"])


def _loss(y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The scalar function of the output: a fixed generic weighting (a plain sum could hide a permutation)."""
    return (y * weights).sum()


def _oracle_gradients(
    adapted: AdaptedLayer, driver: Driver, x: torch.Tensor, weights: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Autograd of `op(x; effective(W, b, [adapter]))` in float64, on the values read back through the driver:
    the gradient of every adapter parameter (canonical names) and of `x`."""
    weight, bias = adapted.base_tensors(driver)
    read = adapted.adapter(driver)
    params = {name: value.detach().clone().requires_grad_(True) for name, value in read.params.items()}
    x64 = x.detach().double().requires_grad_(True)
    eff_weight, eff_bias = adapted.record.oracle.effective(weight, bias, adapted.layer, [Adapter(read.config, params)])
    loss = _loss(op(x64, eff_weight, eff_bias, adapted.layer), weights)
    inputs = [*params.values(), x64]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]
    return dict(zip(params, grads[:-1], strict=True)), grads[-1]


def _implementation_backward(
    adapted: AdaptedLayer, x: torch.Tensor, weights: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of the same scalar function through the implementation; returns (output, x.grad)."""
    adapted.model.train(mode == "train")
    x_in = x.detach().clone().requires_grad_(True)
    y = adapted.model(x_in)
    if tuple(y.shape) != tuple(weights.shape):
        shapes = tuple(weights.shape), tuple(y.shape)
        fail(
            adapted.context,
            f"output has shape {shapes[1]}, but should have shape {shapes[0]}",
            Discrepancy("output", (), *shapes, 0.0, "output", kind="shape"),
        )
    _loss(y, weights).backward()
    x_grad = torch.zeros_like(x_in) if x_in.grad is None else x_in.grad
    return y, x_grad


def _output_shape(adapted: AdaptedLayer, driver: Driver, x: torch.Tensor) -> tuple[int, ...]:
    weight, bias = adapted.base_tensors(driver)
    eff_weight, eff_bias = adapted.record.oracle.effective(weight, bias, adapted.layer, [adapted.adapter(driver)])
    return tuple(op(x.double(), eff_weight, eff_bias, adapted.layer).shape)


def _check_parameter_gradients(adapted: AdaptedLayer, driver: Driver, data: st.DataObject, *, with_x: bool) -> None:
    """Every adapter parameter's `.grad` (read through `get_grads`) — and `x.grad` if `with_x` — equals autograd
    of the float64 oracle (⟨N⟩ fp64), and the parameters' directional central difference of the loss equals the
    analytical directional derivative (⟨G⟩ gradcheck settings)."""
    mode = data.draw(modes, label="mode")
    x = adapted.input(data)
    weights = random_tensor(_output_shape(adapted, driver, x), "float64", adapted.seed + 3)
    expected_params, expected_x = _oracle_gradients(adapted, driver, x, weights)
    _, x_grad = _implementation_backward(adapted, x, weights, mode)
    grads = driver.get_grads(adapted.model, KEY, "default")
    missing = sorted(set(expected_params) - set(grads))
    if missing:
        fail(adapted.context, f"get_grads returned no entry for the adapter parameters {missing} (mode {mode})")
    tol = tolerance("G", "float64")
    for name, expected in expected_params.items():
        got = grads[name]
        # No `.grad` means nothing flowed into the parameter: a zero gradient (CORE-TRAIN-4 judges the attribute).
        actual = torch.zeros_like(expected) if got is None else got
        assert_close_to_oracle(
            context=adapted.context,
            what=f"d loss / d {name} ({mode} mode{', no .grad' if got is None else ''})",
            actual=actual,
            expected=expected,
            tol=tol,
            scale=scale(expected),
            observe={"target": "grad", "name": name, "mode": mode, "weights_seed": adapted.seed + 3},
        )
    if with_x:
        assert_close_to_oracle(
            context=adapted.context,
            what=f"d loss / d x ({mode} mode)",
            actual=x_grad,
            expected=expected_x,
            tol=tol,
            scale=scale(expected_x),
        )
    _check_directional_difference(adapted, driver, x, weights, {k: v for k, v in grads.items() if k in expected_params})


def _check_directional_difference(
    adapted: AdaptedLayer,
    driver: Driver,
    x: torch.Tensor,
    weights: torch.Tensor,
    grads: dict[str, torch.Tensor | None],
) -> None:
    """Central finite difference along one generic direction `v` in parameter space, through `set_params`:
    `(L(θ + εv) − L(θ − εv)) / 2ε` equals `Σ ⟨∂L/∂θ, v⟩` from the implementation's `.grad` (§8 ⟨G⟩: eps, atol, rtol of
    gradcheck). Parameters are restored afterwards."""
    model = adapted.model
    params = driver.get_params(model, KEY, "default")
    generator = torch.Generator().manual_seed(adapted.seed + 4)
    direction = {k: torch.rand(v.shape, generator=generator, dtype=torch.float64) * 2 - 1 for k, v in params.items()}
    analytic = sum(
        ((g.double() if g is not None else torch.zeros_like(direction[k])) * direction[k]).sum()
        for k, g in grads.items()
    )
    eps = GRADCHECK["eps"]

    def loss_at(sign: float) -> torch.Tensor:
        driver.set_params(model, KEY, "default", {k: v.double() + sign * eps * direction[k] for k, v in params.items()})
        with torch.no_grad():
            return _loss(model(x), weights).double()

    numeric = (loss_at(1.0) - loss_at(-1.0)) / (2 * eps)
    driver.set_params(model, KEY, "default", params)
    assert_close_to_oracle(
        context=adapted.context,
        what="directional derivative of the loss along a generic parameter direction (analytical vs central diff.)",
        actual=torch.as_tensor(analytic, dtype=torch.float64),
        expected=numeric,
        tol=FINITE_DIFFERENCE,
        scale=1.0,
    )


def _tiny_input(layer: Layer, seed: int) -> torch.Tensor:
    """A small float64 input the base layer accepts: (2, in) for linear kinds; for convolutions one sample with the
    least spatial size the kernel, padding and padding_mode admit (as `strategies.input_shapes` bounds them)."""
    if not layer.is_conv:
        shape: tuple[int, ...] = (2, layer.in_features)
    else:
        spatial = []
        for i, k in enumerate(layer.kernel_size):
            reach = layer.dilation[i] * (k - 1) + 1
            pad = 0 if isinstance(layer.padding, str) else layer.padding[i]
            least = max(reach - 2 * pad, pad + 1, 1)
            if layer.padding == "same":
                least = max(least, reach // 2 + 1)
            spatial.append(least)
        shape = (1, layer.in_features, *spatial)
    return random_tensor(shape, "float64", seed).requires_grad_(True)


def _gradcheck_input(adapted: AdaptedLayer, mode: str) -> None:
    """`torch.autograd.gradcheck` of the implementation's forward as a function of `x` on a tiny case, with §8's ⟨G⟩
    settings (central differences; values only, so `check_undefined_grad` is off)."""
    adapted.model.train(mode == "train")
    x = _tiny_input(adapted.layer, adapted.seed + 5)
    adapted.context.shapes["x_gradcheck"] = tuple(x.shape)
    try:
        torch.autograd.gradcheck(
            adapted.model,
            (x,),
            eps=GRADCHECK["eps"],
            atol=GRADCHECK["atol"],
            rtol=GRADCHECK["rtol"],
            check_undefined_grad=False,
        )
    except GradcheckError as exc:
        message = " ".join(str(exc).split())  # numerical and analytical Jacobians; capped to keep the context
        fail(adapted.context, f"gradcheck of the output w.r.t. x ({mode} mode) failed: {message[:300]}")


@pytest.mark.contract("CORE-GRAD-1", **GRAD_ROWS)
@given(data=st.data())
def test_gradients_equal_oracle_autograd(row, driver, data):
    """CORE-GRAD-1: the gradients of a scalar function of the output w.r.t. every adapter parameter and x equal
    autograd of the float64 closed form; finite differences agree (x: gradcheck; parameters: a directional one)."""
    adapted = adapt_layer(driver, row, RECORDS[row.tuner], data)
    _check_parameter_gradients(adapted, driver, data, with_x=True)
    _gradcheck_input(adapted, data.draw(modes, label="gradcheck_mode"))


@pytest.mark.contract("CORE-GRAD-2", axes=("variant",))
@given(data=st.data())
def test_base_weight_accumulates_no_gradient(row, driver, data):
    """CORE-GRAD-2: after a backward pass the base weight has accumulated no gradient (it is a constant of the
    closed form, also where the tuner rebuilds the weight). One row per variant; the layer kind is drawn."""
    row = fill_row(row, driver, data)
    adapted = adapt_layer(driver, row, RECORDS[row.tuner], data)
    mode = data.draw(modes, label="mode")
    x = adapted.input(data)
    weights = random_tensor(_output_shape(adapted, driver, x), "float64", adapted.seed + 3)
    _implementation_backward(adapted, x, weights, mode)
    grad = driver.layer_state(adapted.model, KEY).base_layer.weight.grad
    if grad is not None:
        fail(
            adapted.context,
            f"the base weight accumulated a gradient (max |grad| {grad.abs().max().item():.3g}, {mode} mode), "
            "but should be a constant: .grad None",
        )


@pytest.mark.contract("BONE-BAT-5", variants=("bat",), **GRAD_ROWS)
@given(data=st.data())
def test_bat_gradients_flow_through_effective_weight(row, driver, data):
    """BONE-BAT-5: `bone_block`'s gradient is that of `op(x; 𝒯(W), b)` (oracle autograd, finite differences) and
    the base weight W stays a constant (no gradient)."""
    adapted = adapt_layer(driver, row, RECORDS[row.tuner], data)
    _check_parameter_gradients(adapted, driver, data, with_x=False)
    grad = driver.layer_state(adapted.model, KEY).base_layer.weight.grad
    if grad is not None:
        fail(adapted.context, "the base weight W accumulated a gradient through 𝒯(W), but should be a constant")


@pytest.mark.contract("LOHA-GRAD-1", **GRAD_ROWS)
@given(data=st.data())
def test_loha_gradients_equal_oracle_autograd(row, driver, data):
    """LOHA-GRAD-1: the gradients w.r.t. hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b (and hada_t1, hada_t2 in
    effective mode) equal autograd of LOHA-DELTA/FWD; a directional central difference agrees."""
    adapted = adapt_layer(driver, row, RECORDS[row.tuner], data)
    _check_parameter_gradients(adapted, driver, data, with_x=False)
