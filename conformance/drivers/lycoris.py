"""The built-in driver for lycoris-lora 4.x: `loha` and `ia3` (its `glora` is GLoRA, not GraLoRA), surface `layers`.

lycoris has no adapter names, configs, files or target rules of PEFT's kind, so the driver offers only the `layers`
surface; one adapter, "default", is one `LycorisNetwork`. Names and layouts only (DESIGN "Driver protocol"); every
lycoris option that no canonical field names stays at its default (multiplier 1.0, `use_scalar`, `dora_wd`,
`bypass_mode`, `rs_lora` off, the conv rank and alpha equal to the linear ones).

Canonical config → lycoris (`options` are `create_lycoris` keywords, `preset` goes to `LycorisNetwork.apply_preset`):
- `target_modules` → preset `target_name`, one regular expression over module paths (a list entry matches the path
  or a dot-suffix of it, a string the whole path) and no class targets (`target_module: []`);
- LoHa `r`, `alpha`, `rank_dropout`, `module_dropout`, `use_effective_conv2d` → `linear_dim`, `linear_alpha`,
  `rank_dropout`, `module_dropout`, `use_tucker`;
- IA3 `feedforward_modules` → preset `name_algo_map` entries with `train_on_input=True` (lycoris's input scaling);
- not expressible, so not passed: `init_weights` / `init_ia3_weights` (lycoris has one initialisation, the identity),
  `fan_in_fan_out` (no transformers Conv1D support), `exclude_modules`, `layers_*`, `modules_to_save`,
  `rank_pattern`, `alpha_pattern`.

Layouts: LoHa's factors are SPEC's, except effective-mode Conv1d cores, `(r, r, k)` here and `(r, r, k, 1)` in SPEC
(exact). IA3 stores an offset `w` with the vector `l = w·multiplier + 1` (lycoris's own formula), shaped `(n,)` for
Linear and `(1, C, 1, …)` for convolutions: `get_params` reads `l` computed as lycoris computes it, `set_params`
writes `w = (l − 1) / multiplier` (inexact in floating point: declared).
"""

from __future__ import annotations

import copy
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar

import lycoris
import torch
from lycoris.modules.base import LycorisBaseModule
from torch import nn

from .base import Call, Capabilities, LayerState, PeftLikeDriver, ReproSnippet, TunerCapabilities, tensor_code

LAYERS_ONLY = frozenset({"layers"})
# canonical name → the lycoris parameter holding it (IA3: an offset from the vector, see the module docstring)
PARAMETERS = {
    "loha": {name: name for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")},
    "ia3": {"ia3_l": "weight"},
}
MULTIPLIER = 1.0  # create_lycoris's default multiplier, passed explicitly (it is positional)


@dataclass(frozen=True)
class LycorisConfig:
    """What one adapter is made with in lycoris: the preset that selects the modules and `create_lycoris`'s
    keywords. `canonical` is the dict it was made from (`to_dict`)."""

    preset: dict
    options: dict
    canonical: dict = field(compare=False)

    def to_dict(self) -> dict:
        return dict(self.canonical)


class LycorisModel(nn.Module):
    """The adapted model: the base model (its targeted modules' forwards replaced by lycoris, `apply_to`) and the
    `LycorisNetwork` owning every adapter parameter, side by side; forward is the base model's."""

    def __init__(self, model: nn.Module, network: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.network = network

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def target_pattern(targets: list[str] | set[str] | str) -> str:
    """A regular expression that `re.match` (lycoris's matcher) applies as CORE-MATCH-1/2 say: a string matches the
    whole path; a list entry the path or a dot-suffix of it."""
    if isinstance(targets, str):
        return f"(?:{targets})$"
    return "(?:.*\\.)?(?:" + "|".join(re.escape(t) for t in sorted(targets)) + ")$"


class LycorisDriver(PeftLikeDriver):
    name = "lycoris"
    repro_import = ("import lycoris", "lycoris.")
    config_classes: ClassVar[dict[str, type]] = {"loha": LycorisConfig, "ia3": LycorisConfig}
    driver_options: ClassVar[dict[str, Any]] = {
        "multiplier": MULTIPLIER,
        "not passed (no lycoris equivalent)": "init_weights, init_ia3_weights, fan_in_fan_out, exclude_modules, "
        "layers_to_transform, layers_pattern, modules_to_save, rank_pattern, alpha_pattern",
    }
    # parameters live on the lycoris network's modules (`param_lines`); peft's other observations do not apply
    repro_reads = frozenset({"param", "grad"})
    api_map: ClassVar[dict[str, str]] = {
        "make_config": "preset {target_module: [], target_name: [pattern], name_algo_map: {feedforward pattern: "
        "{train_on_input: True}}}; options {algo, linear_dim=r, linear_alpha=alpha, rank_dropout, module_dropout, "
        "use_tucker=use_effective_conv2d}",
        "adapt": "LycorisNetwork.apply_preset(preset); create_lycoris(model, 1.0, **options).apply_to()",
        "layer_state": "the base module itself (lycoris replaces its forward): its features; merged while "
        "onfly_merge's cached weight exists, active while the module's forward is lycoris's",
        "get_params": "LohaModule.hada_*; IA3Module: weight·multiplier + 1",
        "set_params": "LohaModule.hada_*.copy_; IA3Module.weight.copy_((l − 1) / multiplier)",
        "merge": "LycorisNetwork.restore(); LycorisNetwork.onfly_merge(1.0) (lycoris has no safe merge)",
        "unmerge": "LycorisNetwork.onfly_restore(); LycorisNetwork.apply_to()",
        "merge_and_unload": "LycorisNetwork.restore(); LycorisNetwork.merge_to(1.0); the base model",
        "unload": "LycorisNetwork.restore(); the base model",
    }

    def version(self) -> str:
        return metadata.version("lycoris-lora")

    def capabilities(self) -> Capabilities:
        """What lycoris's modules accept (`support_module` and `create_lycoris`'s module walk: torch Linear and
        ConvNd, never transformers Conv1D)."""
        return Capabilities(
            tuners={
                "loha": TunerCapabilities(
                    variants=frozenset({"plain", "effective_conv"}),
                    layer_kinds=frozenset({"linear", "conv1d", "conv2d", "conv3d"}),
                    surfaces=LAYERS_ONLY,
                    config_fields=frozenset(
                        {"r", "alpha", "rank_dropout", "module_dropout", "use_effective_conv2d", "target_modules"}
                    ),
                    optional=frozenset({"loha.conv3d"}),
                ),
                "ia3": TunerCapabilities(
                    variants=frozenset({"plain", "feedforward"}),
                    layer_kinds=frozenset({"linear", "conv1d", "conv2d", "conv3d"}),
                    surfaces=LAYERS_ONLY,
                    config_fields=frozenset({"target_modules", "feedforward_modules"}),
                    optional=frozenset({"ia3.conv1d"}),
                    inexact_layouts=frozenset({"ia3_l"}),
                ),
            }
        )

    # ---- configs ----
    def make_config(self, tuner: str, config: dict) -> LycorisConfig:
        targets = config.get("target_modules")
        preset: dict[str, Any] = {"target_module": [], "target_name": [], "name_algo_map": {}}
        if targets is not None:
            preset["target_name"] = [target_pattern(targets)]
        if tuner == "loha":
            options = {"algo": "loha"}
            renames = {"r": "linear_dim", "alpha": "linear_alpha", "rank_dropout": "rank_dropout",
                       "module_dropout": "module_dropout", "use_effective_conv2d": "use_tucker"}  # fmt: skip
            options.update({renames[k]: v for k, v in config.items() if k in renames})
        else:
            options = {"algo": "ia3"}
            feedforward = config.get("feedforward_modules")
            if feedforward:
                preset["name_algo_map"] = {target_pattern(feedforward): {"algo": "ia3", "train_on_input": True}}
        return LycorisConfig(preset, options, dict(config))

    def config_to_dict(self, cfg: object) -> dict:
        return cfg.to_dict()  # type: ignore[attr-defined]

    def config_from_dict(self, tuner: str, d: dict) -> LycorisConfig:
        return self.make_config(tuner, d)

    # ---- adapting ----
    def adapt(
        self,
        model: nn.Module,
        tuner: str,
        config: object,
        adapter: str | None = "default",
        *,
        autocast_adapter_dtype: bool = True,
    ) -> nn.Module:
        """One network per model: lycoris has no adapter names and no dtype option (`adapter`,
        `autocast_adapter_dtype` have nothing to map to)."""
        cfg = self._config(tuner, config)
        lycoris.LycorisNetwork.apply_preset(cfg.preset)
        network = lycoris.create_lycoris(model, MULTIPLIER, **cfg.options)
        network.apply_to()
        return LycorisModel(model, network)

    def _modules(self, model: nn.Module) -> dict[str, LycorisBaseModule]:
        """The lycoris module of each adapted key (the path of the base module it wraps)."""
        by_base = {id(module.org_module[0]): module for module in model.network.loras}
        return {key: by_base[id(base)] for key, base in model.model.named_modules() if id(base) in by_base}

    def adapted_modules(self, model: nn.Module) -> list[str]:
        return list(self._modules(model))

    def _module(self, model: nn.Module, key: str) -> LycorisBaseModule:
        return self._modules(model)[key]

    def layer_state(self, model: nn.Module, key: str) -> LayerState:
        """lycoris leaves the base module in place: the features are its own, the base layer is its `base_view`;
        "default" is merged while `onfly_merge`'s cached weight exists and active while the module's forward is the
        adapter's."""
        module = self._module(model, key)
        base = module.org_module[0]
        active = module in getattr(base, "_lycoris_wrappers", [])
        convolution = isinstance(base, nn.modules.conv._ConvNd)
        return LayerState(
            merged_adapters=["default"] if hasattr(module, "cached_org_weight") else [],
            active_adapters=["default"] if active else [],
            in_features=base.in_channels if convolution else base.in_features,
            out_features=base.out_channels if convolution else base.out_features,
            base_layer=base_view(base),
        )

    # ---- parameters ----
    def _live(self, model: nn.Module, key: str) -> tuple[str, LycorisBaseModule, dict[str, nn.Parameter]]:
        """The tuner of `key`'s module and its parameters by canonical name (absent ones left out)."""
        module = self._module(model, key)
        tuner = module.name
        names = PARAMETERS[tuner]
        return tuner, module, {c: getattr(module, n) for c, n in names.items() if hasattr(module, n)}

    def get_params(self, model: nn.Module, key: str, adapter: str) -> dict[str, torch.Tensor]:
        tuner, module, live = self._live(model, key)
        return {name: self._canonical(tuner, module, name, value) for name, value in live.items()}

    def set_params(self, model: nn.Module, key: str, adapter: str, params: dict[str, torch.Tensor]) -> None:
        tuner, module, live = self._live(model, key)
        with torch.no_grad():
            for name, value in params.items():
                target = live[name]
                stored = (value - 1) / module.multiplier if tuner == "ia3" else value
                target.copy_(stored.reshape(target.shape))

    def get_grads(self, model: nn.Module, key: str, adapter: str) -> dict[str, torch.Tensor | None]:
        """`.grad` in canonical layout (IA3: dl/dw = multiplier, so dL/dl = dL/dw / multiplier)."""
        tuner, module, live = self._live(model, key)
        grads = {}
        for name, value in live.items():
            grad = value.grad
            if grad is not None and tuner == "ia3":
                grad = grad / module.multiplier
            grads[name] = None if grad is None else self._layout(tuner, module, name, grad)
        return grads

    def get_requires_grad(self, model: nn.Module, key: str, adapter: str) -> dict[str, bool]:
        return {name: value.requires_grad for name, value in self._live(model, key)[2].items()}

    def _canonical(self, tuner: str, module: LycorisBaseModule, name: str, value: torch.Tensor) -> torch.Tensor:
        """A parameter's canonical value: IA3's vector `w·multiplier + 1`, others as stored; in canonical layout."""
        if tuner == "ia3":
            value = value * module.multiplier + 1
        return self._layout(tuner, module, name, value)

    @staticmethod
    def _layout(tuner: str, module: LycorisBaseModule, name: str, value: torch.Tensor) -> torch.Tensor:
        """SPEC's shape: IA3 Linear `(out, 1)` / `(1, in)` (feedforward); Conv1d effective cores `(r, r, k, 1)`."""
        if tuner == "ia3" and module.module_type == "linear":
            return value.reshape(1, -1) if module.train_input else value.reshape(-1, 1)
        if name in ("hada_t1", "hada_t2") and module.module_type == "conv1d":
            return value.unsqueeze(-1)
        return value

    # ---- merging ----
    def merge(self, model: nn.Module, adapters: list[str] | None = None, safe: bool = False) -> None:
        """lycoris has one adapter and no safe merge: `adapters` naming it (or None) merges it, `safe` maps to
        nothing."""
        if adapters is None or "default" in adapters:
            model.network.restore()
            model.network.onfly_merge(MULTIPLIER)

    def unmerge(self, model: nn.Module) -> None:
        model.network.onfly_restore()
        model.network.apply_to()

    def merge_and_unload(self, model: nn.Module, adapters: list[str] | None = None, safe: bool = False) -> nn.Module:
        """lycoris's own merge: the adapter's forward removed, its delta written into the base weights."""
        model.network.restore()
        if adapters is None or "default" in adapters:
            model.network.merge_to(MULTIPLIER)
        return model.model

    def unload(self, model: nn.Module) -> nn.Module:
        model.network.restore()
        return model.model

    # ---- surfaces lycoris does not offer (their rows skip before any call) ----
    def _not_offered(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("lycoris-lora offers only the `layers` surface")

    add_adapter = set_active = delete_adapter = _not_offered
    save = load = load_adapter = call_optional = convert_checkpoint = saved_module = _not_offered

    def disabled(self, model: nn.Module) -> AbstractContextManager:
        return self._not_offered(model)

    # ---- repros in lycoris's own API ----
    def config_object_code(self, tuner: str, config: object, prefix: str) -> str:
        cfg = self._config(tuner, config)
        return repr({"preset": cfg.preset, "options": cfg.options})

    def _config_code(self, tuner: str, config: Any, prefix: str) -> str:
        return self.config_object_code(tuner, config, prefix)

    def _adapt_configs(self, case: Any, prefix: str) -> list[str]:
        """Without recorded calls: the configs' networks on `model`, then the output."""
        lines = []
        for config in case.configs.values():
            lines += _adapt_lines("model", self.config_object_code(case.tuner, config, prefix))
        if case.input_shapes:
            lines.append("print(model(x))")
        results = (("expected", case.expected), ("observed", case.observed))
        return lines + [f"# {label}: {value}" for label, value in results if value is not None]

    def param_lines(self, root: str, key: str, adapter: str, canonical: str, tuner: str, *, grad: bool) -> list[str]:
        """`tensor`: the lycoris parameter holding `canonical` on the network module of `key` (`root` is the model
        `<root>_network` was created on), as `get_params` / `get_grads` read it: IA3's vector `w·multiplier + 1` (its
        gradient divided by the multiplier), in canonical layout (`_layout`)."""
        ia3 = tuner == "ia3"
        lines = [
            f"module = {root}_network.get_submodule({_lora_name(key)!r})",
            f"tensor = module.{PARAMETERS[tuner][canonical]}",
        ]
        if grad:
            divided = " / module.multiplier" if ia3 else ""
            lines.append(f"tensor = torch.zeros_like(tensor) if tensor.grad is None else tensor.grad{divided}")
        elif ia3:
            lines.append("tensor = tensor * module.multiplier + 1")
        if ia3:
            lines.append("if module.module_type == 'linear':")
            lines.append("    tensor = tensor.reshape(1, -1) if module.train_input else tensor.reshape(-1, 1)")
        if canonical in ("hada_t1", "hada_t2"):
            lines.append("tensor = tensor.unsqueeze(-1) if module.module_type == 'conv1d' else tensor")
        return lines

    def render_call(self, call: Call, snippet: ReproSnippet) -> list[str]:
        """`adapt`, `set_params`, `merge`, `unmerge` as the lycoris calls `api_map` names; the rest as the base
        class renders them (configs) or as comments."""
        a, method = call.arguments, call.method
        model = snippet.name(a["model"]) if "model" in a else None
        if method == "adapt":
            return _adapt_lines(model, snippet.config(a["tuner"], a["config"]))
        if method == "set_params":
            module = f"{model}_network.get_submodule({_lora_name(a['key'])!r})"
            ia3 = snippet.case.tuner == "ia3"
            lines = []
            for name, value in a["params"].items():
                target = f"{module}.{PARAMETERS[snippet.case.tuner][name]}"
                stored = f"({tensor_code(value)} - 1) / {module}.multiplier" if ia3 else tensor_code(value)
                lines.append(f"{target}.data.copy_(({stored}).reshape({target}.shape))")
            return lines
        if method == "merge":
            if a["adapters"] is not None and "default" not in a["adapters"]:
                return []
            return [f"{model}_network.restore()", f"{model}_network.onfly_merge({MULTIPLIER})"]
        if method == "unmerge":
            return [f"{model}_network.onfly_restore()", f"{model}_network.apply_to()"]
        if method in ("merge_and_unload", "unload"):
            merging = method == "merge_and_unload" and (a["adapters"] is None or "default" in a["adapters"])
            lines = [f"{model}_network.restore()", *([f"{model}_network.merge_to({MULTIPLIER})"] * merging)]
            return lines + ([f"{call.result.var} = {model}"] if call.result is not None else [])
        return super().render_call(call, snippet)


def base_view(module: nn.Module) -> nn.Module:
    """The base layer as torch computes it: lycoris replaces the module instance's `forward`; a shallow copy without
    that attribute shares the module's parameter dict (the same, live tensors) and runs the class's own forward."""
    view = copy.copy(module)
    view.__dict__.pop("forward", None)
    return view


def _adapt_lines(model: str, config: str) -> list[str]:
    """A network on `model` (bound to `<model>_network`) from a config's preset and options."""
    network = f"{model}_network"
    return [
        f"{network}_config = {config}",
        f"lycoris.LycorisNetwork.apply_preset({network}_config['preset'])",
        f"{network} = lycoris.create_lycoris({model}, {MULTIPLIER}, **{network}_config['options'])",
        f"{network}.apply_to()",
    ]


def _lora_name(key: str) -> str:
    """The name lycoris registers the module of `key` under in its network."""
    return f"{lycoris.LycorisNetwork.LORA_PREFIX}_{key}".replace(".", "_")
