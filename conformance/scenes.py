"""Scenes: adapted models built through a driver for the contract families that need more than one adapted layer
(several named adapters on one model, a two-layer model, rows whose axes leave variant / layer kind / dtype open),
with warning capture and the round-trip tolerance of SPEC §8."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from hypothesis import event
from hypothesis import strategies as st
from torch import nn

from . import coverage
from .assertions import Context, assert_close_to_oracle, assert_equal, fail, unwarned
from .drivers.base import Driver
from .harness import KEY, Holder, claimed_layers, read_adapter, require_base_runs
from .rows import RowSpec
from .spec.layer import Adapter, Layer, op
from .spec.record import TunerRecord
from .spec.records import RECORDS
from .spec.tolerances import scale, tolerance
from .strategies import build_base, input_shapes, logical_weight, random_tensor, seeds

ALL_DTYPES = ("float64", "float32", "bfloat16", "float16")
SECOND = "zeta"  # distinctive names, so that a message naming the adapter can be recognised
THIRD = "theta"
INNER = "inner.layer"  # the second module of a `Twin`; `target_modules=["layer"]` matches both keys


class Twin(nn.Module):
    """Two base layers of one geometry under the keys `layer` and `inner.layer`, applied to the same input and
    summed: the smallest model with two tuner layers that one list entry `"layer"` targets (model scope)."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.layer = first
        self.inner = Holder(second)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + self.inner(x)


class Both(nn.Module):
    """Two base layers of one geometry under the keys `layer` and `inner.layer`, both applied to the input and
    stacked (`y[0]`, `y[1]`), so that each tuner layer's output is observed on its own."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.layer = first
        self.inner = Holder(second)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack((self.layer(x), self.inner(x)))


def offers(driver: Driver, tuner: str, surface: str) -> bool:
    return surface in driver.capabilities().tuners[tuner].surfaces


def require_lifecycle(driver: Driver, row: RowSpec) -> None:
    """Rows that need a second named adapter (`add_adapter`, `set_active`) skip where the lifecycle surface is not
    offered (DESIGN "Surfaces")."""
    if not offers(driver, row.tuner, "lifecycle"):
        pytest.skip("needs several named adapters (the lifecycle surface is not offered)")


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
    driver: Driver,
    row: RowSpec,
    data: st.DataObject,
    names: Iterable[str] = ("default",),
    *,
    twin: bool = False,
    targets: dict[str, Any] | None = None,
) -> Setup:
    """A layer of the row's kind (only the optional geometries the driver declares), one config per adapter name
    (all of the row's variant, drawn independently), and a seed. `targets` overrides `target_modules` per adapter
    (default `["layer"]`)."""
    record = RECORDS[row.tuner]
    layer = data.draw(claimed_layers(row.layer_kind, record, driver.capabilities().tuners[row.tuner]), label="layer")
    variant = record.variant(row.variant)
    configs = {}
    for name in names:
        config = data.draw(record.configs(layer, variant, row.init), label=f"config {name}")
        configs[name] = {**config, "target_modules": (targets or {}).get(name, [KEY])}
        coverage.note_layer(layer, config, row.variant, row.dtype)
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
        resolved = self.setup.record.resolve(self.setup.configs[name], key)
        params = driver.get_params(self.model, key, name)
        return read_adapter(self.context, self.setup.record, resolved, self.setup.layer, params)

    def adapters(self, driver: Driver, names: Iterable[str], key: str = KEY) -> list[Adapter]:
        return [self.adapter(driver, name, key) for name in names if self.injected(driver, name, key)]

    def injected(self, driver: Driver, name: str, key: str = KEY) -> bool:
        return bool(driver.get_params(self.model, key, name))

    def merged(self, driver: Driver, key: str = KEY) -> list[str]:
        return list(driver.layer_state(self.model, key).merged_adapters)

    def input(self, data: st.DataObject, edge_cases: bool = False) -> torch.Tensor:
        """An input drawn by `strategies.input_shapes` (ordinary, or with the edge cases)."""
        shape = data.draw(input_shapes(self.setup.layer, edge_cases), label="input_shape")
        self.context.shapes["x"] = shape
        coverage.note_input(shape, self.setup.layer)
        return random_tensor(shape, self.setup.row.dtype, self.setup.seed + 1)

    def assert_output_close(self, what: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
        """⟨N⟩ at the row's dtype: an output against the expected one, scaled by the expected output."""
        __tracebackhide__ = True
        tol = tolerance("N", self.setup.row.dtype)
        assert_close_to_oracle(
            context=self.context, what=what, actual=actual, expected=expected, tol=tol, scale=scale(expected)
        )

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
    context = Context(row.clause, row.tuner, driver.name, setup.configs, shapes, row.dtype, setup.seed, layer=layer)
    return Scene(setup, model.eval(), context)


def scene_for(
    row: RowSpec, driver: Driver, data: st.DataObject, names: Iterable[str] = ("default",), **kw: Any
) -> Scene:
    """`fill_row`, `draw_setup` and `build` in one step (keyword arguments go to `fill_row`'s dtypes)."""
    row = fill_row(row, driver, data, **kw)
    return build(driver, draw_setup(driver, row, data, names))


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
        fail(
            context,
            f"{what} emitted no UserWarning{naming}, but should warn (warnings emitted: {seen})",
            unwarned((subject,) if subject else (), seen),
        )


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
