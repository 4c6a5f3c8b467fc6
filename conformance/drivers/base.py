"""The driver protocol: the one surface through which the suite reaches an implementation (DESIGN.md).

A driver translates names and layouts only. It never catches, converts or emits exceptions or warnings
and never fixes values; the oracle is always evaluated on the values read back through `get_params`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from conformance.probes import applied_weight

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


@dataclass(frozen=True)
class Ref:
    """An object of the failing example that a repro names `var` (a model, a config). `code`, where set, is source
    that binds `var` (a base model the snippet builds); else a rendered call's result binds it. `value` is the object
    itself, for a renderer that has to describe one no call produced (a config built outside the driver)."""

    var: str
    code: str | None = None
    value: Any = field(default=None, compare=False, repr=False)


@dataclass
class Call:
    """One driver call of the failing example: the protocol method, its arguments by the protocol's parameter names
    (defaults applied; tensors as values, models and configs as `Ref`s), the `Ref` its result is bound to (models
    and configs only), whether it raised, the seed torch's generator was freshly seeded with when it began, and the
    files (relative path → bytes) of the directory it reads, as they were then (`load`, `load_adapter`)."""

    method: str
    arguments: dict[str, Any] = field(default_factory=dict)
    result: Ref | None = None
    raised: bool = False
    torch_seed: int | None = None
    files: dict[str, bytes] | None = None


@dataclass(frozen=True)
class Discrepancy:
    """What a failed check saw, for a repro's final check to observe again. By `kind`:

    - "value": the worst element of a failed comparison: `what` at index `where`, the oracle's `expected` value,
      the implementation's `observed` one, `bound` the |difference| allowed there (0: equality);
    - "shape": `observed` is the shape of `what`, `expected` the shape SPEC requires (`where` is empty);
    - "raised": the checked operation raised an exception of type name `observed`, where `expected` names the types
      SPEC requires ("": none, the input must be accepted);
    - "unnamed": it raised `observed` as required, but the message names none of the subjects `expected` (a tuple);
    - "silent": it returned (`observed` None), where `expected` names the exception types SPEC requires;
    - "differs": an exact observation (a list, dict, shape, count) is `observed`, where SPEC admits only the values
      in the tuple `expected`;
    - "unwarned": the checked operation emitted no warning of category `expected[0]` naming one of the subjects
      `expected[1:]` (`observed`: the warnings it emitted, as "Category: message" lines);
    - "nonfinite": `what` (an output) has a non-finite entry, where SPEC requires every entry finite;
    - "unsupported": the row never ran: the implementation lacks the capability `what` names (`RowSpec.unsupported`),
      which the clause requires (a repro shows it absent from the library's API: `PeftLikeDriver.absence_repro`);
    - "silent_nonfinite": the checked operation returned, left a non-finite element in the base weight or bias at
      `key`, and emitted no warning of category `expected[0]` naming one of `expected[1:]` with a message matching
      the regular expression `derive` (`observed`: the warnings it emitted).

    `target` says what a repro recomputes to show it: "output" (the model on `x`; in `mode` "train", the last of
    `forwards` train-mode forwards after seeding torch with `train_seed`, or all of them stacked for "nonfinite"),
    "weight" or "bias" (the live base layer under `key`, logical orientation), "applied" (the expression `derive`
    over W, the weight the model applies at `key` as `conformance.probes.applied_weight` reads it, and B, the base
    weight, logical orientation, both float64), "param" (the adapter parameter `name` of `adapter` on `key`), "grad"
    (its `.grad` after a backward of `(y * weights).sum()` in `mode`, the weights `random_tensor(y.shape, float64,
    weights_seed)`), "call" (the last recorded state-changing driver call, the checked operation), an observation of
    the adapted model ("adapted": its adapted module keys, sorted; "active": {key: active adapters} for the keys of
    `observed`; "shapes" / "requires_grad": {name: shape / flag} of `adapter`'s parameters named in `observed` on
    `key`; "trainable": the number of trainable parameters outside the base layer at `key`; "saved": {file key:
    shape} of the tensors named in `observed` in the `adapter_model.safetensors` of `adapter`'s directory (CORE-SAVE-1)
    that the last recorded `save` wrote), or None (not rendered). A parameter, gradient or observation is read on the
    model (and key, adapter) of the last recorded read-only call that made it (`OBSERVED_BY`)."""

    what: str
    where: tuple[int, ...]
    expected: Any
    observed: Any
    bound: float
    target: str | None = None
    key: str = "layer"
    kind: str = "value"
    adapter: str = "default"
    name: str = ""
    mode: str = "eval"
    weights_seed: int | None = None
    derive: str = ""
    forwards: int = 1
    train_seed: int | None = None


@dataclass
class Case:
    """What a standalone repro needs (DESIGN.md)."""

    tuner: str
    clause: str
    configs: dict[str, dict]  # adapter name → canonical config dict
    model_code: str  # Python that binds `model` (the base model) and `x` (the input)
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)
    seed: int = 0
    # the driver calls made, in order (a `str` is rendered as a comment); when there are none, the snippet adapts
    # `model` with `configs`
    calls: list[Call | str] = field(default_factory=list)
    expected: str | None = None
    observed: str | None = None
    formula: str | None = None
    discrepancy: Discrepancy | None = None  # for the snippet's final check
    error: str | None = None  # the exception type the failing example raised (an `error` row)


REPRODUCED = "REPRODUCED:"  # the line a repro prints when it shows the failure (`conformance.check` looks for it)
# calls that change no state: a repro leaves them out
READ_ONLY = frozenset(
    {"version", "capabilities", "config_to_dict", "adapted_modules", "layer_state", "get_params", "get_grads",
     "get_requires_grad", "saved_module", "repro"}
)  # fmt: skip


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
    # whether a repro reads adapter parameters, gradients and observations as peft's API has them (`_param_code`,
    # `observation_code`); a port whose model layout differs says False (those final checks are left out)
    repro_reads: ClassVar[bool] = True
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
        checked = _checked_call(case, calls)
        for i, call in enumerate(case.calls):
            if isinstance(call, str):
                snippet.lines.append(f"# {call}")
            elif call is checked:
                snippet.outcome_check(self.seeded_call(call, snippet), f"{call.method}(…)")
                snippet.current = _model_after(call, snippet.current)
            elif call.method in READ_ONLY or (disabled_last and i == last):
                continue
            elif call.raised and i != len(case.calls) - 1:  # the test expected it to raise, and went on
                body = self.seeded_call(call, snippet)
                snippet.lines += ["try:", *_indent(body or ["pass"]), "except Exception as exc:"]
                snippet.lines.append(f"    print(f'{call.method} raised {{type(exc).__name__}}: {{exc}}')")
            else:
                snippet.lines += self.seeded_call(call, snippet)
                snippet.current = _model_after(call, snippet.current)
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
        return [f"# not rendered: driver.{method}({_arguments_repr(a)})"]

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

    def _param_code(self, layer_code: str, adapter: str, canonical: str, tuner: str) -> str:
        """The live tensor of a canonical parameter name on a layer (the implementation's name and container)."""
        container, _, attribute = self.param_names.get(tuner, {}).get(canonical, canonical).partition(".")
        return f"{layer_code}.{container}[{adapter!r}]" + (f".{attribute}" if attribute else "")


class ReproSnippet:
    """The state of a repro being rendered: its lines, extra imports, which variables are bound (`model` and `x` by
    the model code), which hold adapted models, the temporary directories, and the model a forward goes through."""

    def __init__(self, driver: PeftLikeDriver, case: Case, prefix: str, *, x_bound: bool) -> None:
        self.driver, self.case, self.prefix, self.x_bound = driver, case, prefix, x_bound
        self.lines: list[str] = []
        self.imports: set[str] = set()
        self.bound: set[str] = {"model"}
        self.adapted: set[str] = set()
        self.directories: dict[str, str] = {}
        self.current = "model"

    def name(self, value: Any) -> str:
        """A model argument as a variable of the snippet (a base model is built where first used)."""
        if not isinstance(value, Ref):
            return repr(value)
        if value.var not in self.bound and value.code is not None:
            self.lines += _new_definitions(value.code, [self.case.model_code, *self.lines])
        self.bound.add(value.var)
        return value.var

    def config(self, tuner: str, value: Any) -> str:
        """A config argument: the variable a rendered call bound, else its constructor call."""
        if isinstance(value, Ref):
            if value.var in self.bound or value.value is None:
                return value.var
            self.lines.append(f"{value.var} = {self.driver.config_object_code(tuner, value.value, self.prefix)}")
            self.bound.add(value.var)
            return value.var
        return self.driver.config_object_code(tuner, value, self.prefix)

    def path(self, directory: Any) -> str:
        """A directory of the example as an expression over temporary directories of the snippet."""
        directory = str(directory)
        for known, var in self.directories.items():
            if directory == known:
                return var
            if directory.startswith(known.rstrip("/") + "/"):
                return f"os.path.join({var}, {directory[len(known.rstrip('/')) + 1 :]!r})"
        var = f"directory_{len(self.directories) + 1}"
        self.imports.add("import os, tempfile")
        self.lines.append(f"{var} = tempfile.mkdtemp()")
        self.directories[directory] = var
        return var

    def knows(self, directory: Any) -> bool:
        """Whether `directory` is (under) a directory the snippet already made."""
        text = str(directory)
        return any(text == known or text.startswith(known.rstrip("/") + "/") for known in self.directories)

    def files(self, directory: Any, files: dict[str, bytes]) -> None:
        """Write `files` (relative path → bytes) into a new temporary directory standing for `directory`: JSON as
        text, safetensors through `safetensors.torch.save_file` (tensors and metadata written out), others as bytes."""
        root = self.path(directory)
        for relative, content in files.items():
            target = f"os.path.join({root}, {relative!r})"
            if "/" in relative:
                self.lines.append(f"os.makedirs(os.path.dirname({target}), exist_ok=True)")
            if relative.endswith(".safetensors"):
                self.lines.append(_safetensors_code(content, target))
                self.imports.add("import safetensors.torch")
            elif relative.endswith(".json"):
                self.lines.append(f"open({target}, 'w').write({content.decode()!r})")
            else:
                self.lines.append(f"open({target}, 'wb').write({content!r})")

    def final_check(self, *, disabled: bool) -> None:
        """The forward on `x` (inside `disable_adapter()` when that was the last call), then what it shows next to
        what SPEC requires: the observed element next to the required one (the oracle's, or the implementation's own
        other output), the output's shape, or the exception the forward raised; `REPRODUCED: …` when they differ and
        the observation is the one the suite saw. An adapter parameter or its gradient (after the same backward) is
        read like an output element; an exact observation of the model is compared with what SPEC admits."""
        case, model, d = self.case, self.current, self.case.discrepancy
        target = d.target if d is not None else None
        if target in OBSERVED_BY and not self.driver.repro_reads:
            target = None
        if d is not None and d.kind == "differs" and target in OBSERVATIONS:
            self._observation_check(d)
            return
        if d is not None and target == "grad" and self.x_bound:
            self._backward(d)
        if d is not None and target == "applied":
            self._applied(d)
            self._value_check(d)
            return
        forward = self.x_bound and target in ("output", None)
        context = f"torch.no_grad(), {model}.disable_adapter()" if disabled else "torch.no_grad()"
        forward_lines = [f"with {context}:", f"    y = {model}.eval()(x)"]
        if d is not None and target == "output" and d.mode == "train":
            forward_lines = self._train_forwards(d)
        if forward and d is not None and d.kind == "raised":
            self.outcome_check(forward_lines, "the forward on x")
            return
        if forward:
            self.lines += forward_lines
        if forward and d is not None and d.kind == "shape":
            self._shape_check(d)
            return
        if forward and d is not None and d.kind == "nonfinite":
            self._finite_check(d)
            return
        if d is None or d.kind != "value" or target is None or (target == "output" and not forward):
            if forward:
                self.lines.append("print(y)")
            results = (("expected", case.expected), ("observed", case.observed))
            self.lines += [f"# {label}: {value}" for label, value in results if value is not None]
            return
        if target == "output":
            self.lines.append(f"observed = float(y[{d.where!r}])")
        elif target in ("param", "grad") and (target == "param" or self.x_bound):
            root, key, adapter = self._observed(d)
            self.lines += [f"module = {root}.get_submodule({key!r})"]
            self.lines.append(f"tensor = {self.driver._param_code('module', adapter, d.name, case.tuner)}")
            if target == "grad":  # no `.grad`: nothing flowed into the parameter (a zero gradient, as the suite reads)
                self.lines.append("tensor = torch.zeros_like(tensor) if tensor.grad is None else tensor.grad")
            self.lines.append(f"observed = float(tensor.detach()[{d.where!r}])")
        elif target in ("weight", "bias"):
            self.lines += [
                f"module = {self._model_root(self.current)}.get_submodule({d.key!r})",
                "base = getattr(module, 'base_layer', module)",
            ]
            if target == "weight":
                self.lines.append("tensor = base.weight.T if isinstance(base, transformers.pytorch_utils.Conv1D) "
                                  "else base.weight")  # fmt: skip
            else:
                self.lines.append("tensor = base.bias")
            self.lines.append(f"observed = float(tensor[{d.where!r}])")
        else:
            self.lines.append(f"# not rendered: {d.what} ({target})")
            return
        self._value_check(d)

    def _value_check(self, d: Discrepancy) -> None:
        """`observed` (bound by the lines before) next to the oracle's value; `REPRODUCED: …` when they differ as the
        suite saw."""
        self.imports.add("import math")
        self.lines += [
            f"expected = {float_code(d.expected)}  # what the clause requires there (float64)",
            f"allowed = {float_code(d.bound)}  # the |difference| §8's tolerance allows there",
            f"seen = {float_code(d.observed)}  # what the conformance suite observed",
            f"what = {f'{d.what} at {d.where!r}'!r}",
            "print(f'{what}: observed {observed!r}, expected {expected!r}, allowed |difference| {allowed:.3g}')",
            "differs = not abs(observed - expected) <= allowed",
            "same = observed == seen or (math.isnan(observed) and math.isnan(seen)) or "
            "abs(observed - seen) <= 0.01 * abs(seen - expected)",
            "if differs and same:",
            f"    print(f'{REPRODUCED} {{what}} = {{observed!r}}, but should be within {{allowed:.3g}} "
            "of {expected!r} (|difference| {abs(observed - expected):.3g})')",
            "else:",
            f"    print({NOT_REPRODUCED!r})",
        ]

    def _applied(self, d: Discrepancy) -> None:
        """`observed`: the element `d.where` of `d.derive` over W (the weight the current model applies at `d.key`,
        read through its forward by `applied_weight`, whose source the snippet defines) and B (the base weight)."""
        self.imports.add("import math")
        self.lines += [line for line in inspect.getsource(applied_weight).splitlines() if line.strip()]
        self.lines += [
            f"module = {self._model_root(self.current)}.get_submodule({d.key!r})",
            "base = getattr(module, 'base_layer', module)",
            f"W = applied_weight({self.current}.eval(), base)",
            "B = base.weight.T if isinstance(base, transformers.pytorch_utils.Conv1D) else base.weight",
            "B = B.detach().double()",
            f"tensor = {d.derive}",
            f"observed = float(tensor[{d.where!r}])",
        ]

    def _train_forwards(self, d: Discrepancy) -> list[str]:
        """`d.forwards` train-mode forwards on `x` after seeding torch with `d.train_seed`, as the suite made them;
        `y` the last one, or all of them stacked (a "nonfinite" check)."""
        model = self.current
        return [
            f"{model}.train()",
            f"torch.manual_seed({d.train_seed})",
            "with torch.no_grad():",
            f"    outputs = [{model}(x) for _ in range({d.forwards})]",
            f"{model}.eval()",
            "y = torch.stack(outputs)" if d.kind == "nonfinite" else "y = outputs[-1]",
        ]

    def _finite_check(self, d: Discrepancy) -> None:
        """Whether `y` is finite; `REPRODUCED: …` when it is not, as the suite saw."""
        self.lines += [
            f"what = {d.what!r}",
            "finite = bool(torch.isfinite(y).all())",
            "print(f'{what}: every entry finite: {finite}')",
            "if not finite:",
            f"    print(f'{REPRODUCED} {{what}} has non-finite entries, but should be finite')",
            "else:",
            f"    print({NOT_REPRODUCED!r})",
        ]

    def _model_root(self, model: str) -> str:
        """The module tree a model's keys are relative to (inside an adapted model's wrapper)."""
        return f"{model}.base_model.model" if model in self.adapted else model

    def _observed(self, d: Discrepancy) -> tuple[str, str, str]:
        """The module tree, key and adapter the suite's observation was made on: those of the last recorded read-only
        call that makes it (`OBSERVED_BY`) on the discrepancy's key and adapter, else of the last one on any, else the
        current model and the discrepancy's key and adapter."""
        method = OBSERVED_BY.get(d.target or "")
        made = [c for c in self.case.calls if isinstance(c, Call) and c.method == method and "model" in c.arguments]
        same = [
            c
            for c in made
            if (c.arguments.get("key", d.key), c.arguments.get("adapter", d.adapter)) == (d.key, d.adapter)
        ]
        for call in (same or made)[-1:]:
            a = call.arguments
            return self._model_root(self._var(a["model"])), a.get("key", d.key), a.get("adapter", d.adapter)
        return self._model_root(self.current), d.key, d.adapter

    def _var(self, model: Any) -> str:
        return model.var if isinstance(model, Ref) else self.current

    def _backward(self, d: Discrepancy) -> None:
        """The forward on `x` in `d.mode` with gradients, and the backward of `(y * weights).sum()` (the weights drawn
        from `d.weights_seed` as `random_tensor(y.shape, "float64", seed)`)."""
        self.lines += [
            f"{self.current}.train({d.mode == 'train'})",
            f"y = {self.current}(x)",
            f"generator = torch.Generator().manual_seed({d.weights_seed})",
            "weights = torch.rand(tuple(y.shape), generator=generator, dtype=torch.float64) * 2 - 1",
            "(y * weights).sum().backward()",
        ]

    def _observation_check(self, d: Discrepancy) -> None:
        """An exact observation of the current model (`OBSERVATIONS`) next to what SPEC admits; `REPRODUCED: …` when it
        is the one the suite saw and SPEC admits none such."""
        self.lines += [
            f"observed = {self.driver.observation_code(d, *self._observed(d), self)}",
            f"seen = {d.observed!r}  # what the conformance suite observed",
            f"admissible = {tuple(d.expected)!r}  # what SPEC admits",
            f"what = {d.what!r}",
            "print(f'{what}: observed {observed!r}; SPEC admits', ' or '.join(map(repr, admissible)))",
            "if observed == seen and observed not in admissible:",
            f"    print(f'{REPRODUCED} {{what}} is {{observed!r}}, which SPEC does not admit')",
            "else:",
            f"    print({NOT_REPRODUCED!r})",
        ]

    def _shape_check(self, d: Discrepancy) -> None:
        """The output `y`'s shape next to the one SPEC requires; `REPRODUCED: …` when it differs as the suite saw."""
        self.lines += [
            f"expected = {tuple(d.expected)!r}  # the shape the clause requires",
            f"seen = {tuple(d.observed)!r}  # the shape the conformance suite observed",
            f"what = {d.what!r}",
            "observed = tuple(y.shape)",
            "print(f'shape of the {what}: observed {observed}, expected {expected}')",
            "if observed != expected and observed == seen:",
            f"    print(f'{REPRODUCED} {{what}} has shape {{observed}}, but should have shape {{expected}}')",
            "else:",
            f"    print({NOT_REPRODUCED!r})",
        ]

    def outcome_check(self, body: list[str], what: str) -> None:
        """`body` (the checked operation) run once and its outcome printed: the exception it raised, or none;
        `REPRODUCED: …` when that outcome is the one the suite saw and SPEC forbids (`Discrepancy.kind` "raised",
        "unnamed" or "silent"; an "unnamed" message must name none of the subjects, even as a substring). A body
        that is only comments (an operation not rendered) is written as it is, with no check. "unwarned": the body
        runs recording its warnings instead (`_warning_check`)."""
        d = self.case.discrepancy
        if d is None or d.kind not in OUTCOME_KINDS or all(line.lstrip().startswith("#") for line in body):
            self.lines += body
            return
        if d.kind in ("unwarned", "silent_nonfinite"):
            self._warning_check(body, what, d)
            return
        self.lines += ["try:", *_indent(body), "except Exception as exc:", "    raised = exc"]
        self.lines += [
            "else:",
            "    raised = None",
            f"what = {what!r}",
            "print(what, 'returned' if raised is None else f'raised {type(raised).__name__}: {raised}')",
        ]
        if d.kind == "silent":
            shown, claim = "raised is None", f"{what} raised no exception, but should raise {d.expected}"
        elif d.kind == "raised":
            shown = f"type(raised).__name__ == {d.observed!r}"
            claim = f"{what} raised {d.observed}, but should " + (f"raise {d.expected}" if d.expected else "accept it")
        else:
            subjects = tuple(str(s).lower() for s in d.expected)
            shown = (
                f"type(raised).__name__ == {d.observed!r} and not any(s in str(raised).lower() for s in {subjects!r})"
            )
            claim = f"{what} raised {d.observed} naming none of {list(subjects)}"
        self.lines += [f"if {shown}:", f"    print({f'{REPRODUCED} {claim}'!r})"]
        self.lines += ["else:", f"    print({NOT_REPRODUCED!r})"]

    def _warning_check(self, body: list[str], what: str, d: Discrepancy) -> None:
        """`body` run recording every warning; `REPRODUCED: …` when none is of category `d.expected[0]` (or a subclass)
        naming one of the subjects `d.expected[1:]` (case-insensitively) with a message matching the regular expression
        `d.derive` (any, if empty), as the suite saw — for "silent_nonfinite", only where the base weight or bias at
        `d.key` then has a non-finite element."""
        category, *subjects = d.expected
        self.imports.update(("import warnings", "import re"))
        self.lines += [
            "with warnings.catch_warnings(record=True) as caught:",
            "    warnings.simplefilter('always')",
            *_indent(body),
            "emitted = [f'{w.category.__name__}: {w.message}' for w in caught]",
            f"what = {what!r}",
            "print(what, 'warned', emitted)",
            f"subjects = {tuple(str(s).lower() for s in subjects)!r}",
            f"named = [w for w in caught if issubclass(w.category, {category}) and re.search({d.derive!r}, "
            "str(w.message), re.IGNORECASE) and (not subjects or any(s in str(w.message).lower() for s in subjects))]",
        ]
        claim = f"{what} emitted no {category} naming any of {subjects}"
        condition = "not named"
        if d.kind == "silent_nonfinite":
            self.lines += [
                f"module = {self._model_root(self.current)}.get_submodule({d.key!r})",
                "base = getattr(module, 'base_layer', module)",
                "finite = all(bool(torch.isfinite(t).all()) for t in (base.weight, base.bias) if t is not None)",
                "print('base weight and bias finite afterwards:', finite)",
            ]
            claim = f"{what} wrote non-finite base values, and emitted no {category} naming any of {subjects}"
            condition = "not named and not finite"
        if d.derive:
            claim += f" with a message matching /{d.derive}/"
        self.lines += [
            f"if {condition}:",
            f"    print({f'{REPRODUCED} {claim}'!r})",
            "else:",
            f"    print({NOT_REPRODUCED!r})",
        ]


# on what a checked operation raised or warned
OUTCOME_KINDS = frozenset({"raised", "unnamed", "silent", "unwarned", "silent_nonfinite"})
# exact observations ("differs")
OBSERVATIONS = frozenset({"adapted", "active", "shapes", "requires_grad", "trainable", "saved"})
# the read-only driver call whose observation a discrepancy target repeats (its model, key and adapter)
OBSERVED_BY = {"adapted": "adapted_modules", "active": "layer_state", "shapes": "get_params",
               "requires_grad": "get_requires_grad", "param": "get_params", "grad": "get_grads",
               "trainable": "layer_state"}  # fmt: skip
NOT_REPRODUCED = "NOT REPRODUCED: the snippet does not show the failure the suite saw"


def _checked_call(case: Case, calls: list[Call]) -> Call | None:
    """The call whose outcome the case's final check is on, where the discrepancy is on a checked operation (`target`
    "call"): the last recorded call if it changes state (raised, unnamed, silent); the last state-changing call
    (unwarned, silent_nonfinite: read-only observations may follow the warning one)."""
    d = case.discrepancy
    if d is None or d.kind not in OUTCOME_KINDS or d.target != "call":
        return None
    changing = [call for call in calls if call.method not in READ_ONLY]
    if d.kind not in ("unwarned", "silent_nonfinite"):
        return calls[-1] if calls[-1].method not in READ_ONLY else None
    return changing[-1] if changing else None


def _model_after(call: Call, current: str) -> str:
    """The model a later forward goes through: the one a call returned, else the one it acted on."""
    if call.result is not None and call.method in ("adapt", "load", "merge_and_unload", "unload"):
        return call.result.var
    model = call.arguments.get("model")
    return model.var if isinstance(model, Ref) else current


def _new_definitions(code: str, present: list[str]) -> list[str]:
    """The lines of `code` less its import lines and class definitions that `present` already holds (a second base
    model's source repeats the first's header)."""
    known = {line for text in present for line in text.split("\n") if line.startswith(("import ", "from ", "class "))}
    kept: list[str] = []
    skipping = False
    for line in code.split("\n"):
        if line.startswith(("import ", "from ", "class ")) or not line.startswith(" "):
            skipping = line in known
        if not skipping:
            kept.append(line)
    return kept


def _safetensors_code(content: bytes, target: str) -> str:
    """A `safetensors.torch.save_file` call writing the tensors (by name) and metadata of a safetensors file's
    `content`."""
    import safetensors.torch

    tensors = safetensors.torch.load(content)
    header = json.loads(content[8 : 8 + int.from_bytes(content[:8], "little")])
    metadata = header.get("__metadata__")
    written = "{" + ", ".join(f"{name!r}: {tensor_code(tensors[name])}" for name in sorted(tensors)) + "}"
    return f"safetensors.torch.save_file({written}, {target}, metadata={metadata!r})"


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


def _arguments_repr(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v.var if isinstance(v, Ref) else v!r}" for k, v in arguments.items())


def float_code(value: float) -> str:
    """A Python literal for a float (exact: `repr` round-trips), `float('nan')` / `float('inf')` where needed."""
    value = float(value)
    if value != value:
        return "float('nan')"
    if value in (float("inf"), float("-inf")):
        return "float('inf')" if value > 0 else "-float('inf')"
    return repr(value)


def tensor_code(tensor: torch.Tensor) -> str:
    """Source for a tensor with exactly these values, dtype and shape."""
    tensor = tensor.detach().cpu()
    dtype = str(tensor.dtype)
    if tensor.numel() == 0:
        return f"torch.zeros({tuple(tensor.shape)!r}, dtype={dtype})"
    values = tensor.tolist() if not tensor.dtype.is_floating_point else tensor.double().tolist()
    return f"torch.tensor({_nested_code(values)}, dtype={dtype})"


def _nested_code(values: Any) -> str:
    if isinstance(values, list):
        return "[" + ", ".join(_nested_code(v) for v in values) + "]"
    return float_code(values) if isinstance(values, float) else repr(values)
