"""The driver protocol: the one surface through which the suite reaches an implementation (DESIGN.md).

A driver translates names and layouts only. It never catches, converts or emits exceptions or warnings
and never fixes values; the oracle is always evaluated on the values read back through `get_params`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

TUNERS = ("bone", "miss", "gralora", "hra", "ia3", "loha")
SURFACES = ("layers", "lifecycle", "files", "config", "matching")
DTYPES = ("float64", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TunerCapabilities:
    """What an implementation claims for one tuner. Empty `layer_kinds`/`variants` mean none."""

    native: bool = True
    variants: frozenset[str] = frozenset()
    layer_kinds: frozenset[str] = frozenset()
    dtypes: frozenset[str] = frozenset(DTYPES)
    surfaces: frozenset[str] = frozenset(SURFACES)
    config_fields: frozenset[str] | None = None  # None: every field of the SPEC table
    optional: frozenset[str] = frozenset()  # optional capability ids, e.g. "loha.conv3d"
    inexact_layouts: frozenset[str] = frozenset()  # canonical parameter names converted inexactly


@dataclass(frozen=True)
class Capabilities:
    tuners: dict[str, TunerCapabilities]

    def claims(self, tuner: str) -> bool:
        return tuner in self.tuners


@dataclass
class LayerState:
    merged_adapters: list[str]
    active_adapters: list[str]
    in_features: int
    out_features: int
    base_layer: nn.Module  # the LIVE base layer: weight and bias as they are now


@dataclass
class Case:
    """What a standalone repro needs (DESIGN.md)."""

    tuner: str
    clause: str
    configs: dict[str, dict]  # adapter name → canonical config dict
    model_code: str  # Python that binds `model` (the base model) and `x` (the input)
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)
    seed: int = 0
    calls: list[str] = field(default_factory=list)  # the driver calls made, in order
    expected: str | None = None
    observed: str | None = None
    formula: str | None = None


@runtime_checkable
class Driver(Protocol):
    """The operations of DESIGN.md's "Driver protocol", plus these observables added for the lifecycle families:

    - `adapt(..., adapter=None)`: leave the adapter name to the implementation's default (CORE-LIFE-1 checks it is
      "default"); a driver that cannot omit the name may pass "default".
    - `get_requires_grad(model, key, adapter) -> dict[str, bool]`: the `requires_grad` flag of each of the adapter's
      parameters on `key`, by canonical name (absent names left out, like `get_params`) (CORE-LIFE-2/4, CORE-TRAIN).
    - `saved_module(model, key, adapter=None) -> nn.Module | None`: the LIVE module a `modules_to_save` wrapper at
      `key` holds: `adapter`'s copy, or with `adapter=None` the original module; None when `key` holds no such wrapper
      or `adapter` owns no copy there (CORE-MTS-1/2, CORE-TRAIN-1/6).
    """

    name: str

    def version(self) -> str: ...
    def capabilities(self) -> Capabilities: ...
    def make_config(self, tuner: str, config: dict) -> object: ...
    def config_to_dict(self, cfg: object) -> dict: ...
    def config_from_dict(self, tuner: str, d: dict) -> object: ...
    def adapt(
        self,
        model: nn.Module,
        tuner: str,
        config: object,
        adapter: str | None = "default",
        *,
        autocast_adapter_dtype: bool = True,
    ) -> nn.Module: ...
    def add_adapter(self, model: nn.Module, tuner: str, name: str, config: object) -> None: ...
    def set_active(self, model: nn.Module, names: list[str]) -> None: ...
    def delete_adapter(self, model: nn.Module, name: str) -> None: ...
    def disabled(self, model: nn.Module) -> AbstractContextManager: ...
    def adapted_modules(self, model: nn.Module) -> list[str]: ...
    def layer_state(self, model: nn.Module, key: str) -> LayerState: ...
    def get_params(self, model: nn.Module, key: str, adapter: str) -> dict[str, torch.Tensor]: ...
    def set_params(self, model: nn.Module, key: str, adapter: str, params: dict[str, torch.Tensor]) -> None: ...
    def get_grads(self, model: nn.Module, key: str, adapter: str) -> dict[str, torch.Tensor | None]: ...
    def get_requires_grad(self, model: nn.Module, key: str, adapter: str) -> dict[str, bool]: ...
    def saved_module(self, model: nn.Module, key: str, adapter: str | None = None) -> nn.Module | None: ...
    def merge(self, model: nn.Module, adapters: list[str] | None = None, safe: bool = False) -> None: ...
    def unmerge(self, model: nn.Module) -> None: ...
    def merge_and_unload(
        self, model: nn.Module, adapters: list[str] | None = None, safe: bool = False
    ) -> nn.Module: ...
    def unload(self, model: nn.Module) -> nn.Module: ...
    def save(
        self, model: nn.Module, directory: str, adapters: list[str] | None = None, safetensors: bool = True
    ) -> None: ...
    def load(
        self,
        base_model: nn.Module,
        directory: str,
        adapter: str = "default",
        trainable: bool = False,
        convert: bool = True,
    ) -> nn.Module: ...
    def load_adapter(self, model: nn.Module, directory: str, name: str, trainable: bool = False) -> None: ...
    def call_optional(self, model: nn.Module, capability_id: str, **kw: Any) -> Any: ...
    def convert_checkpoint(self, src_dir: str, dst_dir: str, to: str) -> None: ...
    def repro(self, case: Case) -> str | None: ...


class PeftLikeDriver:
    """A driver for any implementation whose API looks like PEFT's: subclasses name the library, the
    config classes, the tuner-layer base class and, where they differ, the parameter names.

    `api_map` documents which public call each operation uses (recorded in the report header)."""

    name: ClassVar[str]
    library: ClassVar[Any]  # a module with get_peft_model, PeftModel
    config_classes: ClassVar[dict[str, type]]  # tuner id → config class
    tuner_layer_class: ClassVar[type]
    # tuner id → {canonical name: implementation name}; names not listed are the same on both sides
    param_names: ClassVar[dict[str, dict[str, str]]] = {}
    canonical_params: ClassVar[dict[str, tuple[str, ...]]] = {
        "bone": ("bone_block",),
        "miss": ("miss_block",),
        "gralora": ("gralora_A", "gralora_B", "gralora_A_general.weight", "gralora_B_general.weight"),
        "hra": ("hra_u",),
        "ia3": ("ia3_l",),
        "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    }
    driver_options: ClassVar[dict[str, Any]] = {}
    # how a repro imports the library, and the prefix of its names there (`import peft` → "peft.")
    repro_import: ClassVar[tuple[str, str]] = ("import peft", "peft.")
    api_map: ClassVar[dict[str, str]] = {
        "adapt": "get_peft_model(model, config, adapter_name=…, autocast_adapter_dtype=…)",
        "add_adapter": "PeftModel.add_adapter(name, config)",
        "set_active": "PeftModel.base_model.set_adapter(names)",
        "delete_adapter": "PeftModel.delete_adapter(name)",
        "disabled": "PeftModel.disable_adapter()",
        "merge": "PeftModel.merge_adapter(adapter_names=…, safe_merge=…)",
        "unmerge": "PeftModel.unmerge_adapter()",
        "merge_and_unload": "PeftModel.merge_and_unload(safe_merge=…, adapter_names=…)",
        "unload": "PeftModel.unload()",
        "save": "PeftModel.save_pretrained(dir, selected_adapters=…, safe_serialization=…)",
        "load": "PeftModel.from_pretrained(model, dir, adapter_name=…, is_trainable=…)",
        "load_adapter": "PeftModel.load_adapter(dir, adapter_name=…, is_trainable=…)",
        "ia3.weighted_adapter": "PeftModel.add_weighted_adapter(adapters, weights, adapter_name)",
        "loha.scale_layer": "scale_layer(f) / unscale_layer(f) / set_scale(adapter, f) on every LoHa layer",
    }

    # ---- configs ----
    def make_config(self, tuner: str, config: dict) -> object:
        return self.config_classes[tuner](**config)

    def config_to_dict(self, cfg: object) -> dict:
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "peft_type"}

    def config_from_dict(self, tuner: str, d: dict) -> object:
        return self.config_classes[tuner].from_dict(dict(d))

    def _config(self, tuner: str, config: object) -> object:
        return self.make_config(tuner, config) if isinstance(config, dict) else config

    # ---- lifecycle ----
    def adapt(
        self,
        model: nn.Module,
        tuner: str,
        config: object,
        adapter: str | None = "default",
        *,
        autocast_adapter_dtype: bool = True,
    ) -> nn.Module:
        """`adapter=None` omits `adapter_name`: the implementation's default name (CORE-LIFE-1)."""
        cfg = self._config(tuner, config)
        named = {} if adapter is None else {"adapter_name": adapter}
        return self.library.get_peft_model(model, cfg, autocast_adapter_dtype=autocast_adapter_dtype, **named)

    def add_adapter(self, model: nn.Module, tuner: str, name: str, config: object) -> None:
        model.add_adapter(name, self._config(tuner, config))

    def set_active(self, model: nn.Module, names: list[str]) -> None:
        model.base_model.set_adapter(list(names))

    def delete_adapter(self, model: nn.Module, name: str) -> None:
        model.delete_adapter(name)

    def disabled(self, model: nn.Module) -> AbstractContextManager:
        return model.disable_adapter()

    # ---- layers ----
    def _layers(self, model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        base = model.base_model.model
        for key, module in base.named_modules():
            if isinstance(module, self.tuner_layer_class):
                yield key, module

    def adapted_modules(self, model: nn.Module) -> list[str]:
        return [key for key, _ in self._layers(model)]

    def _layer(self, model: nn.Module, key: str) -> nn.Module:
        return model.base_model.model.get_submodule(key)

    def layer_state(self, model: nn.Module, key: str) -> LayerState:
        layer = self._layer(model, key)
        return LayerState(
            merged_adapters=list(layer.merged_adapters),
            active_adapters=list(layer.active_adapters),
            in_features=layer.in_features,
            out_features=layer.out_features,
            base_layer=layer.base_layer,
        )

    def _tensors(self, model: nn.Module, key: str, adapter: str, tuner: str | None = None) -> dict[str, torch.Tensor]:
        """The live parameters of `adapter` on `key`, by canonical name (absent names are left out)."""
        layer = self._layer(model, key)
        found = {}
        for tuner_id, names in self.canonical_params.items():
            if tuner is not None and tuner_id != tuner:
                continue
            renames = self.param_names.get(tuner_id, {})
            for canonical in names:
                container_name, _, attribute = renames.get(canonical, canonical).partition(".")
                container = getattr(layer, container_name, None)
                if container is None or adapter not in container:
                    continue
                value = container[adapter]
                found[canonical] = getattr(value, attribute) if attribute else value
        return found

    def get_params(self, model: nn.Module, key: str, adapter: str) -> dict[str, torch.Tensor]:
        return {name: t.detach().clone() for name, t in self._tensors(model, key, adapter).items()}

    def set_params(self, model: nn.Module, key: str, adapter: str, params: dict[str, torch.Tensor]) -> None:
        live = self._tensors(model, key, adapter)
        with torch.no_grad():
            for name, value in params.items():
                live[name].copy_(value)

    def get_grads(self, model: nn.Module, key: str, adapter: str) -> dict[str, torch.Tensor | None]:
        return {name: t.grad for name, t in self._tensors(model, key, adapter).items()}

    def get_requires_grad(self, model: nn.Module, key: str, adapter: str) -> dict[str, bool]:
        return {name: t.requires_grad for name, t in self._tensors(model, key, adapter).items()}

    def saved_module(self, model: nn.Module, key: str, adapter: str | None = None) -> nn.Module | None:
        """PEFT's `ModulesToSaveWrapper` at `key`: `original_module`, or `modules_to_save[adapter]`."""
        wrapper = self._layer(model, key)
        original, copies = getattr(wrapper, "original_module", None), getattr(wrapper, "modules_to_save", None)
        if original is None or copies is None:
            return None
        if adapter is None:
            return original
        return copies[adapter] if adapter in copies else None

    # ---- merge ----
    def merge(self, model: nn.Module, adapters: list[str] | None = None, safe: bool = False) -> None:
        model.merge_adapter(adapter_names=adapters, safe_merge=safe)

    def unmerge(self, model: nn.Module) -> None:
        model.unmerge_adapter()

    def merge_and_unload(self, model: nn.Module, adapters: list[str] | None = None, safe: bool = False) -> nn.Module:
        return model.merge_and_unload(safe_merge=safe, adapter_names=adapters)

    def unload(self, model: nn.Module) -> nn.Module:
        return model.unload()

    # ---- files ----
    def save(
        self, model: nn.Module, directory: str, adapters: list[str] | None = None, safetensors: bool = True
    ) -> None:
        model.save_pretrained(directory, selected_adapters=adapters, safe_serialization=safetensors)

    def load(
        self,
        base_model: nn.Module,
        directory: str,
        adapter: str = "default",
        trainable: bool = False,
        convert: bool = True,
    ) -> nn.Module:
        return self.library.PeftModel.from_pretrained(
            base_model, directory, adapter_name=adapter, is_trainable=trainable
        )

    def load_adapter(self, model: nn.Module, directory: str, name: str, trainable: bool = False) -> None:
        model.load_adapter(directory, adapter_name=name, is_trainable=trainable)

    # ---- optional operations and repros ----
    def call_optional(self, model: nn.Module, capability_id: str, **kw: Any) -> Any:
        """`ia3.weighted_adapter`: model.add_weighted_adapter(adapters, weights, adapter_name);
        `loha.scale_layer`: `method` ∈ scale_layer/unscale_layer/set_scale called with `args` on every tuner layer."""
        if capability_id == "ia3.weighted_adapter":
            return model.add_weighted_adapter(kw["adapters"], kw["weights"], kw["adapter_name"])
        if capability_id == "loha.scale_layer":
            for _, layer in self._layers(model):
                getattr(layer, kw["method"])(*kw.get("args", ()))
            return None
        raise NotImplementedError(f"{self.name} has no optional capability {capability_id!r}")

    def repro(self, case: Case) -> str | None:
        """The failing case as a runnable snippet in the library's own API: the base model and input, the
        adapters by `get_peft_model` / `add_adapter`, the recorded driver calls as comments, then the output."""
        import_line, prefix = self.repro_import
        lines = [case.model_code, import_line, f"torch.manual_seed({case.seed})"]
        for i, (adapter, config) in enumerate(case.configs.items()):
            config_code = f"{prefix}{self.config_classes[case.tuner].__name__}(**{config!r})"
            if i == 0:
                lines.append(f"model = {prefix}get_peft_model(model, {config_code}, adapter_name={adapter!r})")
            else:
                lines.append(f"model.add_adapter({adapter!r}, {config_code})")
        lines += [f"# {call}" for call in case.calls]
        if case.input_shapes:
            lines.append("print(model(x))")
        results = (("expected", case.expected), ("observed", case.observed))
        lines += [f"# {label}: {value}" for label, value in results if value is not None]
        return "\n".join(lines)
