"""The driver protocol: the one surface through which the suite reaches an implementation (DESIGN.md).

A driver translates names and layouts only. It never catches, converts or emits exceptions or warnings
and never fixes values; the oracle is always evaluated on the values read back through `get_params`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from .case import NOT_REPRODUCED, READ_ONLY, REPRODUCED, Call, Case, Discrepancy, Ref
from .snippet import OBSERVED_BY, ReproSnippet, arguments_repr, checked_call, indented, model_after, tensor_code

__all__ = [  # the protocol, and the repro types a driver renders (re-exported from `case` and `snippet`)
    "DTYPES", "NOT_REPRODUCED", "READ_ONLY", "REPRODUCED", "SURFACES", "TUNERS", "Call", "Capabilities", "Case",
    "Discrepancy", "Driver", "LayerState", "PeftLikeDriver", "Ref", "ReproSnippet", "TunerCapabilities", "tensor_code",
]  # fmt: skip

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
    # the observations a repro reads again (`OBSERVED_BY`'s targets): all, as peft's API has them (`param_lines`,
    # `observation_code`); a port whose model layout differs names those it renders (the others are left out)
    repro_reads: ClassVar[frozenset[str]] = frozenset(OBSERVED_BY)
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
        """The library's own path from saved JSON fields to a config (what `from_pretrained` uses)."""
        return self.config_classes[tuner].from_peft_type(**dict(d))

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
                value = getattr(container[adapter], attribute, None) if attribute else container[adapter]
                if isinstance(value, torch.Tensor):  # else a placeholder module (e.g. nn.Identity): absent
                    found[canonical] = value
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

    def convert_checkpoint(self, src_dir: str, dst_dir: str, to: str) -> None:
        """Bone ↔ MiSS directories (MISS-CONV-*): none unless the implementation has a conversion."""
        raise NotImplementedError(f"{self.name} has no Bone ↔ MiSS checkpoint conversion")

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
        """The failing case as a runnable snippet in the library's own API: the base model and input, the recorded
        driver calls rendered as the public calls they stand for (`render_call`), then the forward on `x` and a final
        check that prints the observed element next to the oracle's value (and `REPRODUCED: …` when they differ as
        the suite saw). Without recorded calls: the adapters of `case.configs`, then the output."""
        if case.discrepancy is not None and case.discrepancy.kind == "unsupported":
            return self.absence_repro(case)
        import_line, prefix = self.repro_import
        calls = [call for call in case.calls if isinstance(call, Call)]
        if not calls:
            head = [case.model_code, import_line, f"torch.manual_seed({case.seed})"]
            return "\n".join(head + self._adapt_configs(case, prefix))
        snippet = ReproSnippet(self, case, prefix, x_bound=bool(case.input_shapes))
        changing = [i for i, call in enumerate(case.calls) if isinstance(call, Call) and call.method not in READ_ONLY]
        last = changing[-1] if changing else -1
        disabled_last = last >= 0 and case.calls[last].method == "disabled"  # type: ignore[union-attr]
        checked = checked_call(case, calls)
        for i, call in enumerate(case.calls):
            if isinstance(call, str):
                snippet.lines.append(f"# {call}")
            elif call is checked:
                snippet.outcome_check(self.seeded_call(call, snippet), f"{call.method}(…)")
                snippet.current = model_after(call, snippet.current)
            elif call.method in READ_ONLY or (disabled_last and i == last):
                continue
            elif call.raised and i != len(case.calls) - 1:  # the test expected it to raise, and went on
                body = self.seeded_call(call, snippet)
                snippet.lines += ["try:", *indented(body or ["pass"]), "except Exception as exc:"]
                snippet.lines.append(f"    print(f'{call.method} raised {{type(exc).__name__}}: {{exc}}')")
            else:
                snippet.lines += self.seeded_call(call, snippet)
                snippet.current = model_after(call, snippet.current)
            if isinstance(call, Call) and call.result is not None:
                snippet.bound.add(call.result.var)
        if checked is None and not calls[-1].raised:
            snippet.final_check(disabled=disabled_last)
        head = [case.model_code, import_line, *sorted(snippet.imports), f"torch.manual_seed({case.seed})"]
        return "\n".join([*head, *snippet.lines])

    def absence_repro(self, case: Case) -> str | None:
        """A snippet showing that the library lacks the capability `case.discrepancy.what` its row requires (printing
        `REPRODUCED: …` when it finds no API for it); None where the driver cannot show an absence."""
        return None

    def _adapt_configs(self, case: Case, prefix: str) -> list[str]:
        """The pre-recording repro: adapters from `case.configs`, `case.calls` as comments, the output."""
        lines = []
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
        return lines

    def seeded_call(self, call: Call, snippet: ReproSnippet) -> list[str]:
        """`render_call`'s lines, after `torch.manual_seed(s)` where the call began on a freshly seeded generator, and
        after the files of a directory it reads that no earlier call of the snippet wrote (`ReproSnippet.files`)."""
        if call.files and not snippet.knows(call.arguments.get("directory")):
            snippet.files(call.arguments["directory"], call.files)
        lines = self.render_call(call, snippet)
        return [f"torch.manual_seed({call.torch_seed})", *lines] if call.torch_seed is not None and lines else lines

    # ---- rendering one recorded call in the library's public API (a port overrides what differs) ----
    def render_call(self, call: Call, snippet: ReproSnippet) -> list[str]:
        """The lines that make `call` through the library's public API (`api_map`); a comment where none exists."""
        a, prefix, method = call.arguments, snippet.prefix, call.method
        model = snippet.name(a["model"]) if "model" in a else None
        result = call.result.var if call.result is not None else "_"
        if method == "make_config":
            config = self._config_code(a["tuner"], a["config"], prefix)
            return [f"{result} = {config}" if call.result is not None else config]
        if method == "config_from_dict":
            config_class = f"{prefix}{self.config_classes[a['tuner']].__name__}"
            return [f"{result} = {config_class}.from_peft_type(**{dict(a['d'])!r})"]
        if method == "adapt":
            config = snippet.config(a["tuner"], a["config"])
            named = "" if a["adapter"] is None else f", adapter_name={a['adapter']!r}"
            autocast = "" if a["autocast_adapter_dtype"] else ", autocast_adapter_dtype=False"
            snippet.adapted.add(result)
            return [f"{result} = {prefix}get_peft_model({model}, {config}{named}{autocast})"]
        if method == "add_adapter":
            return [f"{model}.add_adapter({a['name']!r}, {snippet.config(a['tuner'], a['config'])})"]
        if method == "set_active":
            return [f"{model}.base_model.set_adapter({list(a['names'])!r})"]
        if method == "delete_adapter":
            return [f"{model}.delete_adapter({a['name']!r})"]
        if method == "disabled":  # a block left before the failing check: entered around a forward, as the tests do
            body = f"{model}.eval()(x)" if snippet.x_bound else "pass"
            return [f"with torch.no_grad(), {model}.disable_adapter():", f"    {body}"]
        if method == "set_params":
            target = f"{model}.base_model.model.get_submodule({a['key']!r})"
            return [
                f"{self._param_code(target, a['adapter'], name, snippet.case.tuner)}.data.copy_({tensor_code(value)})"
                for name, value in a["params"].items()
            ]
        if method == "merge":
            return [f"{model}.merge_adapter(adapter_names={a['adapters']!r}, safe_merge={a['safe']!r})"]
        if method == "unmerge":
            return [f"{model}.unmerge_adapter()"]
        if method == "merge_and_unload":
            return [f"{result} = {model}.merge_and_unload(safe_merge={a['safe']!r}, adapter_names={a['adapters']!r})"]
        if method == "unload":
            return [f"{result} = {model}.unload()"]
        if method == "save":
            directory = snippet.path(a["directory"])
            return [
                f"{model}.save_pretrained({directory}, selected_adapters={a['adapters']!r}, "
                f"safe_serialization={a['safetensors']!r})"
            ]
        if method == "load":
            base, directory = snippet.name(a["base_model"]), snippet.path(a["directory"])
            snippet.adapted.add(result)
            return [
                f"{result} = {prefix}PeftModel.from_pretrained({base}, {directory}, adapter_name={a['adapter']!r}, "
                f"is_trainable={a['trainable']!r})"
            ]
        if method == "load_adapter":
            directory = snippet.path(a["directory"])
            return [f"{model}.load_adapter({directory}, adapter_name={a['name']!r}, is_trainable={a['trainable']!r})"]
        if method == "call_optional":
            return self._render_optional(model, a["capability_id"], a.get("kw", {}), snippet)
        return [f"# not rendered: driver.{method}({arguments_repr(a)})"]

    def _render_optional(self, model: str | None, capability: str, kw: dict, snippet: ReproSnippet) -> list[str]:
        if capability == "ia3.weighted_adapter":
            return [f"{model}.add_weighted_adapter({kw['adapters']!r}, {kw['weights']!r}, {kw['adapter_name']!r})"]
        if capability == "loha.scale_layer":
            layer_class = self.tuner_layer_class
            snippet.imports.add(f"import {layer_class.__module__}")
            return [
                f"for module in {model}.base_model.model.modules():",
                f"    if isinstance(module, {layer_class.__module__}.{layer_class.__qualname__}):",
                f"        module.{kw['method']}({', '.join(map(repr, kw.get('args', ())))})",
            ]
        return [f"# not rendered: driver.call_optional({model}, {capability!r}, **{kw!r})"]

    def _config_code(self, tuner: str, config: Any, prefix: str) -> str:
        """A config object's constructor call from a canonical dict."""
        return f"{prefix}{self.config_classes[tuner].__name__}(**{dict(config)!r})"

    def config_object_code(self, tuner: str, config: object, prefix: str) -> str:
        """A config object made outside the recorded calls, as its constructor call with the fields that differ
        from the defaults."""
        if isinstance(config, dict):
            return self._config_code(tuner, config, prefix)
        cls = type(config)
        fields = self.config_to_dict(config)
        defaults = self.config_to_dict(cls())
        changed = {k: v for k, v in fields.items() if defaults.get(k) != v}
        return f"{prefix}{cls.__name__}(**{changed!r})"

    def observation_code(self, d: Discrepancy, root: str, key: str, adapter: str, snippet: ReproSnippet) -> str:
        """An expression of the library's public API for an exact observation (`OBSERVATIONS`) of the model whose
        module tree is `root` (parameters: `adapter`'s on `key`), with the value `d.observed` has."""
        if d.target == "adapted":
            layer_class = self.tuner_layer_class
            snippet.imports.add(f"import {layer_class.__module__}")
            name = f"{layer_class.__module__}.{layer_class.__qualname__}"
            return f"sorted(key for key, module in {root}.named_modules() if isinstance(module, {name}))"
        if d.target == "active":
            return f"{{key: list({root}.get_submodule(key).active_adapters) for key in {list(d.observed)!r}}}"
        if d.target == "trainable":
            layer = f"{root}.get_submodule({key!r})"
            base = f"getattr({layer}, 'base_layer', {layer})"
            outside = f"all(p is not q for q in {base}.parameters())"
            return f"sum(p.numel() for p in {root}.parameters() if p.requires_grad and {outside})"
        if d.target == "saved":
            saves = [c for c in snippet.case.calls if isinstance(c, Call) and c.method == "save"]
            directory = snippet.path(saves[-1].arguments["directory"])
            if adapter != "default":  # CORE-SAVE-1: every other adapter in a subdirectory of its name
                directory = f"os.path.join({directory}, {adapter!r})"
            snippet.imports.update(("import os, tempfile", "import safetensors.torch"))
            tensors = f"safetensors.torch.load_file(os.path.join({directory}, 'adapter_model.safetensors'))"
            return f"{{key: tuple(value.shape) for key, value in {tensors}.items() if key in {list(d.observed)!r}}}"
        attribute = {"shapes": "tuple({}.shape)", "requires_grad": "{}.requires_grad"}[d.target]
        layer = f"{root}.get_submodule({key!r})"
        entries = (
            f"{name!r}: {attribute.format(self._param_code(layer, adapter, name, snippet.case.tuner))}"
            for name in d.observed
        )
        return "{" + ", ".join(entries) + "}"

    def param_lines(self, root: str, key: str, adapter: str, canonical: str, tuner: str, *, grad: bool) -> list[str]:
        """Lines binding `tensor` to the canonical parameter `canonical` of `adapter` on `key` of the module tree
        `root`, in canonical layout, or (`grad`) its `.grad` (zeros where none flowed in, as the suite reads it)."""
        lines = [
            f"module = {root}.get_submodule({key!r})",
            f"tensor = {self._param_code('module', adapter, canonical, tuner)}",
        ]
        if grad:
            lines.append("tensor = torch.zeros_like(tensor) if tensor.grad is None else tensor.grad")
        return lines

    def _param_code(self, layer_code: str, adapter: str, canonical: str, tuner: str) -> str:
        """The live tensor of a canonical parameter name on a layer (the implementation's name and container)."""
        container, _, attribute = self.param_names.get(tuner, {}).get(canonical, canonical).partition(".")
        return f"{layer_code}.{container}[{adapter!r}]" + (f".{attribute}" if attribute else "")
