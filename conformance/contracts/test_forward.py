"""Family `forward`: the layer's output equals its tuner's closed form (SPEC §1.6 and each tuner's forward
clauses), on every layer kind, variant, input rank (1-D to 4-D, batch 0) and conv hyper-parameter.

Besides CORE-FWD-1 (the closed form through the oracle's `effective`), each tuner clause is checked against the
formula that clause states, evaluated literally by the oracle on the values read back through the driver (the chunked
Bone delta, GraLoRA's block output and equivalent weight, the reflection chain, Gram–Schmidt, IA3's scalings, LoHa's
Hadamard and CP deltas). Claims about a weight or a matrix (ranks, orthogonality, norms, W-independence) are judged on
what the implementation computes: its effective weight is observed through forward on a one-hot basis (a probe).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from conformance import coverage
from conformance.assertions import Context, assert_close_to_oracle, assert_equal, assert_raises_clause, fail
from conformance.drivers.base import Discrepancy, Driver
from conformance.harness import (
    KEY,
    AdaptedLayer,
    Holder,
    adapt_layer,
    claimed_layers,
    claims_of,
    clause_variants,
    require_base_runs,
)
from conformance.probes import applied_weight
from conformance.rows import RowSpec
from conformance.scenes import ALL_DTYPES, SECOND, Both, assert_unchanged, build, draw_setup, offers, require_lifecycle
from conformance.spec.layer import Adapter, Layer, flat, op
from conformance.spec.record import TunerRecord
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import scale, tolerance
from conformance.strategies import build_base, input_shapes, random_tensor, seeds

LINEAR_KINDS = ("linear", "hf_conv1d")
CONV_KINDS = ("conv1d", "conv2d", "conv3d")


@pytest.mark.contract("CORE-FWD-1", axes=("variant", "layer_kind", "dtype"))
@given(data=st.data())
def test_forward_equals_closed_form(row, driver, data):
    """CORE-FWD-1: enabled and unmerged, the output is op(x; W_eff, b_eff) of the oracle, evaluated on the
    parameters read back through the driver — on every kind of input (1-D to 4-D and empty linear input, unbatched
    and batch-0 convolution input; the other clauses draw ordinary inputs)."""
    adapted = adapt_layer(driver, row, RECORDS[row.tuner], data)
    x = adapted.input(data, edge_cases=True)
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


# ---- shared steps (proposed for conformance/harness.py: `fill_row(kinds=…)`, `adapt_layer(geometry=…, where=…)`,
# `probe_weight`, `assert_rank_at_most`) -----------------------------------------------------------------------------


def _supported(record: TunerRecord, driver: Driver, row: RowSpec, kind: str) -> bool:
    """A required kind the driver claims, or an optional kind it declares."""
    claims = claims_of(driver, row)
    if kind in record.optional_kinds:
        return record.optional_kinds[kind] in claims.optional
    return kind in claims.layer_kinds


def _fill(
    row: RowSpec,
    driver: Driver,
    data: st.DataObject,
    *,
    kinds: tuple[str, ...] | None = None,
    variants: tuple[str, ...] | None = None,
    dtypes: tuple[str, ...] = ("float64",),
) -> RowSpec:
    """The row with the axes it leaves open drawn: a variant the clause speaks of (`clause_variants`: BONE clauses on
    MiSS never draw `mini`) among `variants`, a supported layer kind among `kinds` that the variant applies to, a
    dtype of `dtypes`. Skips (naming why) when the tuner has no such kind: the clause does not apply to it."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    allowed = (
        [row.layer_kind] if row.layer_kind else sorted(k for k in record.kinds if _supported(record, driver, row, k))
    )
    allowed = [k for k in allowed if kinds is None or k in kinds]
    names = [row.variant] if row.variant else [v.name for v in clause_variants(row.clause, record, claims)]
    names = [v for v in names if (variants is None or v in variants)]
    names = [v for v in names if any(record.variant(v).applies_to(k) for k in allowed)]
    if not names:
        pytest.skip(f"not applicable: the tuner has no supported layer kind among {kinds} ({row.clause})")
    variant = row.variant or data.draw(st.sampled_from(names), label="variant")
    kind = row.layer_kind or data.draw(
        st.sampled_from([k for k in allowed if record.variant(variant).applies_to(k)]), label="layer_kind"
    )
    dtype = row.dtype or data.draw(st.sampled_from([d for d in dtypes if d in claims.dtypes]), label="dtype")
    return replace(row, variant=variant, layer_kind=kind, dtype=dtype)


def _adapt(
    driver: Driver,
    row: RowSpec,
    data: st.DataObject,
    *,
    geometry: Callable[[Layer], Layer] | None = None,
    layer_where: Callable[[Layer], bool] | None = None,
    where: Callable[[Layer, dict], bool] | None = None,
    update: Callable[[Layer, dict], dict] | None = None,
    prepare: Callable[[nn.Module, Layer], None] | None = None,
    pinned: Layer | None = None,
    layer: Layer | None = None,
    name: str = "default",
) -> AdaptedLayer:
    """`harness.adapt_layer` for a filled row, with hooks: the drawn layer must satisfy `layer_where` and the
    optional geometries the driver declares (HRA-LAYER-2), then `geometry` reshapes it; configs must satisfy `where`
    and `update` overrides fields; `prepare(base, layer)` alters the base module before adaptation; `pinned` is a
    boundary geometry offered first (`layer`: no draw); `name` is the adapter's name. Parameters are perturbed
    into §8's domain."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    if layer is None:
        strategy = claimed_layers(row.layer_kind, record, claims)
        if layer_where is not None:
            strategy = strategy.filter(layer_where)
        if pinned is not None:
            strategy = st.one_of(st.just(pinned), strategy)
        layer = data.draw(strategy, label="layer")
        if geometry is not None:
            layer = geometry(layer)
    configs = record.configs(layer, record.variant(row.variant), row.init)
    config = data.draw(configs.filter(lambda c: where(layer, c)) if where is not None else configs, label="config")
    if update is not None:
        config = {**config, **update(layer, config)}
    seed = data.draw(seeds, label="seed")
    base = build_base(layer, row.dtype, seed)
    if prepare is not None:
        prepare(base, layer)
    if row.dtype in ("bfloat16", "float16"):
        require_base_runs(base, layer, row.dtype)
    cfg = driver.make_config(row.tuner, {**config, "target_modules": [KEY]})
    model = driver.adapt(Holder(base), row.tuner, cfg, name)
    shapes = {n: tuple(t.shape) for n, t in driver.get_params(model, KEY, name).items()}
    generator = torch.Generator().manual_seed(seed + 2)
    driver.set_params(model, KEY, name, record.perturb(record.resolve(config, KEY), layer, shapes, generator))
    context = Context(row.clause, row.tuner, driver.name, config, {"weight": layer.weight_shape}, row.dtype, seed)
    return AdaptedLayer(row, record, layer, config, seed, model.eval(), context)


def _tensors(driver: Driver, model: nn.Module, layer: Layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float64 copies of the live base weight (logical orientation) and bias."""
    base = driver.layer_state(model, KEY).base_layer
    weight = base.weight.detach().double().clone()
    bias = None if base.bias is None else base.bias.detach().double().clone()
    return (weight.T if layer.kind == "hf_conv1d" else weight), bias


def _base(driver: Driver, model: nn.Module, key: str = KEY) -> nn.Module:
    """The live base layer: calling it is `base(x)` with the weights as they are now."""
    return driver.layer_state(model, key).base_layer


def _close(
    context: Context,
    what: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: str = "float64",
    derive: str | None = None,
) -> None:
    """⟨N⟩ at the dtype's single-layer tolerance, S over the reference. `derive`: `actual` as a repro recomputes it
    from the applied weight W (`applied_weight`) and the base weight B (`Discrepancy.derive`)."""
    __tracebackhide__ = True
    assert_close_to_oracle(
        context=context,
        what=what,
        actual=actual,
        expected=expected,
        tol=tolerance("N", dtype),
        scale=scale(expected),
        observe=None if derive is None else {"target": "applied", "derive": derive},
    )


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def probe_geometry(layer: Layer) -> Layer:
    """The layer with no padding and dilation 1 (stride and groups kept): an input of the kernel's spatial size then
    gives one output position, so forward on a one-hot basis reads the effective weight (`probe_weight`)."""
    if not layer.is_conv:
        return layer
    dims = len(layer.kernel_size)
    return replace(layer, padding=(0,) * dims, dilation=(1,) * dims, padding_mode="zeros")


def probe_weight(driver: Driver, model: nn.Module) -> torch.Tensor:
    """The effective weight W′ (logical orientation, float64) the implementation applies at `layer`, observed through
    forward on a one-hot basis (`probes.applied_weight`; convolutions of `probe_geometry`)."""
    return applied_weight(model, _base(driver, model))


def assert_rank_at_most(context: Context, what: str, matrix: torch.Tensor, bound: int, dtype: str = "float64") -> None:
    """`rank(matrix) ≤ bound` for a matrix the implementation computed: its singular values beyond `bound` stay within
    what ⟨N⟩'s per-entry tolerance allows (Weyl: σ_k(A + E) ≤ σ_k(A) + ‖E‖_F, with |E| ≤ atol + rtol·|A|)."""
    __tracebackhide__ = True
    tol = tolerance("N", dtype)
    matrix = matrix.detach().double()
    values = torch.linalg.svdvals(matrix)
    if bound >= values.numel():
        return
    allowed = tol.atol(scale(matrix)) * math.sqrt(matrix.numel()) + tol.rtol * float(torch.linalg.norm(matrix))
    if float(values[bound]) > allowed:
        listed = [f"{float(v):.3g}" for v in values]
        fail(
            context,
            f"{what} {tuple(matrix.shape)} has singular value #{bound + 1} = {float(values[bound]):.3g} > the allowed "
            f"round-off {allowed:.3g} (singular values {listed}), but its rank should be at most {bound}",
        )


def _read_adapter(record: TunerRecord, adapted: AdaptedLayer, driver: Driver, name: str = "default") -> Adapter:
    """The oracle's view of adapter `name`: the resolved config and the parameters read back, in float64."""
    params = {k: v.double() for k, v in driver.get_params(adapted.model, KEY, name).items()}
    return Adapter(record.resolve(adapted.config, KEY), params)


# ---------------------------------------------------------------------------------------------------------------
# CORE-FWD-2..7: shapes, leading dimensions, conv shapes, no adapter, no mutation, eval determinism


def _accepted(context: Context, model: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    """Forward through the implementation; an exception is a violation of an "accepts" clause (reported `fail`)."""
    __tracebackhide__ = True
    try:
        return _forward(model, x)
    except Exception as exc:  # any exception: the input was not accepted
        message = f"forward on {what} of shape {tuple(x.shape)} raised {type(exc).__name__}({exc})"
        context.shapes["x"] = tuple(x.shape)  # for the repro: this input (drawn as the context's x is)
        fail(
            context,
            f"{message}, but should accept it",
            Discrepancy("output", (), "", type(exc).__name__, 0.0, "output", kind="raised"),
        )
        raise AssertionError from exc  # unreachable: fail() raises


def _leading(data: st.DataObject) -> tuple[int, ...]:
    """0 to 4 leading dimensions of size 0 to 3."""
    return tuple(data.draw(st.lists(st.integers(0, 3), max_size=4), label="leading_dims"))


@pytest.mark.contract("CORE-FWD-2", "GRALORA-FWD-4")
@given(data=st.data())
def test_any_leading_dimensions(row, driver, data):
    """CORE-FWD-2 ⟨S⟩, GRALORA-FWD-4 ⟨S⟩: a Linear / Conv1D layer accepts x of shape (*, in) with any number of
    leading dimensions — none (1-D), zero-sized ones included — and returns (*, out)."""
    row = _fill(row, driver, data, kinds=LINEAR_KINDS)
    adapted = _adapt(driver, row, data)
    n_in, n_out = adapted.layer.in_features, adapted.layer.out_features
    for lead in [(), (0,), (2, 3), (1, 2, 0, 3), _leading(data)]:  # pinned: 1-D, batch 0, 3-D, 5-D; then drawn
        x = random_tensor((*lead, n_in), row.dtype, adapted.seed + 1)
        coverage.note_input(tuple(x.shape), adapted.layer)
        y = _accepted(adapted.context, adapted.model, x, "an input")
        assert_equal(adapted.context, f"output shape for input shape {tuple(x.shape)}", tuple(y.shape), (*lead, n_out))


@pytest.mark.contract("CORE-FWD-3")
@given(data=st.data())
def test_leading_dimensions_independent(row, driver, data):
    """CORE-FWD-3 ⟨N⟩: flattening x (2 or 3 leading dimensions of size 2 or 3) to (M, in), applying the layer and
    reshaping back equals applying it directly (eval mode), at the dtype's ⟨N⟩ tolerance."""
    row = _fill(row, driver, data, kinds=LINEAR_KINDS, dtypes=ALL_DTYPES)
    adapted = _adapt(driver, row, data)
    lead = tuple(data.draw(st.lists(st.integers(2, 3), min_size=2, max_size=3), label="leading_dims"))
    x = random_tensor((*lead, adapted.layer.in_features), row.dtype, adapted.seed + 1)
    adapted.context.shapes["x"] = tuple(x.shape)
    direct = _forward(adapted.model, x)
    flat_y = _forward(adapted.model, x.reshape(-1, x.shape[-1])).reshape(*lead, -1)
    _close(
        adapted.context,
        f"output of the flattened input {tuple(x.reshape(-1, x.shape[-1]).shape)}, reshaped back, vs the direct output",
        flat_y,
        direct,
        row.dtype,
    )


@pytest.mark.contract("CORE-FWD-4")
@given(data=st.data())
def test_conv_output_shape(row, driver, data):
    """CORE-FWD-4 ⟨S⟩: a conv layer (every stride, padding incl. "same"/"valid", dilation, groups, padding_mode)
    accepts every input its base layer accepts — batched (batch 0, 1, 2) and unbatched — and returns exactly the base
    layer's output shape."""
    row = _fill(row, driver, data, kinds=CONV_KINDS)
    adapted = _adapt(driver, row, data)
    shape = data.draw(input_shapes(adapted.layer, edge_cases=True), label="input_shape")
    spatial = shape[-len(adapted.layer.kernel_size) :]
    base = _base(driver, adapted.model)
    adapted.context.shapes["layer"] = (adapted.layer.groups, *adapted.layer.kernel_size)
    for lead in [(), (0,), data.draw(st.sampled_from([(1,), (2,)]), label="batch")]:
        x = random_tensor((*lead, adapted.layer.in_features, *spatial), row.dtype, adapted.seed + 1)
        coverage.note_input(tuple(x.shape), adapted.layer)
        try:
            expected = _forward(base, x).shape
        except RuntimeError:
            continue  # the base layer does not accept this input: nothing is required
        adapted.context.shapes["x"] = tuple(x.shape)  # the input a repro rebuilds (`random_tensor`, seed + 1)
        y = _accepted(adapted.context, adapted.model, x, "an input the base layer accepts")
        what = f"output shape for input {tuple(x.shape)}"
        assert_equal(adapted.context, what, tuple(y.shape), tuple(expected), "output")


@pytest.mark.contract("CORE-FWD-5")
@given(data=st.data())
def test_no_applicable_adapter_is_base(row, driver, data):
    """CORE-FWD-5 ⟨Z⟩: a layer whose active list names no adapter injected there (`[zeta]` with zeta only on
    `inner.layer`), and every layer under an empty active list, returns base(x) bitwise."""
    require_lifecycle(driver, row)
    row = _fill(row, driver, data, dtypes=ALL_DTYPES)
    record = RECORDS[row.tuner]
    layer = data.draw(claimed_layers(row.layer_kind, record, claims_of(driver, row)), label="layer")
    variant = record.variant(row.variant)
    configs = {
        "default": {**data.draw(record.configs(layer, variant, None), label="config default"), "target_modules": [KEY]},
        SECOND: {
            **data.draw(record.configs(layer, variant, None), label="config zeta"),
            "target_modules": r"inner\.layer",
        },
    }
    seed = data.draw(seeds, label="seed")
    bases = [build_base(layer, row.dtype, seed), build_base(layer, row.dtype, seed + 7)]
    require_base_runs(bases[0], layer, row.dtype)
    model = driver.adapt(Both(*bases), row.tuner, driver.make_config(row.tuner, configs["default"]))
    driver.add_adapter(model, row.tuner, SECOND, driver.make_config(row.tuner, configs[SECOND]))
    generator = torch.Generator().manual_seed(seed + 2)
    for name, key in (("default", KEY), ("default", "inner.layer"), (SECOND, "inner.layer")):
        shapes = {n: tuple(t.shape) for n, t in driver.get_params(model, key, name).items()}
        driver.set_params(
            model, key, name, record.perturb(record.resolve(configs[name], key), layer, shapes, generator)
        )
    model.eval()
    context = Context(row.clause, row.tuner, driver.name, configs, {"weight": layer.weight_shape}, row.dtype, seed)
    x = random_tensor(data.draw(input_shapes(layer), label="input_shape"), row.dtype, seed + 1)
    context.shapes["x"] = tuple(x.shape)
    driver.set_active(model, [SECOND])
    y = _forward(model, x)
    what = f"output of `layer` with active [{SECOND}] (not injected there)"
    assert_equal(context, what, y[:1], _forward(_base(driver, model), x)[None])
    driver.set_active(model, [])
    bases = torch.stack([_forward(_base(driver, model, key), x) for key in (KEY, "inner.layer")])
    assert_equal(context, "outputs of `layer` and `inner.layer` with an empty active list", _forward(model, x), bases)


def _dropouts(record: TunerRecord, p: float) -> dict:
    """Every dropout probability of the tuner's table (CORE-CFG-6's fields) set to `p`."""
    return {field: p for field in record.defaults if field.endswith("dropout")}


@pytest.mark.contract("CORE-FWD-6")
@given(data=st.data())
def test_forward_mutates_nothing(row, driver, data):
    """CORE-FWD-6 ⟨Z⟩: forward (eval and train mode, with and without autograd, dropout 0 or 0.5) leaves x, the base
    weight and bias and every adapter parameter bitwise unchanged."""
    row = _fill(row, driver, data, dtypes=ALL_DTYPES)
    record = RECORDS[row.tuner]
    p = data.draw(st.sampled_from([0.0, 0.5]), label="dropout")
    adapted = _adapt(driver, row, data, update=lambda layer, config: _dropouts(record, p))
    x = adapted.input(data)
    x_before = x.clone()
    base = _base(driver, adapted.model)
    tensors_before = [t.detach().clone() for t in (base.weight, base.bias) if t is not None]
    params_before = driver.get_params(adapted.model, KEY, "default")
    for mode, grad in (("eval", False), ("eval", True), ("train", True)):
        adapted.model.train(mode == "train")
        with torch.set_grad_enabled(grad):
            adapted.model(x)
        when = f"after a {mode}-mode forward ({'with' if grad else 'without'} autograd, dropout {p})"
        assert_equal(adapted.context, f"x {when}", x, x_before)
        after = [t.detach() for t in (base.weight, base.bias) if t is not None]
        for part, now, then in zip(("weight", "bias"), after, tensors_before, strict=False):
            assert_equal(adapted.context, f"base {part} {when}", now, then)
        params = driver.get_params(adapted.model, KEY, "default")
        for name, value in params_before.items():
            assert_equal(adapted.context, f"adapter parameter {name} {when}", params[name], value)


@pytest.mark.contract("CORE-FWD-7")
@given(data=st.data())
def test_eval_forward_deterministic(row, driver, data):
    """CORE-FWD-7 ⟨Z⟩: in eval mode, with every dropout probability of the tuner set to 0.5 or 1, two forwards give
    bitwise-equal outputs and no dropout is applied (the output is the closed form, ⟨N⟩ at the dtype)."""
    row = _fill(row, driver, data, dtypes=ALL_DTYPES)
    record = RECORDS[row.tuner]
    p = data.draw(st.sampled_from([0.5, 1.0]), label="dropout")
    adapted = _adapt(driver, row, data, update=lambda layer, config: _dropouts(record, p))
    x = adapted.input(data)
    first, second = _forward(adapted.model, x), _forward(adapted.model, x)
    assert_equal(adapted.context, f"second eval-mode output (dropout {p}) vs the first", second, first)
    weight, bias = _tensors(driver, adapted.model, adapted.layer)
    eff = record.oracle.effective(weight, bias, adapted.layer, [_read_adapter(record, adapted, driver)])
    _close(adapted.context, f"eval-mode output with dropout {p}", first, op(x.double(), *eff, adapted.layer), row.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Bone (and MiSS, MISS-MATH-1): BONE-FWD-1..3, BONE-BAT-1, MISS-MATH-1, MISS-MINI-2/3


def _block(adapter: Adapter) -> torch.Tensor:
    (value,) = adapter.params.values()
    return value


@pytest.mark.contract("BONE-FWD-1", axes=("variant",), variants=("plain",))
@given(data=st.data())
def test_bone_tiled_delta(row, driver, data):
    """BONE-FWD-1 ⟨N⟩: y = base(x) + x T(B)ᵀ with T(B)[o, i] = B[i mod r, o] (the oracle's literal tiling)."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data)
    record, x = adapted.record, adapted.input(data)
    weight, bias = _tensors(driver, adapted.model, adapted.layer)
    delta = record.oracle.tiled_delta(_block(_read_adapter(record, adapted, driver)), adapted.layer.in_features)
    expected = op(x.double(), weight, bias, adapted.layer) + x.double() @ delta.T
    _close(adapted.context, "output vs base(x) + x T(B)ᵀ", _forward(adapted.model, x), expected)


@pytest.mark.contract("BONE-FWD-2", axes=("variant",), variants=("plain",))
@given(data=st.data())
def test_bone_no_divisibility(row, driver, data):
    """BONE-FWD-2 ⟨N⟩: with in % r ≠ 0 (pinned: in = 5, r ∈ {2, 3, 4}), the delta is the padded chunk sum s(x) B,
    and every input column i ≥ ⌊in/r⌋·r contributes row B[i mod r] (observed on unit inputs e_i)."""
    row = _fill(row, driver, data)
    adapted = _adapt(
        driver,
        row,
        data,
        layer_where=lambda g: g.in_features >= 3,
        where=lambda g, c: g.in_features % c["r"] != 0,
        pinned=Layer(row.layer_kind, 5, 4),
    )
    record, layer = adapted.record, adapted.layer
    block = _block(_read_adapter(record, adapted, driver))
    x = adapted.input(data)
    weight, bias = _tensors(driver, adapted.model, layer)
    expected = op(x.double(), weight, bias, layer) + record.oracle.chunk_sum_delta(x.double(), block)
    _close(adapted.context, "output vs base(x) + s(x) B (padded chunk sum)", _forward(adapted.model, x), expected)
    observed = probe_weight(driver, adapted.model) - weight  # ΔW[o, i]
    r = block.shape[0]
    for i in range((layer.in_features // r) * r, layer.in_features):
        _close(
            adapted.context,
            f"delta of input column {i} (≥ ⌊in/r⌋·r = {(layer.in_features // r) * r})",
            observed[:, i],
            block[i % r],
            derive=f"(W - B)[:, {i}]",
        )


@pytest.mark.contract("BONE-FWD-3", axes=("variant",), variants=("plain",))
@given(data=st.data())
def test_bone_delta_independent_of_weight(row, driver, data):
    """BONE-FWD-3 ⟨N⟩: changing the base weight (in place, through the live base layer) leaves y − base(x)
    unchanged; the delta the implementation applies has rank ≤ r."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data)
    x, base = adapted.input(data), _base(driver, adapted.model)
    before = _forward(adapted.model, x).double() - _forward(base, x).double()
    generator = torch.Generator().manual_seed(adapted.seed + 5)
    with torch.no_grad():
        base.weight.copy_(torch.rand(base.weight.shape, generator=generator, dtype=torch.float64) * 4 - 2)
    after = _forward(adapted.model, x).double() - _forward(base, x).double()
    _close(adapted.context, "y − base(x) after the base weight was changed, vs before", after, before)
    weight = _tensors(driver, adapted.model, adapted.layer)[0]
    delta = probe_weight(driver, adapted.model) - weight
    assert_rank_at_most(adapted.context, "the applied delta ΔW = W_eff − W", delta, adapted.config["r"])


@pytest.mark.contract("BONE-BAT-1", axes=("variant",), variants=("bat",))
@given(data=st.data())
def test_bat_sequential_forward(row, driver, data):
    """BONE-BAT-1 ⟨N⟩: with active BAT adapters a1…ak (one, or two in a drawn order where the lifecycle surface is
    offered), y = op(x; 𝒯_ak(…𝒯_a1(W)), b): each tile W_{p,c} ← W_{p,c} + W_{p,c} B[p] + B[p] sees the previous
    result; the bias is not transformed."""
    row = _fill(row, driver, data)
    names = ("default", SECOND) if offers(driver, row.tuner, "lifecycle") else ("default",)
    scene = build(driver, draw_setup(driver, row, data, names))
    order = data.draw(st.permutations(scene.names), label="active order")
    if len(order) > 1:
        driver.set_active(scene.model, order)
    x = scene.input(data)
    weight, bias = scene.tensors(driver)
    for name in order:
        weight = scene.setup.record.oracle.tile_transform(weight, _block(scene.adapter(driver, name)))
    expected = op(x.double(), weight, bias, scene.setup.layer)
    _close(scene.context, f"output with active {order} vs op(x; 𝒯(W), b)", _forward(scene.model, x), expected)


@pytest.mark.contract("MISS-MATH-1")
@given(data=st.data())
def test_miss_is_bone(row, driver, data):
    """MISS-MATH-1 ⟨N⟩ (roll-up of the BONE rows on MiSS): for init_weights True/False/"bat", MiSS holds Bone's
    block under the name miss_block with Bone's shape, its forward is Bone's closed form (BONE-FWD-1, BONE-BAT-1) and
    merging writes Bone's effective weight (BONE-MERGE-1, BONE-BAT-2)."""
    row = _fill(row, driver, data, variants=("plain", "bat"))
    adapted = _adapt(driver, row, data)
    record, layer = adapted.record, adapted.layer
    resolved = record.resolve(adapted.config, KEY)
    params = driver.get_params(adapted.model, KEY, "default")
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    assert_equal(
        adapted.context, "adapter parameters (name: shape)", shapes, record.oracle.param_shapes(resolved, layer)
    )
    weight, bias = _tensors(driver, adapted.model, layer)
    eff = record.oracle.effective(weight, bias, layer, [_read_adapter(record, adapted, driver)])
    x = adapted.input(data)
    _close(adapted.context, "output vs Bone's closed form", _forward(adapted.model, x), op(x.double(), *eff, layer))
    driver.merge(adapted.model)
    merged = _tensors(driver, adapted.model, layer)
    _close(adapted.context, "merged weight vs Bone's effective weight", merged[0], eff[0])


def _mini_full(record: TunerRecord, adapter: Adapter, layer: Layer) -> torch.Tensor:
    """T(B_full) of MISS-MINI-2: ΔW[o, i] = B[i mod r, o mod mini_r]."""
    return record.oracle.tiled_delta(record.oracle.expand_mini(_block(adapter), layer.out_features), layer.in_features)


@pytest.mark.contract("MISS-MINI-2", axes=("variant",), variants=("mini",))
@given(data=st.data())
def test_mini_expansion(row, driver, data):
    """MISS-MINI-2 ⟨N⟩: "mini" forward, merge and unmerge are the plain ones with the expanded block
    B_full[j, o] = B[j, o mod mini_r]: y = base(x) + x T(B_full)ᵀ, merge writes W + T(B_full), unmerge W."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data)
    record, layer = adapted.record, adapted.layer
    delta = _mini_full(record, _read_adapter(record, adapted, driver), layer)
    weight, bias = _tensors(driver, adapted.model, layer)
    x = adapted.input(data)
    expected = op(x.double(), weight, bias, layer) + x.double() @ delta.T
    _close(adapted.context, "output vs base(x) + x T(B_full)ᵀ", _forward(adapted.model, x), expected)
    driver.merge(adapted.model)
    merged = _tensors(driver, adapted.model, layer)[0]
    _close(adapted.context, "merged weight vs W + T(B_full)", merged, weight + delta)
    driver.unmerge(adapted.model)
    _close(adapted.context, "weight after unmerge vs W", _tensors(driver, adapted.model, layer)[0], weight)


@pytest.mark.contract("MISS-MINI-3", axes=("variant",), variants=("mini",))
@given(data=st.data())
def test_mini_full_width_is_plain(row, driver, data):
    """MISS-MINI-3 ⟨N⟩: "mini" with mini_r = out equals plain Bone with bone_block = miss_block: the same output as
    the implementation's plain adapter holding the same block, and as base(x) + x T(B)ᵀ."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data, update=lambda layer, config: {"mini_r": layer.out_features})
    record, layer = adapted.record, adapted.layer
    block = _block(_read_adapter(record, adapted, driver))
    plain_row = replace(row, variant="plain")
    plain = _adapt(driver, plain_row, data, layer=layer, update=lambda g, c: {"r": adapted.config["r"]})
    base = _base(driver, plain.model)
    with torch.no_grad():  # the same base layer values in both models
        base.weight.copy_(_base(driver, adapted.model).weight)
        if base.bias is not None:
            base.bias.copy_(_base(driver, adapted.model).bias)
    driver.set_params(
        plain.model, KEY, "default", {name: block for name in driver.get_params(plain.model, KEY, "default")}
    )
    x = adapted.input(data)
    y = _forward(adapted.model, x)
    _close(
        adapted.context,
        "mini (mini_r = out) output vs the plain adapter's with the same block",
        y,
        _forward(plain.model, x).double(),
    )
    weight, bias = _tensors(driver, adapted.model, layer)
    expected = op(x.double(), weight, bias, layer) + x.double() @ record.oracle.tiled_delta(block, layer.in_features).T
    _close(adapted.context, "mini (mini_r = out) output vs plain Bone's base(x) + x T(B)ᵀ", y, expected)


# ---------------------------------------------------------------------------------------------------------------
# GraLoRA: GRALORA-FWD-1..3 (FWD-4 with CORE-FWD-2 above)


# A grid of N ≥ 2 blocks (N = 1 is GRALORA-FWD-3's case): in and out share a divisor ≥ 2.
_GRID = {
    "layer_where": lambda g: math.gcd(g.in_features, g.out_features) >= 2,
    "where": lambda g, c: c["gralora_k"] >= 2,
}


@pytest.mark.contract("GRALORA-FWD-1")
@given(data=st.data())
def test_gralora_block_forward(row, driver, data):
    """GRALORA-FWD-1 ⟨N⟩: output chunk j is σ Σ_n Σ_t (x_n A_n)[…, jρ+t] · B_j[nρ+t, :] (+ σ (x A_genᵀ) B_genᵀ),
    y = base(x) + Δy — the oracle's chunked output formula, not the equivalent weight (N ≥ 2)."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data, **_GRID)
    adapter = _read_adapter(adapted.record, adapted, driver)
    x = adapted.input(data)
    weight, bias = _tensors(driver, adapted.model, adapted.layer)
    delta = adapted.record.oracle.adapter_output(x.double(), adapter.config, adapted.layer, adapter.params)
    expected = op(x.double(), weight, bias, adapted.layer) + delta
    _close(adapted.context, "output vs base(x) + Δy (block formula)", _forward(adapted.model, x), expected)


@pytest.mark.contract("GRALORA-FWD-2")
@given(data=st.data())
def test_gralora_equivalent_weight(row, driver, data):
    """GRALORA-FWD-2 ⟨N⟩: the delta the implementation applies (observed on a one-hot basis) is the equivalent
    weight ΔW[j·out/N + o, n·in/N + i] = σ Σ_t A[n, i, jρ+t] B[j, nρ+t, o] (+ σ B_gen A_gen); each block (j, n) of its
    grid part has rank ≤ ρ, and rank ΔW ≤ min(N·r + h, in, out) (N ≥ 2)."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data, **_GRID)
    layer, config = adapted.layer, adapted.config
    adapter = _read_adapter(adapted.record, adapted, driver)
    weight = _tensors(driver, adapted.model, layer)[0]
    delta = probe_weight(driver, adapted.model) - weight
    _close(
        adapted.context,
        "applied delta W_eff − W vs the equivalent weight ΔW",
        delta,
        adapted.record.oracle.delta_weight(adapter.config, layer, adapter.params),
        derive="W - B",
    )
    n, r, h = config["gralora_k"], config["r"], config["hybrid_r"]
    assert_rank_at_most(adapted.context, "ΔW", delta, min(n * r + h, layer.in_features, layer.out_features))
    grid = delta  # the grid part: the applied delta less the hybrid LoRA part σ B_gen A_gen (read-back parameters)
    if h > 0:
        sigma = config["alpha"] / (r + h)
        grid = delta - sigma * adapter.params["gralora_B_general.weight"] @ adapter.params["gralora_A_general.weight"]
    rows, cols = layer.out_features // n, layer.in_features // n
    for j in range(n):
        for i in range(n):
            block = grid[j * rows : (j + 1) * rows, i * cols : (i + 1) * cols]
            assert_rank_at_most(adapted.context, f"block ({j}, {i}) of the grid part of ΔW", block, r // n)


@pytest.mark.contract("GRALORA-FWD-3")
@given(data=st.data())
def test_gralora_single_block_is_lora(row, driver, data):
    """GRALORA-FWD-3 ⟨N⟩: with gralora_k = 1 the applied delta is LoRA's, ΔW = σ (A[0] B[0])ᵀ + σ B_gen A_gen
    (σ = alpha/(r + h)), written here from the clause."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data, update=lambda layer, config: {"gralora_k": 1})
    layer, config = adapted.layer, adapted.config
    params = _read_adapter(adapted.record, adapted, driver).params
    sigma = config["alpha"] / (config["r"] + config["hybrid_r"])
    expected = sigma * (params["gralora_A"][0] @ params["gralora_B"][0]).T
    if config["hybrid_r"] > 0:
        expected = expected + sigma * params["gralora_B_general.weight"] @ params["gralora_A_general.weight"]
    weight = _tensors(driver, adapted.model, layer)[0]
    delta = probe_weight(driver, adapted.model) - weight
    what = "applied delta with gralora_k = 1 vs σ (A[0] B[0])ᵀ + σ B_gen A_gen"
    _close(adapted.context, what, delta, expected, derive="W - B")


# ---------------------------------------------------------------------------------------------------------------
# HRA: HRA-R-1..3, HRA-GS-1..4, HRA-FWD-1..3


def _square_identity(layer: Layer) -> Layer:
    return replace(layer, out_features=layer.in_features)


def _set_identity(base: nn.Module, layer: Layer) -> None:
    """W = I (a square Linear): the effective weight W R the implementation applies is R itself."""
    with torch.no_grad():
        base.weight.copy_(torch.eye(layer.in_features, dtype=torch.float64))


def _observed_r(driver: Driver, adapted: AdaptedLayer) -> torch.Tensor:
    """R as the implementation applies it: the effective weight of a Linear whose base weight is I."""
    return probe_weight(driver, adapted.model)


def _residual_ratios(u: torch.Tensor) -> list[float]:
    """The Gram–Schmidt residual ratios ‖v_i‖/‖u_i‖ of U's columns in order (float64, re-orthogonalised so that the
    ratios are exact for the constructions below): HRA-GS-1's domain asks ≥ 10⁻², HRA-GS-4 omits those ≤ √ε."""
    kept: list[torch.Tensor] = []
    ratios = []
    for i in range(u.shape[1]):
        v = u[:, i].clone()
        for q in kept:
            v = v - torch.dot(q, v) * q
        for q in kept:  # a second pass: the ratios of the construction below, not an implementation's choice
            v = v - torch.dot(q, v) * q
        ratio = float(torch.linalg.vector_norm(v) / torch.linalg.vector_norm(u[:, i]))
        ratios.append(ratio)
        if ratio > 1e-12:
            kept.append(v / torch.linalg.vector_norm(v))
    return ratios


def _well_conditioned(d: int, r: int, generator: torch.Generator) -> torch.Tensor:
    """U(−1, 1) columns (r ≤ d) whose Gram–Schmidt residuals are all ≥ 10⁻²‖u_i‖ (HRA-GS-1's domain), by rejection."""
    for _ in range(100):
        u = torch.rand(d, r, generator=generator, dtype=torch.float64) * 2 - 1
        if min(_residual_ratios(u)) >= 1e-2:
            return u
    raise AssertionError(f"no well-conditioned {d}×{r} U drawn in 100 tries")  # d ≥ r makes this vanishingly rare


def _set_u(driver: Driver, adapted: AdaptedLayer, u: torch.Tensor, name: str = "default") -> Adapter:
    (param,) = driver.get_params(adapted.model, KEY, name)
    driver.set_params(adapted.model, KEY, name, {param: u})
    return _read_adapter(adapted.record, adapted, driver, name)


def _hra_identity_row(row: RowSpec, driver: Driver, data: st.DataObject, **kw) -> AdaptedLayer:
    """A square Linear with W = I, so that forward on the identity observes R."""
    return _adapt(
        driver, replace(row, layer_kind="linear"), data, geometry=_square_identity, prepare=_set_identity, **kw
    )


def _u_of(adapter: Adapter) -> torch.Tensor:
    (u,) = adapter.params.values()
    return u


@pytest.mark.contract("HRA-R-1", "HRA-R-2", axes=("variant",), variants=("plain",))
@given(data=st.data())
def test_hra_reflection_chain(row, driver, data):
    """Observed on a Linear whose base weight is I (so the applied weight is R): HRA-R-1 ⟨N⟩ R = H_0 H_1 ⋯ H_{r−1},
    H_i = I − 2 û_i û_iᵀ, û_i = u_i/‖u_i‖ (u_0 leftmost, no epsilon); HRA-R-2 ⟨N⟩ RᵀR = I and det R = (−1)^r."""
    row = _fill(row, driver, data, kinds=("linear",))
    adapted = _hra_identity_row(row, driver, data)
    u = _u_of(_read_adapter(adapted.record, adapted, driver))
    observed = _observed_r(driver, adapted)
    if row.clause == "HRA-R-1":
        chain = adapted.record.oracle.reflection_chain(u)
        _close(adapted.context, "applied R vs H_0 H_1 ⋯ H_{r−1}", observed, chain, derive="W")
        return
    eye = torch.eye(observed.shape[0], dtype=torch.float64)
    _close(adapted.context, "RᵀR of the applied R", observed.T @ observed, eye, derive="W.T @ W")
    sign = torch.tensor((-1.0) ** u.shape[1], dtype=torch.float64)
    _close(adapted.context, "det R of the applied R", torch.linalg.det(observed), sign)


@pytest.mark.contract("HRA-R-3", "HRA-R-3.should")
@given(data=st.data())
def test_hra_invalid_column_rejected(row, driver, data):
    """HRA-R-3 ⟨S⟩: a column of U whose norm is zero or non-finite makes merge and safe merge raise ValueError
    naming the adapter, with the weights unchanged and nothing recorded as merged (both modes, before HRA-GS-4).
    `.should`: forward rejects it likewise (skipped where the driver declares `hra.forward_unchecked`)."""
    if row.clause.endswith(".should") and "hra.forward_unchecked" in claims_of(driver, row).optional:
        pytest.skip("declared non-capability hra.forward_unchecked: forward does not check U")
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data, name=SECOND)
    u = _u_of(_read_adapter(adapted.record, adapted, driver, SECOND)).clone()
    column = data.draw(st.integers(0, u.shape[1] - 1), label="invalid column")
    bad = data.draw(st.sampled_from(["zero", "nan", "inf", "-inf"]), label="invalid value")
    if bad == "zero":
        u[:, column] = 0.0
    else:
        u[data.draw(st.integers(0, u.shape[0] - 1), label="entry"), column] = float(bad)
    _set_u(driver, adapted, u, SECOND)
    adapted.context.config = {**adapted.config, "invalid column": (column, bad)}
    ctx, model = adapted.context, adapted.model
    if row.clause.endswith(".should"):
        assert_raises_clause(ctx, (ValueError,), SECOND, lambda: _forward(model, adapted.input(data)))
        return
    before = _tensors(driver, model, adapted.layer)
    for safe in (False, True):
        assert_raises_clause(ctx, (ValueError,), SECOND, lambda s=safe: driver.merge(model, safe=s))
        assert_unchanged(ctx, f"after the rejected merge(safe={safe})", _tensors(driver, model, adapted.layer), before)
        assert_equal(
            ctx,
            f"merged_adapters after the rejected merge(safe={safe})",
            list(driver.layer_state(model, KEY).merged_adapters),
            [],
        )


def _gs_rows(row: RowSpec, driver: Driver, data: st.DataObject) -> AdaptedLayer:
    """HRA-GS-1's domain: a square identity Linear with r ≤ d (full column rank possible)."""
    return _hra_identity_row(row, driver, data, where=lambda g, c: c["r"] <= g.in_features)


@pytest.mark.contract("HRA-GS-1", "HRA-GS-2", axes=("variant",), variants=("gs",))
@given(data=st.data())
def test_hra_gram_schmidt(row, driver, data):
    """Observed on a Linear whose base weight is I, U of full column rank with every residual ≥ 10⁻²‖u_i‖:
    HRA-GS-1 ⟨N⟩ R_GS = I − 2QQᵀ, Q by modified Gram–Schmidt; HRA-GS-2 ⟨N⟩ R_GS is symmetric, orthogonal, an
    involution, and the product of the reflections I − 2 q_i q_iᵀ in a drawn order."""
    row = _fill(row, driver, data, kinds=("linear",))
    adapted = _gs_rows(row, driver, data)
    d, r = adapted.layer.in_features, adapted.config["r"]
    u = _u_of(_set_u(driver, adapted, _well_conditioned(d, r, torch.Generator().manual_seed(adapted.seed + 3))))
    observed, oracle = _observed_r(driver, adapted), adapted.record.oracle
    if row.clause == "HRA-GS-1":
        _close(adapted.context, "applied R_GS vs I − 2QQᵀ", observed, oracle.gs_reflection(u), derive="W")
        return
    eye = torch.eye(d, dtype=torch.float64)
    _close(adapted.context, "R_GS − R_GSᵀ (symmetry)", observed - observed.T, torch.zeros_like(eye), derive="W - W.T")
    _close(adapted.context, "R_GSᵀ R_GS (orthogonality)", observed.T @ observed, eye, derive="W.T @ W")
    _close(adapted.context, "R_GS² (involution)", observed @ observed, eye, derive="W @ W")
    q = oracle.gram_schmidt(u)
    order = data.draw(st.permutations(range(q.shape[1])), label="reflection order")
    product = eye
    for i in order:
        product = product @ (eye - 2 * torch.outer(q[:, i], q[:, i]))
    _close(adapted.context, f"R_GS vs ∏ (I − 2 q_i q_iᵀ) in the order {order}", observed, product)


def _degenerate_u(data: st.DataObject, d: int, r: int, generator: torch.Generator) -> tuple[str, torch.Tensor]:
    """U in HRA-GS-3/4's domain with dependent columns: HRA-INIT-1's symmetric pairs [h_0, h_0, h_1, h_1, …],
    exact linear combinations of earlier columns, or (r > d) more columns than dimensions; every independent column
    keeps a residual ≥ 10⁻²‖u_i‖ and every dependent one has residual ≈ 0 (≤ √ε)."""
    kinds = ["pairs", "combinations"] + (["wide"] if r > d else [])
    kind = data.draw(st.sampled_from(kinds), label="degenerate U")
    if kind == "pairs":
        h = _well_conditioned(d, min(d, (r + 1) // 2), generator)
        columns = [h[:, min(i // 2, h.shape[1] - 1)] for i in range(r)]
        return kind, torch.stack(columns, dim=1)
    free = min(d, max(1, r - 1)) if kind == "combinations" else d
    base = _well_conditioned(d, free, generator)
    extra = [base @ (torch.rand(free, generator=generator, dtype=torch.float64) * 2 - 1) for _ in range(r - free)]
    u = torch.cat([base, *(e[:, None] for e in extra)], dim=1)
    shuffled = u[:, torch.randperm(r, generator=generator)]
    in_domain = all(ratio >= 1e-2 or ratio <= 1e-12 for ratio in _residual_ratios(shuffled))
    return kind, shuffled if kind == "combinations" and in_domain else u


def _nearly_dependent_last(d: int, r: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Well-conditioned columns u_0 … u_{r−2} and a last column p + δw, p a combination of them, w a unit vector
    orthogonal to them, δ = ratio·‖p‖: its Gram–Schmidt residual is ratio·‖u_{r−1}‖ (up to 1 + ratio²), above
    HRA-GS-4's float64 threshold √ε ≈ 1.5·10⁻⁸."""
    u = _well_conditioned(d, r, generator)
    q, _ = torch.linalg.qr(u[:, : r - 1])
    w = u[:, r - 1] - q @ (q.T @ u[:, r - 1])
    w = w - q @ (q.T @ w)
    w = w / torch.linalg.vector_norm(w)
    p = u[:, : r - 1] @ (torch.rand(r - 1, generator=generator, dtype=torch.float64) + 0.5)
    u[:, r - 1] = p + ratio * torch.linalg.vector_norm(p) * w
    return u


@pytest.mark.contract("HRA-GS-3", "HRA-GS-3.should", "HRA-GS-4", axes=("variant",), variants=("gs",))
@given(data=st.data())
def test_hra_gram_schmidt_degenerate(row, driver, data):
    """With apply_GS on a Linear whose base weight is I. HRA-GS-3 ⟨S⟩: a well-conditioned U, or one with symmetric
    pairs / dependent columns (float64 or float32), gives finite outputs, merged weights and gradients, and an
    orthogonal R_GS (⟨N⟩). `.should`: R_GS stays orthogonal for a column whose residual is just above HRA-GS-4's
    threshold (10⁻⁷…10⁻⁵‖u_i‖ in float64: re-orthogonalisation). HRA-GS-4 ⟨N⟩: dependent columns (residual ≤ √ε)
    add no direction: R_GS = I − 2QQᵀ with Q over the kept columns, and trace((I − R_GS)/2) = their number."""
    dtypes = ("float64", "float32") if row.clause == "HRA-GS-3" else ("float64",)
    row = _fill(row, driver, data, kinds=("linear",), dtypes=dtypes)
    should = row.clause == "HRA-GS-3.should"  # a nearly dependent last column: 2 ≤ r ≤ d
    if should:
        adapted = _hra_identity_row(
            row, driver, data, layer_where=lambda g: g.in_features >= 2, where=lambda g, c: 2 <= c["r"] <= g.in_features
        )
    else:  # HRA-GS-4 needs r ≥ 2 for a dependent column
        adapted = _hra_identity_row(row, driver, data, where=lambda g, c: c["r"] >= 2 or row.clause == "HRA-GS-3")
    d, r = adapted.layer.in_features, adapted.config["r"]
    generator = torch.Generator().manual_seed(adapted.seed + 3)
    eye = torch.eye(d, dtype=torch.float64)
    if should:
        ratio = data.draw(st.sampled_from([1e-7, 1e-6, 1e-5]), label="residual ratio")
        u = _nearly_dependent_last(d, r, ratio, generator)
        adapted.context.config = {**adapted.config, "last column residual ratio": ratio}
        _set_u(driver, adapted, u)
        observed = _observed_r(driver, adapted)
        what = f"R_GSᵀ R_GS, last column's residual {ratio:g}·‖u‖"
        _close(adapted.context, what, observed.T @ observed, eye, derive="W.T @ W")
        return
    use_degenerate = row.clause == "HRA-GS-4" or r > d or data.draw(st.booleans(), label="dependent columns")
    if use_degenerate:
        kind, u = _degenerate_u(data, d, r, generator)
    else:
        kind, u = "well-conditioned", _well_conditioned(d, r, generator)
    adapted.context.config = {**adapted.config, "U": kind}
    adapter = _set_u(driver, adapted, u)
    observed = _observed_r(driver, adapted)
    if row.clause == "HRA-GS-4":
        oracle = adapted.record.oracle
        _close(
            adapted.context,
            f"applied R_GS ({kind} U) vs I − 2QQᵀ over the kept columns",
            observed,
            oracle.gs_reflection(_u_of(adapter)),
            derive="W",
        )
        kept = torch.tensor(float(oracle.gram_schmidt(_u_of(adapter)).shape[1]), dtype=torch.float64)
        _close(
            adapted.context,
            f"trace((I − R_GS)/2) ({kind} U): the number of kept directions",
            torch.trace(eye - observed) / 2,
            kept,
            derive="torch.trace(torch.eye(W.shape[0], dtype=W.dtype) - W) / 2",
        )
        return
    _check_gs_finite(driver, adapted, data, kind)
    _close(adapted.context, f"R_GSᵀ R_GS ({kind} U)", observed.T @ observed, eye, row.dtype, derive="W.T @ W")


def _check_gs_finite(driver: Driver, adapted: AdaptedLayer, data: st.DataObject, kind: str) -> None:
    """HRA-GS-3: finite output, gradients (x and hra_u, eval mode) and merged weight."""
    ctx, model = adapted.context, adapted.model
    x = adapted.input(data).requires_grad_(True)
    y = model(x)
    if not torch.isfinite(y).all():
        what = f"the output ({kind} U)"
        fail(
            ctx,
            f"{what} has non-finite values, but should be finite",
            Discrepancy(what, (), None, None, 0.0, "output", kind="nonfinite"),
        )
    y.sum().backward()
    grads = {name: g for name, g in driver.get_grads(model, KEY, "default").items() if g is not None}
    if x.grad is not None:
        grads["x"] = x.grad
    for name, grad in grads.items():
        if not torch.isfinite(grad).all():
            fail(ctx, f"the gradient of {name} ({kind} U) has non-finite values, but should be finite")
    driver.merge(model)
    merged = _tensors(driver, model, adapted.layer)[0]
    if not torch.isfinite(merged).all():
        fail(ctx, f"the merged weight ({kind} U) has non-finite values, but should be finite")
    driver.unmerge(model)


def _maybe_square(data: st.DataObject) -> Callable[[Layer], Layer]:
    def shape(layer: Layer) -> Layer:
        return _square_identity(layer) if data.draw(st.booleans(), label="square") else layer

    return shape


@pytest.mark.contract("HRA-FWD-1")
@given(data=st.data())
def test_hra_input_side(row, driver, data):
    """HRA-FWD-1 ⟨N⟩: Linear, y = x (W R_tot)ᵀ + b — reflections act on the input space (square layers pinned half
    the time, where R W would also type-check)."""
    row = _fill(row, driver, data, kinds=("linear",))
    adapted = _adapt(driver, row, data, geometry=_maybe_square(data))
    oracle = adapted.record.oracle
    r_a = oracle.adapter_matrix(*_config_params(adapted, driver))
    weight, bias = _tensors(driver, adapted.model, adapted.layer)
    x = adapted.input(data)
    _close(
        adapted.context,
        "output vs x (W R)ᵀ + b",
        _forward(adapted.model, x),
        op(x.double(), weight @ r_a, bias, adapted.layer),
    )


def _config_params(adapted: AdaptedLayer, driver: Driver) -> tuple[dict, dict]:
    adapter = _read_adapter(adapted.record, adapted, driver)
    return adapter.config, adapter.params


@pytest.mark.contract("HRA-FWD-2")
@given(data=st.data())
def test_hra_conv(row, driver, data):
    """HRA-FWD-2 ⟨N⟩: Conv2d, y = op(x; reshape(W_flat R_tot), b) with every hyper-parameter of the base layer
    (kernel shape, stride, padding incl. "same"/"valid", dilation, padding_mode), and the base layer's output shape."""
    row = _fill(row, driver, data, kinds=("conv2d",))
    adapted = _adapt(driver, row, data)
    layer, oracle = adapted.layer, adapted.record.oracle
    r_a = oracle.adapter_matrix(*_config_params(adapted, driver))
    weight, bias = _tensors(driver, adapted.model, layer)
    x = adapted.input(data)
    adapted.context.shapes["layer"] = (
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.padding_mode,
    )
    y = _forward(adapted.model, x)
    assert_equal(
        adapted.context,
        "output shape",
        tuple(y.shape),
        tuple(_forward(_base(driver, adapted.model), x).shape),
        "output",
    )
    _close(
        adapted.context,
        "output vs op(x; reshape(W_flat R), b)",
        y,
        op(x.double(), (flat(weight) @ r_a).reshape(weight.shape), bias, layer),
    )


@pytest.mark.contract("HRA-FWD-3")
@given(data=st.data())
def test_hra_row_norms(row, driver, data):
    """HRA-FWD-3 ⟨N⟩: the effective weight the implementation applies (observed on a one-hot basis) keeps every row's
    norm: W′_flat W′_flatᵀ = W_flat W_flatᵀ (both modes)."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data, geometry=probe_geometry)
    weight = _tensors(driver, adapted.model, adapted.layer)[0]
    applied = flat(probe_weight(driver, adapted.model))
    _close(
        adapted.context,
        "W′_flat W′_flatᵀ of the applied weight vs W_flat W_flatᵀ",
        applied @ applied.T,
        flat(weight) @ flat(weight).T,
        derive="W.flatten(1) @ W.flatten(1).T",
    )


# ---------------------------------------------------------------------------------------------------------------
# IA3: IA3-FWD-1..3


def _channels(vector: torch.Tensor, layer: Layer) -> torch.Tensor:
    """A per-feature vector shaped to broadcast along the feature axis (last for linear kinds, the channel axis of a
    batched or unbatched conv activation)."""
    return vector.reshape(-1, *([1] * len(layer.kernel_size))) if layer.is_conv else vector.reshape(-1)


def _grouped(data: st.DataObject) -> Callable[[Layer], Layer]:
    """Convolutions with 2 or 3 groups (IA3-FWD-3's grouped rule); linear kinds unchanged."""

    def shape(layer: Layer) -> Layer:
        if not layer.is_conv:
            return layer
        groups = data.draw(st.integers(2, 3), label="groups")
        c, o = layer.channels_per_group, layer.out_features // layer.groups
        return replace(layer, in_features=groups * c, out_features=groups * o, groups=groups)

    return shape


@pytest.mark.contract("IA3-FWD-1", axes=("variant",), variants=("plain",))
@given(data=st.data())
def test_ia3_output_scaling(row, driver, data):
    """IA3-FWD-1 ⟨N⟩: non-feedforward, y = l ⊙ (x Wᵀ + b) along the output feature/channel axis: the bias is scaled
    too (every layer kind drawn)."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data)
    layer, x = adapted.layer, adapted.input(data)
    adapter = _read_adapter(adapted.record, adapted, driver)
    l_out = adapted.record.oracle.vector(adapter.config, adapter.params, layer)
    weight, bias = _tensors(driver, adapted.model, layer)
    expected = op(x.double(), weight, bias, layer) * _channels(l_out, layer)
    _close(adapted.context, "output vs l ⊙ base(x)", _forward(adapted.model, x), expected)


@pytest.mark.contract("IA3-FWD-2", axes=("variant",), variants=("feedforward",))
@given(data=st.data())
def test_ia3_input_scaling(row, driver, data):
    """IA3-FWD-2 ⟨N⟩: feedforward, y = base(l ⊙ x) along the input feature/channel axis; the bias is not scaled
    (every layer kind drawn)."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data)
    layer, x = adapted.layer, adapted.input(data)
    adapter = _read_adapter(adapted.record, adapted, driver)
    l_in = adapted.record.oracle.vector(adapter.config, adapter.params, layer)
    weight, bias = _tensors(driver, adapted.model, layer)
    expected = op(x.double() * _channels(l_in, layer), weight, bias, layer)
    _close(adapted.context, "output vs base(l ⊙ x)", _forward(adapted.model, x), expected)


@pytest.mark.contract("IA3-FWD-3")
@given(data=st.data())
def test_ia3_equivalent_weights(row, driver, data):
    """IA3-FWD-3 ⟨N⟩: the output is op(x; W′, b′) with the equivalent weights — diag(l) W and l ⊙ b, or W diag(l)
    and, for grouped convolutions (2 or 3 groups here), W′[o, c, …] = W[o, c, …] · l[g(o)·C + c], b′ = b."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data, geometry=_grouped(data))
    layer, x = adapted.layer, adapted.input(data)
    adapted.context.shapes["groups"] = (layer.groups,)
    weight, bias = _tensors(driver, adapted.model, layer)
    eff = adapted.record.oracle.effective(weight, bias, layer, [_read_adapter(adapted.record, adapted, driver)])
    _close(adapted.context, "output vs op(x; W′, b′)", _forward(adapted.model, x), op(x.double(), *eff, layer))


# ---------------------------------------------------------------------------------------------------------------
# LoHa: LOHA-DELTA-1/2, LOHA-FWD-1, LOHA-SCALE-1


@pytest.mark.contract("LOHA-DELTA-1", axes=("variant",), variants=("plain",))
@given(data=st.data())
def test_loha_hadamard_delta(row, driver, data):
    """LOHA-DELTA-1 ⟨N⟩: flattened mode, the delta the implementation applies (observed on a one-hot basis) is
    s·(w1a w1b) ⊙ (w2a w2b) reshaped row-major to W's shape, and rank ΔW_flat ≤ min(r², out, D) (every kind drawn)."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data, geometry=probe_geometry)
    layer, oracle = adapted.layer, adapted.record.oracle
    adapter = _read_adapter(adapted.record, adapted, driver)
    weight = _tensors(driver, adapted.model, layer)[0]
    delta = probe_weight(driver, adapted.model) - weight
    expected = oracle.delta_weight(layer, adapter)
    _close(adapted.context, "applied delta vs s·(w1a w1b) ⊙ (w2a w2b)", delta, expected, derive="W - B")
    r = adapter.config["r"]
    assert_rank_at_most(adapted.context, "ΔW_flat", flat(delta), min(r * r, layer.out_features, layer.fan_in))


@pytest.mark.contract("LOHA-DELTA-2", axes=("variant",), variants=("effective_conv",))
@given(data=st.data())
def test_loha_cp_delta(row, driver, data):
    """LOHA-DELTA-2 ⟨N⟩: effective mode (K > 1), the applied delta is s · P_1 ⊙ P_2 with P_m[p, q, κ] =
    Σ_{i,j} t_m[i, j, κ] w_ma[i, p] w_mb[j, q] (Conv1d: trailing unit axis dropped)."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data, geometry=probe_geometry, layer_where=lambda g: g.kernel_numel > 1)
    layer = adapted.layer
    weight = _tensors(driver, adapted.model, layer)[0]
    delta = probe_weight(driver, adapted.model) - weight
    expected = adapted.record.oracle.delta_weight(layer, _read_adapter(adapted.record, adapted, driver))
    _close(adapted.context, "applied delta vs s · P_1 ⊙ P_2", delta, expected, derive="W - B")


@pytest.mark.contract("LOHA-FWD-1")
@given(data=st.data())
def test_loha_forward_conv_parameters(row, driver, data):
    """LOHA-FWD-1 ⟨N⟩: y = base(x) + Σ_a op(x; ΔW_a, no bias) with the base layer's stride, padding, dilation,
    groups and padding_mode in every term (one adapter, or two active where the lifecycle surface is offered)."""
    row = _fill(row, driver, data, kinds=CONV_KINDS)
    names = ("default", SECOND) if offers(driver, row.tuner, "lifecycle") else ("default",)
    setup = draw_setup(driver, row, data, names)
    scene = build(driver, setup)
    if len(names) > 1:
        driver.set_active(scene.model, list(names))
    layer, x = setup.layer, scene.input(data)
    scene.context.shapes["layer"] = (layer.stride, layer.padding, layer.dilation, layer.groups, layer.padding_mode)
    weight, bias = scene.tensors(driver)
    expected = op(x.double(), weight, bias, layer)
    for name in names:
        expected = expected + op(
            x.double(), setup.record.oracle.delta_weight(layer, scene.adapter(driver, name)), None, layer
        )
    _close(
        scene.context,
        f"output with active {list(names)} vs base(x) + Σ op(x; ΔW_a)",
        _forward(scene.model, x),
        expected,
    )


SCALE_OPS = st.sampled_from(
    [("scale_layer", 2.0), ("scale_layer", 0.5), ("scale_layer", 1.0), ("scale_layer", 3.0), ("unscale_layer", None),
     ("unscale_layer", 2.0), ("unscale_layer", 4.0), ("set_scale", 0.5), ("set_scale", 3.0)]
)  # fmt: skip


@pytest.mark.contract("LOHA-SCALE-1")
@given(data=st.data())
def test_loha_scale_layer(row, driver, data):
    """LOHA-SCALE-1 ⟨N⟩ (optional `loha.scale_layer`): after each of a drawn sequence of scale_layer(f) (s ← s·f,
    f = 1 a no-op), unscale_layer(None) (s ← alpha/r), unscale_layer(f) (s ← s/f) and set_scale(a, f)
    (s ← f·alpha/r), the output is op(x; W + ΔW(s), b)."""
    row = _fill(row, driver, data)
    adapted = _adapt(driver, row, data)
    record, layer = adapted.record, adapted.layer
    adapter = _read_adapter(record, adapted, driver)
    x = adapted.input(data)
    weight, bias = _tensors(driver, adapted.model, layer)
    done: list[tuple[str, float | None]] = []
    for method, f in data.draw(st.lists(SCALE_OPS, min_size=1, max_size=4), label="operations"):
        args = ("default", f) if method == "set_scale" else (f,)
        driver.call_optional(adapted.model, "loha.scale_layer", method=method, args=args)
        done.append((method, f))
        s = record.oracle.scale_after(adapter.config, done)
        delta = record.oracle.delta_weight(layer, adapter, scale_value=s)
        _close(
            adapted.context,
            f"output after {done} (s = {s:g})",
            _forward(adapted.model, x),
            op(x.double(), weight + delta, bias, layer),
        )
