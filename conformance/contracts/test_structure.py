"""Family `structure`: injection keeps the base layer (CORE-INJ-1), rejects unsupported layer kinds naming their
type (CORE-INJ-2) and exposes in/out features (CORE-INJ-3); each tuner's layer kinds (…-LAYER-*), canonical
parameter shapes (…-PARAM-*, MISS-MINI-1) and trainable-parameter counts (…-COUNT-1), all read through the driver and
judged against the oracle's `param_shapes` / `trainable_count`."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from conformance.assertions import ClauseFailure, Context, assert_close_to_oracle, assert_equal, assert_raises_clause
from conformance.assertions import fail as clause_fail
from conformance.drivers.base import Driver, TunerCapabilities
from conformance.harness import (
    KEY,
    Holder,
    adapt_module,
    claims_of,
    clause_variants,
    needs_capability,
    optional_geometry_ok,
    seed_torch,
    usable_kinds,
    with_common_factor,
)
from conformance.rows import RowSpec
from conformance.spec.layer import Adapter, Layer, op
from conformance.spec.record import TunerRecord, Variant
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import scale, tolerance
from conformance.strategies import build_base, input_shapes, layers, logical_weight, random_tensor, seeds

ALL_KINDS = ("linear", "hf_conv1d", "conv1d", "conv2d", "conv3d")

# What each layer-kind clause asserts: `required` kinds adapt; `optional` declared kinds/geometries adapt (the row is
# skipped when none is declared, SPEC §0.2); `reject` every kind the tuner does not support is rejected
# (CORE-INJ-2); `orientation` fan_in_fan_out comes from the layer, a disagreeing config value warns.
LAYER_CHECKS: dict[str, tuple[str, ...]] = {
    "CORE-INJ-2": ("reject",),
    "BONE-LAYER-1": ("required",),
    "BONE-LAYER-3": ("reject",),
    "GRALORA-LAYER-1": ("required", "reject"),
    "GRALORA-LAYER-2": ("orientation",),
    "HRA-LAYER-1": ("required",),
    "HRA-LAYER-2": ("optional",),
    "HRA-LAYER-3": ("reject",),
    "IA3-LAYER-1": ("required",),
    "IA3-LAYER-3": ("reject", "orientation"),
    "LOHA-LAYER-1": ("required",),
    "LOHA-LAYER-2": ("optional", "reject"),
}

# Kinds a tuner MAY support besides its own (HRA-LAYER-3: further kinds with d = the flattened fan-in): such a module
# is either adapted, which the suite does not judge, or rejected as CORE-INJ-2 says.
MAY_SUPPORT: dict[str, frozenset[str]] = {"hra": frozenset({"hf_conv1d", "conv1d", "conv3d"})}


# ---- shared steps (proposed for conformance/harness.py) -----------------------------------------------------------


def plain_geometry(layer: Layer, record: TunerRecord) -> bool:
    """True for a geometry that needs no optional capability (the MUST part of a required kind)."""
    return not needs_capability(layer, record)


def kind_variant(data: st.DataObject, row: RowSpec, record: TunerRecord, claims: TunerCapabilities):
    """The row's variant and layer kind, drawn where the row leaves them open."""
    if row.variant is not None:
        variant = record.variant(row.variant)
    else:
        choices = [v for v in clause_variants(row.clause, record, claims) if usable_kinds(record, claims, v)]
        variant = data.draw(st.sampled_from(choices), label="variant")
    kind = row.layer_kind or data.draw(st.sampled_from(usable_kinds(record, claims, variant)), label="layer_kind")
    return variant, kind


@dataclass
class Fresh:
    """A freshly adapted layer (parameters as the implementation initialised them)."""

    layer: Layer
    variant: Variant
    config: dict
    resolved: dict
    seed: int
    base: nn.Module  # an untouched copy of the base module, taken before injection
    model: nn.Module
    context: Context


def adapt_fresh(
    driver: Driver,
    row: RowSpec,
    data: st.DataObject,
    *,
    dtype: str = "float64",
    where: Callable[[dict], bool] | None = None,
) -> Fresh:
    """Draw a layer (of the row's kind and variant, else any usable one) and a config, and inject it unperturbed."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    variant, kind = kind_variant(data, row, record, claims)
    layer = data.draw(layers(kind).filter(lambda g: optional_geometry_ok(g, record, claims)), label="layer")
    layer = with_common_factor(data, layer)
    init = row.init or data.draw(st.sampled_from(["identity", "random"]), label="init")
    configs = record.configs(layer, variant, init)
    config = data.draw(configs.filter(where) if where is not None else configs, label="config")
    seed = data.draw(seeds, label="seed")
    base = build_base(layer, dtype, seed)
    context = Context(row.clause, row.tuner, driver.name, config, {"weight": layer.weight_shape}, dtype, seed)
    with torch.random.fork_rng(devices=[]):
        seed_torch(seed)  # reproducible examples: hypothesis replays a failing one
        model = adapt_module(driver, row.tuner, copy.deepcopy(base), config)
    return Fresh(layer, variant, config, record.resolve(config, KEY), seed, base, model.eval(), context)


def shapes_of(params: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in sorted(params.items())}


def assert_same_tensor(context: Context, what: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """⟨Z⟩ for a kept tensor: same shape, dtype, device and bitwise-equal values."""
    __tracebackhide__ = True
    for prop in ("shape", "dtype", "device"):
        assert_equal(context, f"{what} {prop}", getattr(actual, prop), getattr(expected, prop))
    if not torch.equal(actual, expected):
        diff = (actual.detach().double() - expected.detach().double()).abs()
        where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        clause_fail(
            context,
            f"{what} changed: {int((diff > 0).sum())} of {diff.numel()} elements differ, largest change "
            f"{diff.max().item():.3g} at {where}, but should be bitwise unchanged",
        )


def trainable_count(model: nn.Module, base: nn.Module) -> int:
    """The trainable parameters of the adapted model outside the base layer (with `bias="none"` and no
    `modules_to_save` these are exactly the adapter's)."""
    base_ids = {id(p) for p in base.parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in base_ids)


# ---- CORE-INJ-1, CORE-INJ-3 -------------------------------------------------------------------------------------


class Pair(nn.Module):
    """A model holding the targeted layer under `layer` and an untargeted one of the same kind under `other`."""

    def __init__(self, layer: nn.Module, other: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.other = other


@pytest.mark.contract("CORE-INJ-1", axes=("layer_kind",))
def test_injection_keeps_base_layer(row, driver):
    """CORE-INJ-1 ⟨Z⟩: the tuner layer keeps the original module (same class, its own Parameter objects, not a copy)
    as its base layer with bitwise unchanged parameters, dtype and device; the untargeted module is neither adapted
    nor changed."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)

    @given(data=st.data())
    def check(data):
        variant, kind = kind_variant(data, row, record, claims)
        layer = data.draw(layers(kind).filter(lambda g: optional_geometry_ok(g, record, claims)), label="layer")
        init = data.draw(st.sampled_from(["identity", "random"]), label="init")
        config = data.draw(record.configs(layer, variant, init), label="config")
        dtype = data.draw(st.sampled_from(sorted(claims.dtypes)), label="dtype")
        seed = data.draw(seeds, label="seed")
        model = Pair(build_base(layer, dtype, seed), build_base(layer, dtype, seed + 1))
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        originals = dict(model.layer.named_parameters())
        context = Context(row.clause, row.tuner, driver.name, config, {"weight": layer.weight_shape}, dtype, seed)
        base_class = type(model.layer)
        try:
            adapted = driver.adapt(model, row.tuner, driver.make_config(row.tuner, {**config, "target_modules": [KEY]}))
        except (TypeError, ValueError, NotImplementedError) as exc:  # a claimed kind rejected: nothing was replaced
            clause_fail(
                context, f"injection into a {kind} layer raised {type(exc).__name__}({exc}), but should adapt it"
            )
        assert_equal(context, "adapted modules", driver.adapted_modules(adapted), [KEY])
        base = driver.layer_state(adapted, KEY).base_layer
        assert_equal(context, "class of the base layer", type(base).__name__, base_class.__name__)
        kept = dict(base.named_parameters())
        assert_equal(
            context,
            "base layer parameters",
            sorted(kept),
            sorted(n[len("layer.") :] for n in before if n.startswith("layer.")),
        )
        for name, value in kept.items():
            if value is not originals[name]:
                clause_fail(context, f"base layer {name} is a new tensor, but should be the original module's own")
            assert_same_tensor(context, f"base layer {name}", value, before[f"layer.{name}"])
        live = dict(adapted.named_parameters())
        for name in (n for n in before if n.startswith("other.")):
            found = [v for n, v in live.items() if n == name or n.endswith("." + name)]
            assert_equal(context, f"number of parameters named {name!r} after injection", len(found), 1)
            assert_same_tensor(context, f"untargeted module's {name}", found[0], before[name])

    check()


@pytest.mark.contract("CORE-INJ-3", axes=("layer_kind",))
def test_in_out_features(row, driver):
    """CORE-INJ-3 ⟨S⟩: Linear → its features; transformers Conv1D → its stored weight shape `(in, out)`;
    ConvNd → `(in_channels, out_channels)`."""

    @given(data=st.data())
    def check(data):
        fresh = adapt_fresh(driver, row, data)
        state = driver.layer_state(fresh.model, KEY)
        base = fresh.base
        if fresh.layer.kind == "linear":
            expected = (base.in_features, base.out_features)
        elif fresh.layer.kind == "hf_conv1d":
            expected = tuple(base.weight.shape)
        else:
            expected = (base.in_channels, base.out_channels)
        assert_equal(fresh.context, "(in_features, out_features)", (state.in_features, state.out_features), expected)

    check()


# ---- layer kinds: CORE-INJ-2 and the …-LAYER-* clauses ----------------------------------------------------------


def unsupported_modules(data: st.DataObject, record: TunerRecord) -> list[tuple[str, nn.Module, Layer]]:
    """(kind, module, proxy): one module of every standard kind outside the tuner's kinds, and an Embedding; each with
    the linear geometry its config is drawn for (a config valid for a Linear of the same in/out, so the kind is the
    only fault)."""
    out = []
    for kind in [k for k in ALL_KINDS if k not in record.kinds] + ["embedding"]:
        geometry = data.draw(layers("linear" if kind == "embedding" else kind), label=f"unsupported_{kind}")
        proxy = Layer("linear", geometry.in_features, geometry.out_features)
        if kind == "embedding":
            module = nn.Embedding(geometry.in_features, geometry.out_features).double()
        else:
            module = build_base(geometry, "float64", data.draw(seeds, label="seed"))
        out.append((kind, module, proxy))
    return out


def check_supported(driver, row, record, claims, data, layer: Layer, variant: Variant) -> None:
    """`layer` adapts: the module is adapted, holds the adapter's canonical parameters, and forward returns the base
    layer's output shape."""
    init = data.draw(st.sampled_from(["identity", "random"]), label="init")
    config = data.draw(record.configs(layer, variant, init), label="config")
    seed = data.draw(seeds, label="seed")
    bias = layer.kind == "hf_conv1d" or data.draw(st.booleans(), label="bias")
    base = build_base(layer, "float64", seed, bias=bias)
    context = Context(row.clause, row.tuner, driver.name, config, {"weight": layer.weight_shape}, "float64", seed)
    context.shapes["layer"] = (layer.kind, layer.groups, *layer.kernel_size)
    try:
        model = adapt_module(driver, row.tuner, copy.deepcopy(base), config).eval()
    except (TypeError, ValueError, NotImplementedError) as exc:  # a rejection (CORE-INJ-2's errors) is the violation
        clause_fail(
            context, f"injection into a {layer.kind} layer raised {type(exc).__name__}({exc}), but should adapt it"
        )
    assert_equal(context, f"adapted modules ({layer.kind})", driver.adapted_modules(model), [KEY])
    expected = record.oracle.param_shapes(record.resolve(config, KEY), layer)
    assert_equal(
        context,
        f"adapter parameters ({layer.kind})",
        shapes_of(driver.get_params(model, KEY, "default")),
        dict(sorted(expected.items())),
        "shapes",
    )
    x = random_tensor(data.draw(input_shapes(layer), label="input_shape"), "float64", seed + 1)
    with torch.no_grad():
        y, y_base = model(x), base(x)
    assert_equal(context, f"output shape ({layer.kind})", tuple(y.shape), tuple(y_base.shape))


def rerun_if_raised(call: Callable[[], object]) -> Callable[[], None] | None:
    """Run `call` once: None if it returned, else a call raising its exception again (for `assert_raises_clause`)."""
    try:
        call()
    except Exception as exc:  # judged by the caller, as if raised there
        raised = exc

        def again() -> None:
            raise raised

        return again
    return None


def check_rejected(driver, row, record, claims, data) -> None:
    """CORE-INJ-2: injecting into each unsupported module raises TypeError or ValueError naming its type, and the
    module is left as it was; a kind of MAY_SUPPORT may be adapted instead."""
    variant = data.draw(st.sampled_from(clause_variants(row.clause, record, claims)), label="variant")
    for kind, module, proxy in unsupported_modules(data, record):
        config = data.draw(record.configs(proxy, variant, "identity"), label="config")
        context = Context(row.clause, row.tuner, driver.name, config, {"module": (type(module).__name__,)})
        holder = Holder(module)
        before = {name: p.detach().clone() for name, p in module.named_parameters()}
        subject = type(module).__name__
        cfg = driver.make_config(row.tuner, {**config, "target_modules": [KEY]})
        call = partial(driver.adapt, holder, row.tuner, cfg)
        if kind in MAY_SUPPORT.get(row.tuner, ()):
            call = rerun_if_raised(call)
            if call is None:
                continue  # adapted: a kind the tuner may support, which the suite does not judge
        assert_raises_clause(context, (TypeError, ValueError), subject, call)
        if holder.layer is not module:
            clause_fail(context, f"the rejected {subject} was replaced by a {type(holder.layer).__name__}")
        for name, value in module.named_parameters():
            assert_same_tensor(context, f"rejected {subject}'s {name}", value, before[name])


def check_orientation(driver, row, record, claims, data) -> None:
    """fan_in_fan_out follows the layer: a disagreeing config value warns (naming the field) and is overridden, so
    forward and merged weight are the oracle's in logical orientation."""
    variant = data.draw(st.sampled_from(clause_variants(row.clause, record, claims)), label="variant")
    for kind in [k for k in ("linear", "hf_conv1d") if k in usable_kinds(record, claims, variant)]:
        layer = data.draw(layers(kind), label=f"layer_{kind}")
        if data.draw(st.booleans(), label="square"):
            layer = replace(layer, out_features=layer.in_features)
        config = data.draw(record.configs(layer, variant, "random"), label="config")
        config = {**config, "fan_in_fan_out": kind != "hf_conv1d"}  # the value the layer contradicts
        seed = data.draw(seeds, label="seed")
        base = build_base(layer, "float64", seed)
        context = Context(row.clause, row.tuner, driver.name, config, {"weight": layer.weight_shape}, "float64", seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = adapt_module(driver, row.tuner, copy.deepcopy(base), config).eval()
        assert_warned(
            context, caught, ("fan_in_fan_out",), f"a {kind} layer with fan_in_fan_out={config['fan_in_fan_out']}"
        )
        shapes = shapes_of(driver.get_params(model, KEY, "default"))
        resolved = record.resolve(config, KEY)
        generator = torch.Generator().manual_seed(seed + 2)
        driver.set_params(model, KEY, "default", record.perturb(resolved, layer, shapes, generator))
        adapter = Adapter(resolved, {k: v.double() for k, v in driver.get_params(model, KEY, "default").items()})
        weight = logical_weight(base, layer)
        bias = base.bias.detach().double()
        eff_weight, eff_bias = record.oracle.effective(weight, bias, layer, [adapter])
        x = random_tensor(data.draw(input_shapes(layer), label="input_shape"), "float64", seed + 1)
        with torch.no_grad():
            y = model(x)
        expected = op(x, eff_weight, eff_bias, layer)
        tol = tolerance("N", "float64")
        assert_close_to_oracle(
            context=context, what=f"output ({kind})", actual=y, expected=expected, tol=tol, scale=scale(expected)
        )
        driver.merge(model)
        merged = driver.layer_state(model, KEY).base_layer
        assert_close_to_oracle(
            context=context, what=f"merged weight ({kind}, logical orientation)", actual=logical_weight(merged, layer),
            expected=eff_weight, tol=tol, scale=scale(eff_weight),
        )  # fmt: skip


def assert_warned(context: Context, caught: list, subjects: tuple[str, ...], when: str) -> None:
    """A UserWarning (or subclass) whose message names one of `subjects` (case-insensitively, SPEC §0.1) was
    emitted. Proposed for conformance/assertions.py as `assert_warns_clause`."""
    __tracebackhide__ = True
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if not any(s.lower() in m.lower() for m in messages for s in subjects):
        clause_fail(
            context, f"no UserWarning naming {' or '.join(map(repr, subjects))} for {when}; warnings seen: {messages}"
        )


@pytest.mark.contract(*LAYER_CHECKS)
def test_layer_kinds(row, driver):
    """CORE-INJ-2 and each tuner's LAYER clauses (see LAYER_CHECKS): required kinds adapt (every claimed variant,
    conv hyper-parameter and bias option), declared optional kinds/geometries adapt, every other kind is rejected
    naming its type, and fan_in_fan_out is taken from the layer."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    checks = LAYER_CHECKS[row.clause]
    context = Context(row.clause, row.tuner, driver.name)
    targets: list[tuple[str, Callable[[Layer], bool]]] = []  # (kind, geometry filter) that must adapt
    if "required" in checks:
        for kind in sorted(record.required_kinds):
            if kind not in claims.layer_kinds:
                raise ClauseFailure(f"unsupported, required by {row.clause}: layer kind {kind} {context.describe()}")
            targets.append((kind, lambda g: plain_geometry(g, record)))
    if "optional" in checks:
        declared = {k: c for k, c in record.optional_kinds.items() if c in claims.optional}
        geometries = {c: f for c, f in record.optional_geometry.items() if c in claims.optional}
        if not declared and not geometries:
            capabilities = sorted([*record.optional_kinds.values(), *record.optional_geometry])
            pytest.skip(f"optional capability not declared: {', '.join(capabilities)}")
        targets += [(kind, lambda g: True) for kind in sorted(declared)]
        targets += [(kind, applies) for kind, applies in geometries.values() if kind in claims.layer_kinds]

    @given(data=st.data())
    def check(data):
        for kind, geometry in targets:
            for variant in clause_variants(row.clause, record, claims):
                if variant.applies_to(kind):
                    layer = data.draw(layers(kind).filter(geometry), label=f"layer_{kind}")
                    check_supported(driver, row, record, claims, data, layer, variant)
        if "reject" in checks:
            check_rejected(driver, row, record, claims, data)
        if "orientation" in checks:
            check_orientation(driver, row, record, claims, data)

    check()


# ---- parameter shapes: …-PARAM-*, MISS-MINI-1 -------------------------------------------------------------------


def unit_kernel(layer: Layer) -> Layer:
    """The same convolution with a 1×1 (k = 1) kernel: pinned in every shape check (LOHA-PARAM-2's silent
    fallback to the flattened mode, d = C for HRA)."""
    dims = len(layer.kernel_size)
    return replace(layer, kernel_size=(1,) * dims, padding=(0,) * dims, padding_mode="zeros")


def check_param_shapes(row: RowSpec, driver: Driver, *, zeros: bool = False) -> None:
    """The adapter's parameters, read back through the driver, have exactly the oracle's names and shapes
    (`param_shapes` of the resolved config); for convolutions also with a 1×1 kernel. `zeros`: also all zeros ⟨Z⟩."""
    record = RECORDS[row.tuner]

    @given(data=st.data())
    def check(data):
        fresh = adapt_fresh(driver, row, data)
        cases = [(fresh.layer, fresh.model)]
        if fresh.layer.is_conv:
            twin = unit_kernel(fresh.layer)
            cases.append((twin, adapt_module(driver, row.tuner, build_base(twin, "float64", fresh.seed), fresh.config)))
        for layer, model in cases:
            fresh.context.shapes["weight"] = layer.weight_shape
            params = driver.get_params(model, KEY, "default")
            expected = record.oracle.param_shapes(fresh.resolved, layer)
            assert_equal(
                fresh.context, "adapter parameter shapes", shapes_of(params), dict(sorted(expected.items())), "shapes"
            )
            for name, value in params.items():
                if zeros and not torch.equal(value, torch.zeros_like(value)):
                    clause_fail(
                        fresh.context, f"{name} has {int((value != 0).sum())} non-zero entries, but should be all zeros"
                    )

    check()


@pytest.mark.contract("GRALORA-PARAM-1", "HRA-PARAM-1", "IA3-PARAM-1", axes=("variant", "layer_kind"))
def test_param_shapes(row, driver):
    """GRALORA-PARAM-1 (`gralora_A` (N, in/N, r), `gralora_B` (N, r, out/N), general parts iff h > 0),
    HRA-PARAM-1 (`hra_u` (d, r)), IA3-PARAM-1 (`ia3_l` per kind and feedforward flag)."""
    check_param_shapes(row, driver)


@pytest.mark.contract("BONE-PARAM-1", "LOHA-PARAM-1", axes=("variant", "layer_kind"), variants=("plain",))
def test_param_shapes_plain(row, driver):
    """BONE-PARAM-1 (`bone_block` (r, out), init True and False), LOHA-PARAM-1 (flattened: `w?a` (out, r),
    `w?b` (r, D))."""
    check_param_shapes(row, driver)


@pytest.mark.contract("BONE-PARAM-2", axes=("variant", "layer_kind"), variants=("bat",))
def test_param_shapes_bat(row, driver):
    """BONE-PARAM-2: BAT `bone_block` (out/r, r, r)."""
    check_param_shapes(row, driver)


@pytest.mark.contract("LOHA-PARAM-2", axes=("variant", "layer_kind"), variants=("effective_conv",))
def test_param_shapes_effective_conv(row, driver):
    """LOHA-PARAM-2: effective mode iff `use_effective_conv2d` and K > 1 (`hada_t?` (r, r, k…), `w?a` (r, out),
    `w?b` (r, C)); a 1×1 / k = 1 kernel stays flattened."""
    check_param_shapes(row, driver)


@pytest.mark.contract("MISS-MINI-1", axes=("variant", "layer_kind"), variants=("mini",))
def test_mini_block(row, driver):
    """MISS-MINI-1: `"mini"` `miss_block` has shape (r, mini_r) and is initialised to zeros ⟨Z⟩."""
    check_param_shapes(row, driver, zeros=True)


@pytest.mark.contract("GRALORA-PARAM-2", axes=("variant",))
def test_scaling(row, driver):
    """GRALORA-PARAM-2: the adapter path is scaled by σ = alpha/(r + h): with generic parameters, the delta
    `y − base(x)` equals the oracle's (which applies σ), in float64 at ⟨N⟩."""
    record = RECORDS[row.tuner]

    @given(data=st.data())
    def check(data):
        fresh = adapt_fresh(driver, row, data)
        shapes = shapes_of(driver.get_params(fresh.model, KEY, "default"))
        generator = torch.Generator().manual_seed(fresh.seed + 2)
        driver.set_params(fresh.model, KEY, "default", record.perturb(fresh.resolved, fresh.layer, shapes, generator))
        adapter = Adapter(
            fresh.resolved, {k: v.double() for k, v in driver.get_params(fresh.model, KEY, "default").items()}
        )
        weight, bias = logical_weight(fresh.base, fresh.layer), fresh.base.bias.detach().double()
        eff_weight, eff_bias = record.oracle.effective(weight, bias, fresh.layer, [adapter])
        x = random_tensor(data.draw(input_shapes(fresh.layer), label="input_shape"), "float64", fresh.seed + 1)
        with torch.no_grad():
            delta = fresh.model(x) - fresh.base(x)
        expected = op(x, eff_weight, eff_bias, fresh.layer) - op(x, weight, bias, fresh.layer)
        assert_close_to_oracle(
            context=fresh.context, what="adapter delta y − base(x)", actual=delta, expected=expected,
            tol=tolerance("N", "float64"), scale=scale(expected),
        )  # fmt: skip

    check()


# ---- trainable counts: …-COUNT-1 --------------------------------------------------------------------------------


def check_count(row: RowSpec, driver: Driver) -> None:
    """The trainable parameters outside the base layer, after injection, number `trainable_count` of the oracle."""
    record = RECORDS[row.tuner]

    @given(data=st.data())
    def check(data):
        fresh = adapt_fresh(driver, row, data)
        base = driver.layer_state(fresh.model, KEY).base_layer
        expected = record.oracle.trainable_count(fresh.resolved, fresh.layer)
        fresh.context.shapes.update(shapes_of(driver.get_params(fresh.model, KEY, "default")))
        count = trainable_count(fresh.model, base)
        assert_equal(fresh.context, "trainable adapter parameters", count, expected, observe="trainable")

    check()


@pytest.mark.contract("BONE-COUNT-1", axes=("variant", "layer_kind"), variants=("plain", "bat"))
def test_count_bone(row, driver):
    """BONE-COUNT-1: r·out per layer for Bone and BAT ((out/r)·r²)."""
    check_count(row, driver)


@pytest.mark.contract(
    "MISS-COUNT-1", "GRALORA-COUNT-1", "HRA-COUNT-1", "IA3-COUNT-1", "LOHA-COUNT-1", axes=("variant", "layer_kind")
)
def test_count(row, driver):
    """MISS-COUNT-1 (r·out; mini r·mini_r), GRALORA-COUNT-1 ((r + h)(in + out)), HRA-COUNT-1 (d·r), IA3-COUNT-1
    (out or in), LOHA-COUNT-1 (2r(in + out), 2r(out + C·K), 2(r²K + r·out + r·C))."""
    check_count(row, driver)


# ---- optional layer kinds of BONE-LAYER-2 and IA3-LAYER-2 -------------------------------------------------------


def check_optional_kind(driver: Driver, row: RowSpec, data: st.DataObject, layer: Layer, variant: Variant) -> None:
    """A declared optional kind adapts like a required one: injection succeeds (a rejection is the violation), the
    adapter holds the oracle's canonical parameters, and with generic parameters its forward and its merged weight
    (read back in logical orientation) equal the oracle's, ⟨N⟩ float64."""
    record = RECORDS[row.tuner]
    config = data.draw(record.configs(layer, variant, "random"), label=f"config_{layer.kind}_{variant.name}")
    seed = data.draw(seeds, label="seed")
    base = build_base(layer, "float64", seed)
    context = Context(row.clause, row.tuner, driver.name, config, {"weight": layer.weight_shape}, "float64", seed)
    context.shapes["layer"] = (layer.kind, layer.groups, *layer.kernel_size)
    try:
        model = adapt_module(driver, row.tuner, copy.deepcopy(base), config).eval()
    except (TypeError, ValueError, NotImplementedError) as exc:
        clause_fail(
            context, f"injection into the declared optional kind {layer.kind} raised {type(exc).__name__}({exc})"
        )
    assert_equal(context, f"adapted modules ({layer.kind})", driver.adapted_modules(model), [KEY])
    resolved = record.resolve(config, KEY)
    expected_shapes = dict(sorted(record.oracle.param_shapes(resolved, layer).items()))
    shapes = shapes_of(driver.get_params(model, KEY, "default"))
    assert_equal(context, f"adapter parameters ({layer.kind}, {variant.name})", shapes, expected_shapes, "shapes")
    generator = torch.Generator().manual_seed(seed + 2)
    driver.set_params(model, KEY, "default", record.perturb(resolved, layer, shapes, generator))
    adapter = Adapter(resolved, {k: v.double() for k, v in driver.get_params(model, KEY, "default").items()})
    weight = logical_weight(base, layer)
    bias = None if base.bias is None else base.bias.detach().double()
    eff_weight, eff_bias = record.oracle.effective(weight, bias, layer, [adapter])
    x = random_tensor(data.draw(input_shapes(layer), label="input_shape"), "float64", seed + 1)
    with torch.no_grad():
        y = model(x)
    expected = op(x, eff_weight, eff_bias, layer)
    tol = tolerance("N", "float64")
    assert_close_to_oracle(
        context=context, what=f"output ({layer.kind}, {variant.name})", actual=y, expected=expected, tol=tol,
        scale=scale(expected),
    )  # fmt: skip
    driver.merge(model)
    merged = logical_weight(driver.layer_state(model, KEY).base_layer, layer)
    assert_close_to_oracle(
        context=context, what=f"merged weight ({layer.kind}, {variant.name}, logical orientation)", actual=merged,
        expected=eff_weight, tol=tol, scale=scale(eff_weight),
    )  # fmt: skip


@pytest.mark.contract("BONE-LAYER-2", "IA3-LAYER-2")
def test_optional_layer_kinds(row, driver):
    """BONE-LAYER-2 (transformers Conv1D in logical orientation: `bone.hf_conv1d`, `miss.hf_conv1d`) and IA3-LAYER-2
    (torch Conv1d with the vector (1, C, 1): `ia3.conv1d`), optional ⟨S⟩: a declared kind adapts, for every variant
    of the clause and conv hyper-parameter, with canonical parameters and the oracle's forward and merged weight.
    Skipped when no optional kind is declared. (The quantized-linear options have no layer kind in the suite.)"""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    declared = sorted(kind for kind, capability in record.optional_kinds.items() if capability in claims.optional)
    if not declared:
        pytest.skip(f"optional capability not declared: {', '.join(sorted(record.optional_kinds.values()))}")
    variants = clause_variants(row.clause, record, claims)

    @given(data=st.data())
    def check(data):
        for kind in declared:
            layer = with_common_factor(data, data.draw(layers(kind), label=f"layer_{kind}"))
            for variant in variants:
                if variant.applies_to(kind):
                    check_optional_kind(driver, row, data, layer, variant)

    check()
