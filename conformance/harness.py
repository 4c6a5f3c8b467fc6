"""Building one adapted layer for a row: the base module, a drawn config, the adapter through the
driver, and parameters perturbed inside §8's input domain. Contract tests share these steps."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import strategies as st
from torch import nn

from . import coverage
from .assertions import Context, assert_equal
from .drivers.base import Driver, TunerCapabilities
from .rows import RowSpec
from .spec.layer import Adapter, Layer
from .spec.record import TunerRecord, Variant
from .spec.records import RECORDS
from .strategies import DTYPES, build_base, input_shapes, layers, logical_weight, random_tensor, seeds

KEY = "layer"


class Holder(nn.Module):
    """A model holding one base layer under the key `layer` (layer-scope rows)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class Bundle(nn.Module):
    """Base modules under the given dotted keys (plain `nn.Module` containers in between); `forward` applies every leaf
    to `x` and concatenates the outputs in key order. It has no `config.model_type` (a plain torch model)."""

    def __init__(self, leaves: dict[str, nn.Module]) -> None:
        super().__init__()
        self.leaf_keys = list(leaves)
        for key, module in leaves.items():
            parent: nn.Module = self
            *path, last = key.split(".")
            for part in path:
                if part not in parent._modules:
                    parent.add_module(part, nn.Module())
                parent = parent._modules[part]
            parent.add_module(last, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.get_submodule(key)(x) for key in self.leaf_keys], dim=-1)


class Rig(nn.Module):
    """`layer` (plus `inner.layer`, summed, for a twin), then an optional `head` module: the smallest model where a
    `modules_to_save` module sits on the output path. A head is `Linear(out, out)`, or a 1×1 convolution of the
    layer's kind for convolutions."""

    def __init__(self, first: nn.Module, second: nn.Module | None = None, head: nn.Module | None = None) -> None:
        super().__init__()
        self.layer = first
        self.inner = None if second is None else Holder(second)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        if self.inner is not None:
            y = y + self.inner(x)
        return y if self.head is None else self.head(y)


@dataclass
class AdaptedLayer:
    row: RowSpec
    record: TunerRecord
    layer: Layer
    config: dict
    seed: int
    model: nn.Module
    context: Context

    def base_tensors(self, driver: Driver) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The live base weight (logical orientation) and bias, in float64."""
        base = driver.layer_state(self.model, KEY).base_layer
        bias = None if base.bias is None else base.bias.detach().double()
        return logical_weight(base, self.layer), bias

    def adapter(self, driver: Driver, name: str = "default") -> Adapter:
        """The oracle's view of adapter `name`: resolved config, parameters read back in float64."""
        resolved = self.record.resolve(self.config, KEY)
        return read_adapter(self.context, self.record, resolved, self.layer, driver.get_params(self.model, KEY, name))

    def input(self, data: st.DataObject, edge_cases: bool = False) -> torch.Tensor:
        """An input drawn by `strategies.input_shapes` (ordinary, or with the edge cases)."""
        shape = data.draw(input_shapes(self.layer, edge_cases), label="input_shape")
        self.context.shapes["x"] = shape
        coverage.note_input(shape, self.layer)
        return random_tensor(shape, self.row.dtype, self.seed + 1)


def read_adapter(
    context: Context, record: TunerRecord, resolved: dict, layer: Layer, params: dict[str, torch.Tensor]
) -> Adapter:
    """The oracle's view of an adapter (its resolved config, its parameters read back, in float64), once its
    parameters have SPEC's shapes (⟨S⟩, the oracle's `param_shapes`): parameters that do not fit the layer fail the
    row here, where the oracle could only refuse them."""
    __tracebackhide__ = True
    shapes = {name: tuple(value.shape) for name, value in sorted(params.items())}
    expected = dict(sorted(record.oracle.param_shapes(resolved, layer).items()))
    assert_equal(context, "adapter parameter shapes", shapes, expected, "shapes")
    return Adapter(resolved, {name: value.double() for name, value in params.items()})


def adapt_module(driver: Driver, tuner: str, module: nn.Module, config: dict) -> nn.Module:
    """Inject one adapter ("default") into a `Holder` of `module` (key `layer`), initialised by the implementation."""
    return driver.adapt(Holder(module), tuner, driver.make_config(tuner, {**config, "target_modules": [KEY]}))


def require_base_runs(module: nn.Module, layer: Layer, dtype: str) -> None:
    """Skip rows whose base layer itself cannot run in `dtype` on this device (not the implementation's fault)."""
    spatial = [d * (k - 1) + 3 for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
    probe = torch.zeros((1, layer.in_features, *spatial), dtype=DTYPES[dtype])
    try:
        module(probe)
    except RuntimeError as exc:
        pytest.skip(f"the base {layer.kind} cannot run {dtype} here: {exc}")


def needs_capability(layer: Layer, record: TunerRecord) -> list[str]:
    """The optional capabilities `layer`'s geometry needs on this tuner (the record's `optional_geometry`)."""
    geometries = record.optional_geometry.items()
    return [capability for capability, (kind, needs) in geometries if layer.kind == kind and needs(layer)]


def optional_geometry_ok(layer: Layer, record: TunerRecord, claims: TunerCapabilities) -> bool:
    """False where `layer` needs an optional capability (a geometry, e.g. grouped Conv2d for HRA) not declared."""
    return all(capability in claims.optional for capability in needs_capability(layer, record))


def claimed_layers(kind: str, record: TunerRecord, claims: TunerCapabilities) -> st.SearchStrategy[Layer]:
    """Layers of `kind` without the optional geometries the driver does not declare."""
    return layers(kind).filter(lambda layer: optional_geometry_ok(layer, record, claims))


def adapt_layer(driver: Driver, row: RowSpec, record: TunerRecord, data: st.DataObject) -> AdaptedLayer:
    """Draw a layer and a config for the row, adapt a fresh base module through the driver and perturb the
    adapter's parameters to generic values of the input domain."""
    layer = data.draw(claimed_layers(row.layer_kind, record, claims_of(driver, row)), label="layer")
    variant = record.variant(row.variant)
    config = data.draw(record.configs(layer, variant, row.init), label="config")
    seed = data.draw(seeds, label="seed")
    coverage.note_layer(layer, config, row.variant, row.dtype)
    base = build_base(layer, row.dtype, seed)
    require_base_runs(base, layer, row.dtype)
    model = driver.adapt(Holder(base), row.tuner, driver.make_config(row.tuner, {**config, "target_modules": [KEY]}))
    shapes = {name: tuple(t.shape) for name, t in driver.get_params(model, KEY, "default").items()}
    generator = torch.Generator().manual_seed(seed + 2)
    driver.set_params(model, KEY, "default", record.perturb(record.resolve(config, KEY), layer, shapes, generator))
    shapes = {"weight": layer.weight_shape}
    context = Context(row.clause, row.tuner, driver.name, config, shapes, row.dtype, seed, layer=layer)
    return AdaptedLayer(row, record, layer, config, seed, model.eval(), context)


# ---- steps several families share --------------------------------------------------------------------------


def claims_of(driver: Driver, row: RowSpec) -> TunerCapabilities:
    return driver.capabilities().tuners[row.tuner]


def clause_variants(clause: str, record: TunerRecord, claims: TunerCapabilities) -> list[Variant]:
    """The claimed variants of `record` a clause speaks of: a clause of another tuner's chapter (BONE-* checked on
    MiSS) covers only the variants of that tuner's record (MISS-MATH-1: `mini` is not Bone)."""
    prefix = clause.split("-", 1)[0]
    home = RECORDS.get(prefix.lower()) if prefix != "CORE" else None
    names = {v.name for v in (home or record).variants}
    return [v for v in record.variants if v.name in names and v.name in claims.variants]


def usable_kinds(record: TunerRecord, claims: TunerCapabilities, variant: Variant) -> list[str]:
    """Required kinds the driver claims and optional kinds it declares, that `variant` applies to."""
    kinds = [k for k in sorted(record.required_kinds) if k in claims.layer_kinds]
    kinds += [k for k, capability in sorted(record.optional_kinds.items()) if capability in claims.optional]
    return [k for k in kinds if variant.applies_to(k)]


def seed_torch(seed: int) -> None:
    """Seed torch's global generators (the CPU one directly: `torch.manual_seed` also queues lazy seeding of every
    uninitialised accelerator backend, which costs milliseconds per call)."""
    if torch.cuda.is_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def with_common_factor(data: st.DataObject, layer: Layer) -> Layer:
    """The layer with in and out multiplied by a drawn 1 or 2: independently drawn sizes rarely share a divisor, and
    the sizes that depend on one (GraLoRA's N, BAT's r) would stay at 1."""
    factor = data.draw(st.sampled_from([1, 2]), label="common_factor")
    return replace(layer, in_features=factor * layer.in_features, out_features=factor * layer.out_features)
