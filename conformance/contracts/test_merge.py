"""Family `merge`: merging folds adapters into the base weights (SPEC §1.8 CORE-MERGE-1…4, 10…12, 14, CORE-FWD-9)
and the merged weight is the oracle's effective weight (each tuner's merge clause).

The first half of this module holds the scene-building helpers the `unmerge` and `safe_merge` families share
(several named adapters on one model, rows whose axes leave variant / layer kind / dtype open, warning capture,
the round-trip tolerance of §8). They are candidates for `conformance/harness.py`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from torch import nn

from conformance.assertions import Context, assert_close_to_oracle, assert_equal, assert_raises_clause, fail
from conformance.drivers.base import Driver
from conformance.harness import KEY, Holder, require_base_runs
from conformance.rows import RowSpec
from conformance.spec.layer import Adapter, Layer, op
from conformance.spec.record import TunerRecord
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import scale, tolerance
from conformance.strategies import build_base, input_shapes, layers, logical_weight, random_tensor, seeds

ALL_DTYPES = ("float64", "float32", "bfloat16", "float16")
SECOND = "zeta"  # distinctive names, so that a message naming the adapter can be recognised
THIRD = "theta"
INNER = "inner.layer"  # the second module of a `Twin`; `target_modules=["layer"]` matches both keys


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the merge, unmerge and safe_merge families (candidates for conformance/harness.py)


class Twin(nn.Module):
    """Two base layers of one geometry under the keys `layer` and `inner.layer`, applied to the same input and
    summed: the smallest model with two tuner layers that one list entry `"layer"` targets (model scope)."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.layer = first
        self.inner = Holder(second)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + self.inner(x)


def offers(driver: Driver, tuner: str, surface: str) -> bool:
    return surface in driver.capabilities().tuners[tuner].surfaces


def require_lifecycle(driver: Driver, row: RowSpec) -> None:
    """Rows that need a second named adapter (`add_adapter`, `set_active`) skip where the lifecycle surface is not
    offered (DESIGN "Surfaces")."""
    if not offers(driver, row.tuner, "lifecycle"):
        pytest.skip("surface not offered: lifecycle (the check needs several named adapters)")


def _supported_kind(record: TunerRecord, claims: Any, kind: str) -> bool:
    if kind in record.optional_kinds:
        return record.optional_kinds[kind] in claims.optional
    return kind in claims.layer_kinds


def fill_row(row: RowSpec, driver: Driver, data: st.DataObject, dtypes: Sequence[str] = ("float64",)) -> RowSpec:
    """The row with the axes it leaves open drawn: a variant the driver claims, a layer kind it supports that the
    variant applies to, and a dtype from `dtypes`. The report row keeps its null fields; the draw is in the
    example (in every failure message, and in `--hypothesis-show-statistics`)."""
    record, claims = RECORDS[row.tuner], driver.capabilities().tuners[row.tuner]
    kinds = (
        [row.layer_kind] if row.layer_kind else sorted(k for k in record.kinds if _supported_kind(record, claims, k))
    )
    variant = row.variant
    if variant is None:
        names = [v.name for v in record.variants if v.name in claims.variants and any(v.applies_to(k) for k in kinds)]
        variant = data.draw(st.sampled_from(names), label="variant")
    kinds = [k for k in kinds if record.variant(variant).applies_to(k)]
    kind = row.layer_kind or data.draw(st.sampled_from(kinds), label="layer_kind")
    dtype = row.dtype or data.draw(st.sampled_from([d for d in dtypes if d in claims.dtypes]), label="dtype")
    event(f"variant={variant} layer_kind={kind} dtype={dtype}")  # --hypothesis-show-statistics shows the draws
    return replace(row, variant=variant, layer_kind=kind, dtype=dtype)


@dataclass
class Setup:
    """Everything a scene is built from, so that it can be built twice identically (CORE-MERGE-8)."""

    row: RowSpec  # variant, layer kind and dtype filled in
    layer: Layer
    configs: dict[str, dict]  # adapter name → canonical config with its target_modules, in creation order
    seed: int
    twin: bool = False  # a `Twin` (keys `layer`, `inner.layer`) instead of a `Holder` (key `layer`)

    @property
    def record(self) -> TunerRecord:
        return RECORDS[self.row.tuner]

    @property
    def keys(self) -> tuple[str, ...]:
        return (KEY, INNER) if self.twin else (KEY,)


def draw_setup(
    row: RowSpec,
    data: st.DataObject,
    names: Iterable[str] = ("default",),
    *,
    twin: bool = False,
    targets: dict[str, Any] | None = None,
) -> Setup:
    """A layer of the row's kind, one config per adapter name (all of the row's variant, drawn independently),
    and a seed. `targets` overrides `target_modules` per adapter (default `["layer"]`)."""
    record = RECORDS[row.tuner]
    layer = data.draw(layers(row.layer_kind), label="layer")
    variant = record.variant(row.variant)
    configs = {}
    for name in names:
        config = data.draw(record.configs(layer, variant, row.init), label=f"config {name}")
        configs[name] = {**config, "target_modules": (targets or {}).get(name, [KEY])}
    return Setup(row, layer, configs, data.draw(seeds, label="seed"), twin)


@dataclass
class Scene:
    """An adapted model built from a `Setup` through the driver, every adapter perturbed to non-identity values of
    §8's input domain, in eval mode."""

    setup: Setup
    model: nn.Module
    context: Context

    @property
    def names(self) -> list[str]:
        return list(self.setup.configs)

    def tensors(self, driver: Driver, key: str = KEY) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A float64 copy (exact for every dtype) of the live base weight (logical orientation) and bias of `key`.
        Copied: `.double()` of a float64 tensor is the tensor itself, which an in-place merge would change."""
        base = driver.layer_state(self.model, key).base_layer
        bias = None if base.bias is None else base.bias.detach().double().clone()
        return logical_weight(base, self.setup.layer).clone(), bias

    def adapter(self, driver: Driver, name: str, key: str = KEY) -> Adapter:
        """The oracle's view of adapter `name` on `key`: its own resolved config, parameters read back."""
        params = {k: v.double() for k, v in driver.get_params(self.model, key, name).items()}
        return Adapter(self.setup.record.resolve(self.setup.configs[name], key), params)

    def adapters(self, driver: Driver, names: Iterable[str], key: str = KEY) -> list[Adapter]:
        return [self.adapter(driver, name, key) for name in names if self.injected(driver, name, key)]

    def injected(self, driver: Driver, name: str, key: str = KEY) -> bool:
        return bool(driver.get_params(self.model, key, name))

    def merged(self, driver: Driver, key: str = KEY) -> list[str]:
        return list(driver.layer_state(self.model, key).merged_adapters)

    def input(self, data: st.DataObject) -> torch.Tensor:
        shape = data.draw(input_shapes(self.setup.layer), label="input_shape")
        self.context.shapes["x"] = shape
        return random_tensor(shape, self.setup.row.dtype, self.setup.seed + 1)

    def expected_output(self, x: torch.Tensor, weights: dict[str, tuple]) -> torch.Tensor:
        """The float64 closed form of the model's output, given each key's effective (W, b)."""
        outputs = [op(x.double(), *weights[key], self.setup.layer) for key in self.setup.keys]
        return sum(outputs[1:], outputs[0])

    def effective(self, driver: Driver, names: Iterable[str], key: str = KEY, base: tuple | None = None) -> tuple:
        """The oracle's (W, b) of `key` with `names` applied in order to `base` (default: the live tensors)."""
        weight, bias = base if base is not None else self.tensors(driver, key)
        return self.setup.record.oracle.effective(weight, bias, self.setup.layer, self.adapters(driver, names, key))


def build(
    driver: Driver,
    setup: Setup,
    *,
    perturb: Callable[[str, str, dict], dict] | None = None,
    prepare: Callable[[nn.Module], None] | None = None,
) -> Scene:
    """Adapt a fresh base model through the driver: the first adapter by `adapt`, the others by `add_adapter`;
    every adapter's parameters on every key set to the record's `perturb` values (then `perturb(name, key,
    params)` may alter them); eval mode. `prepare(base)` may alter each base module before adaptation (the user's
    model as built). Deterministic in `setup`."""
    row, record, layer = setup.row, setup.record, setup.layer
    bases = [build_base(layer, row.dtype, setup.seed + 7 * i) for i in range(len(setup.keys))]
    require_base_runs(bases[0], layer, row.dtype)
    for base in bases:
        if prepare is not None:
            prepare(base)
    model: nn.Module = Twin(*bases) if setup.twin else Holder(*bases)
    generator = torch.Generator().manual_seed(setup.seed + 2)
    for i, (name, config) in enumerate(setup.configs.items()):
        cfg = driver.make_config(row.tuner, config)
        if i == 0:
            model = driver.adapt(model, row.tuner, cfg, name)
        else:
            driver.add_adapter(model, row.tuner, name, cfg)
        for key in setup.keys:
            shapes = {n: tuple(t.shape) for n, t in driver.get_params(model, key, name).items()}
            if not shapes:
                continue  # not injected on this key
            params = record.perturb(record.resolve(config, key), layer, shapes, generator)
            if perturb is not None:
                params = perturb(name, key, params)
            driver.set_params(model, key, name, params)
    shapes = {"weight": layer.weight_shape}
    context = Context(row.clause, row.tuner, driver.name, setup.configs, shapes, row.dtype, setup.seed)
    return Scene(setup, model.eval(), context)


def scene_for(
    row: RowSpec, driver: Driver, data: st.DataObject, names: Iterable[str] = ("default",), **kw: Any
) -> Scene:
    """`fill_row`, `draw_setup` and `build` in one step (keyword arguments go to `fill_row`'s dtypes)."""
    row = fill_row(row, driver, data, **kw)
    return build(driver, draw_setup(row, data, names))


def caught_warnings(call: Callable[[], Any]) -> list[warnings.WarningMessage]:
    """Run `call`, recording every warning it emits (no filter hides repeats)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return list(caught)


def user_warnings(caught: list[warnings.WarningMessage], subject: str = "") -> list[warnings.WarningMessage]:
    """The UserWarnings (subclasses included, SPEC §0.1) whose message names `subject` (case-insensitively)."""
    pattern = re.compile(re.escape(subject), re.IGNORECASE)
    return [w for w in caught if issubclass(w.category, UserWarning) and pattern.search(str(w.message))]


def assert_warned(context: Context, what: str, caught: list[warnings.WarningMessage], subject: str = "") -> None:
    """SPEC §0.1 "warn": a UserWarning (or subclass) was emitted whose message names `subject`."""
    __tracebackhide__ = True
    if not user_warnings(caught, subject):
        seen = [f"{w.category.__name__}: {w.message}" for w in caught]
        naming = f" naming {subject!r}" if subject else ""
        fail(context, f"{what} emitted no UserWarning{naming}, but should warn (warnings emitted: {seen})")


def assert_unchanged(
    context: Context, what: str, actual: tuple[torch.Tensor, torch.Tensor | None], before: tuple
) -> None:
    """⟨Z⟩: the base weight and bias equal, bitwise, their values before."""
    __tracebackhide__ = True
    assert_equal(context, f"{what}: base weight", actual[0], before[0])
    assert_equal(context, f"{what}: base bias", actual[1], before[1])


def unmerge_class(record: TunerRecord, variant: str) -> str:
    """The tolerance class of a tuner's merge-then-unmerge round trip (CORE-MERGE-6): A-INV for BAT blocks
    (BONE-BAT-3), the IA3 ⟨A⟩ rule where the oracle bounds its unmerge error (IA3-MERGE-2), ⟨N⟩ otherwise.
    (A record field `unmerge_class(config)` would say this declaratively.)"""
    if variant == "bat":
        return "A-INV"
    if hasattr(record.oracle, "unmerge_bound"):
        return "A-IA3"
    return "N"


def assert_restored(
    scene: Scene,
    *,
    restored: tuple[torch.Tensor, torch.Tensor | None],
    original: tuple[torch.Tensor, torch.Tensor | None],
    written: Iterable[torch.Tensor | None],
    reverted: list[Adapter],
    what: str = "after merge and unmerge",
    cls: str | None = None,
) -> None:
    """The restored base weight and bias equal the originals within the tuner's unmerge class (CORE-MERGE-6), with
    §8's round-trip scale `S = max(1, max|reference|, max|T|)` over the tensors `written` during the trip. The IA3
    rule adds, in float64, the oracle's `unmerge_bound` over the `reverted` adapters ("plus ⟨N⟩")."""
    __tracebackhide__ = True
    row, record = scene.setup.row, scene.setup.record
    cls = cls or unmerge_class(record, row.variant)
    written = [t for t in written if t is not None]
    extra: tuple = (0.0, 0.0)
    if cls == "A-IA3" and row.dtype == "float64":
        extra = record.oracle.unmerge_bound(*original, scene.setup.layer, reverted)
    tol = tolerance(cls, row.dtype, row.scope)
    for index, part in enumerate(("weight", "bias")):
        if original[index] is None:
            assert_equal(scene.context, f"{what}: base {part}", restored[index], None)
            continue
        assert_close_to_oracle(
            context=scene.context,
            what=f"{what}: base {part} (class {cls})",
            actual=restored[index],
            expected=original[index],
            tol=tol,
            scale=scale(original[index], *written),
            extra=extra[index] if extra[index] is not None else 0.0,
        )


def assert_tensors_close(scene: Scene, what: str, actual: tuple, expected: tuple) -> None:
    """A (weight, bias) pair equals the oracle's within ⟨N⟩ at the row's dtype and scope (S over each reference)."""
    __tracebackhide__ = True
    tol = tolerance("N", scene.setup.row.dtype, scene.setup.row.scope)
    for index, part in enumerate(("weight", "bias")):
        if expected[index] is None:
            assert_equal(scene.context, f"{what}: {part}", actual[index], None)
            continue
        assert_close_to_oracle(
            context=scene.context,
            what=f"{what}: {part}",
            actual=actual[index],
            expected=expected[index],
            tol=tol,
            scale=scale(expected[index]),
        )


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
    scene = build(driver, draw_setup(row, data, ("default", SECOND, THIRD), twin=True, targets=targets))
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
    assert_close_to_oracle(
        context=scene.context,
        what=f"merged output (merge order {order}) vs the unmerged output with active {order}",
        actual=merged,
        expected=unmerged,
        tol=tolerance("N", scene.setup.row.dtype),
        scale=scale(unmerged),
    )


@pytest.mark.contract("CORE-FWD-9")
@given(data=st.data())
def test_merged_forward_uses_merged_weights_only(row, driver, data):
    """CORE-FWD-9: while an adapter is merged, the layer computes op(x; W_merged, b_merged) with the live base
    tensors and applies no unmerged adapter, active or not."""
    require_lifecycle(driver, row)
    scene = scene_for(row, driver, data, ("default", SECOND), dtypes=ALL_DTYPES)
    driver.set_active(scene.model, scene.names)
    merged_name = data.draw(st.sampled_from(scene.names), label="merged adapter")
    driver.merge(scene.model, [merged_name])
    x = scene.input(data)
    with torch.no_grad():
        y = scene.model(x)
    expected = scene.expected_output(x, {KEY: scene.tensors(driver)})
    assert_close_to_oracle(
        context=scene.context,
        what=f"output with {merged_name!r} merged and {scene.names} active",
        actual=y,
        expected=expected,
        tol=tolerance("N", scene.setup.row.dtype),
        scale=scale(expected),
    )


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
    scene = build(driver, draw_setup(row, data, twin=True))
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
    setup = draw_setup(row, data, ("default", SECOND) if lifecycle else ("default",))
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
    setup = draw_setup(row, data)
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
