"""`TunerModel`: injects one tuner's adapters into a model and runs their lifecycle (SPEC §1.3–§1.9)."""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from .config import PeftConfig, check_bias
from .defaults import model_type
from .kinds import LINEAR_KINDS, layer_kind
from .layer import TunerLayer
from .matching import ALL_LINEAR, SEQ_CLS_HEADS, is_targeted, matches
from .modules_to_save import ModulesToSaveWrapper
from .registry import tuner_of


def walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """(key, module) for every module below `module`, not looking inside tuner layers or wrappers."""
    for name, child in module.named_children():
        key = f"{prefix}.{name}" if prefix else name
        yield key, child
        if not isinstance(child, (TunerLayer, ModulesToSaveWrapper)):
            yield from walk(child, key)


class TunerModel(nn.Module):
    """PEFT's `base_model`: holds `model` with its tuner layers, the configs and the active list."""

    def __init__(
        self, model: nn.Module, config: PeftConfig, adapter_name: str, autocast_adapter_dtype: bool = True
    ) -> None:
        super().__init__()
        self.model = model
        self.tuner = tuner_of(config)
        self.peft_config: dict[str, PeftConfig] = {}
        self.active_adapters: list[str] = []
        self.inject_adapter(config, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        model.requires_grad_(False)  # after injection: a rejected config leaves the caller's model as it was
        self.set_adapter(adapter_name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            tuner = self.__dict__.get("tuner")
            if tuner is not None and name in tuner.model_ops:
                return functools.partial(tuner.model_ops[name], self)
            return getattr(self.model, name)

    # ---- views ----
    def tuner_layers(self) -> list[tuple[str, TunerLayer]]:
        return [(k, m) for k, m in walk(self.model) if isinstance(m, TunerLayer)]

    def wrappers(self) -> list[tuple[str, ModulesToSaveWrapper]]:
        return [(k, m) for k, m in walk(self.model) if isinstance(m, ModulesToSaveWrapper)]

    @property
    def active_adapter(self) -> str | list[str]:
        return self.active_adapters[0] if len(self.active_adapters) == 1 else list(self.active_adapters)

    # ---- injection (CORE-MATCH, CORE-INJ, CORE-LIFE-2/3) ----
    def _resolve_targets(self, config: PeftConfig) -> tuple[PeftConfig, set[str] | None]:
        """A copy of `config` with `target_modules` resolved (CORE-MATCH-11), and for "all-linear" the
        exact keys it stands for: stored as a set like PEFT, but matched exactly here, since a key's
        dot-suffix rule would also catch a non-linear module whose key ends with it."""
        config = copy.deepcopy(config)
        config.resolve_defaults(model_type(self.model))
        if isinstance(config.target_modules, str) and config.target_modules.lower() == ALL_LINEAR:
            config.target_modules = self._all_linear_keys(config)
            return config, set(config.target_modules)
        return config, None

    def _all_linear_keys(self, config: PeftConfig) -> set[str]:
        """CORE-MATCH-5: every Linear / Conv1D except the LM head and, for SEQ_CLS, the classification
        head (the model's `classifier` or `score` module, with everything inside it)."""
        heads = []
        get_head = getattr(self.model, "get_output_embeddings", None)
        heads.append(get_head() if callable(get_head) else None)
        if config.task_type == "SEQ_CLS":
            heads.extend(getattr(self.model, name, None) for name in SEQ_CLS_HEADS)
        excluded = {id(m) for head in heads if isinstance(head, nn.Module) for m in head.modules()}
        keys = set()
        for key, module in walk(self.model):
            base = module.base_layer if isinstance(module, TunerLayer) else module
            if layer_kind(base) in LINEAR_KINDS and id(module) not in excluded:
                keys.add(key)
        return keys

    def inject_adapter(self, config: PeftConfig, name: str, *, autocast_adapter_dtype: bool = True) -> None:
        """Validate every target first, then adapt: a rejected config leaves the model untouched."""
        if name in self.peft_config:
            raise ValueError(f"Adapter {name!r} already exists; choose another adapter name.")
        if tuner_of(config) is not self.tuner:
            raise ValueError(
                f"Cannot add a {config.peft_type} adapter to a model holding {self.tuner.peft_type} adapters."
            )
        check_bias(config)
        bias = getattr(config, "bias", "none")
        with_bias = [n for n, c in self.peft_config.items() if getattr(c, "bias", "none") != "none"]
        if bias != "none" and with_bias:
            raise ValueError(
                f"Adapter {with_bias[0]!r} already uses bias={self.peft_config[with_bias[0]].bias!r}; "
                f"only one adapter per model may set `bias`, so {name!r} must use bias='none'."
            )
        requested = config.target_modules
        config, exact = self._resolve_targets(config)
        layer_cls = self.tuner.layer_cls
        plan = []
        for key, module in walk(self.model):
            if not is_targeted(config, key) or (exact is not None and key not in exact):
                continue
            if isinstance(module, TunerLayer):
                base, kind = module.base_layer, module.kind
            else:
                base, kind = module, layer_kind(module)
            if kind not in layer_cls.supported_kinds:
                raise TypeError(
                    f"Target module {key!r} is a {type(base).__name__}, which {config.peft_type} does not "
                    f"support (supported: {', '.join(sorted(layer_cls.supported_kinds))})."
                )
            plan.append((key, module, kind, layer_cls.resolve_settings(config, key, base, kind)))
        if not plan:
            shown = config.target_modules if requested is None else requested
            shown = f"'{shown}'" if isinstance(shown, str) else "[" + ", ".join(sorted(shown)) + "]"
            raise ValueError(
                f"Target modules {shown} not found in the base model; "
                "check `target_modules` (and `exclude_modules`, `layers_to_transform`)."
            )
        layer_cls.check_targets(config, [key for key, *_ in plan])
        to_save = self._modules_to_save_plan(config)
        for key, module, kind, settings in plan:
            layer = module if isinstance(module, TunerLayer) else self._replace(key, layer_cls(module, kind))
            layer.active_adapters = list(self.active_adapters)
            layer.add_adapter(name, settings, autocast_adapter_dtype=autocast_adapter_dtype)
        self._add_modules_to_save(to_save, name)
        self.peft_config[name] = config

    def _modules_to_save_plan(self, config: PeftConfig) -> list[tuple[str, nn.Module]]:
        """The modules `modules_to_save` names (key equal to an entry or a dot-suffix): the outermost only,
        since a copy includes everything inside it. A module holding another adapter's tuner layers is
        rejected: copying it would hide those layers from that adapter (merge, save)."""
        entries = config.modules_to_save or []
        plan: list[tuple[str, nn.Module]] = []
        found: set[str] = set()
        for key, module in walk(self.model):
            hits = [m for m in entries if matches([m], key)]
            if not hits or isinstance(module, TunerLayer) or any(key.startswith(k + ".") for k, _ in plan):
                continue
            holds_layers = any(isinstance(m, TunerLayer) for m in module.modules())
            if holds_layers and not isinstance(module, ModulesToSaveWrapper):
                raise ValueError(
                    f"modules_to_save entry {hits[0]!r} names {key!r}, which holds layers adapted by another "
                    "adapter; name a module without adapted layers."
                )
            found.update(hits)
            plan.append((key, module))
        missing = sorted(set(entries) - found)
        if missing:
            warnings.warn(f"modules_to_save entries match no module: {missing}", UserWarning, stacklevel=4)
        return plan

    def _add_modules_to_save(self, plan: list[tuple[str, nn.Module]], name: str) -> None:
        """CORE-MTS-1: one frozen copy per module for adapter `name` (trainability follows activation)."""
        for key, module in plan:
            if not isinstance(module, ModulesToSaveWrapper):
                module = self._replace(key, ModulesToSaveWrapper(module))
                module.set_active(self.active_adapters)
            module.add_adapter(name)
            module.set_requires_grad(name, False)

    def _replace(self, key: str, new: nn.Module) -> nn.Module:
        parent_key, _, child = key.rpartition(".")
        setattr(self.model.get_submodule(parent_key), child, new)
        return new

    # ---- activation, trainability (CORE-LIFE-4, CORE-TRAIN, CORE-BIAS) ----
    def set_adapter(self, adapter_names: str | list[str]) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"Adapter(s) {unknown} do not exist; known: {list(self.peft_config)}")
        for _, wrapper in self.wrappers():
            wrapper.owner(names)  # rejects two owners before anything changes
        if any(layer.merged for _, layer in self.tuner_layers()):
            warnings.warn(
                "Adapters were merged; unmerging them before changing the active adapters.", UserWarning, stacklevel=2
            )
            self.unmerge_adapter()
        self._activate(names)

    def _activate(self, names: list[str]) -> None:
        """Set the active list everywhere and move trainability with it; merged weights stay as they are."""
        for _, layer in self.tuner_layers():
            layer.active_adapters = list(names)
        for _, wrapper in self.wrappers():
            wrapper.set_active(names)
        self.active_adapters = list(names)
        self._refresh_trainability()

    def _trainable(self, name: str) -> bool:
        return name in self.active_adapters and not self.peft_config[name].inference_mode

    def _refresh_trainability(self) -> None:
        selected = set()
        for name in self.active_adapters:
            if self._trainable(name):
                selected.update(id(p) for p in self.bias_parameters(name).values())
        for _, param in self._base_biases():
            param.requires_grad_(id(param) in selected)
        for _, layer in self.tuner_layers():
            for name in layer.settings:
                layer.set_requires_grad(name, self._trainable(name))
        for _, wrapper in self.wrappers():
            for name in wrapper.modules_to_save:
                wrapper.set_requires_grad(name, self._trainable(name))

    def _base_biases(self) -> list[tuple[str, nn.Parameter]]:
        """Every base-model bias (in-memory keys), leaving out adapter parameters and modules_to_save."""
        skip = {
            id(p)
            for _, layer in self.tuner_layers()
            for n in layer.settings
            for p in layer.adapter_parameters(n).values()
        }
        skip.update(id(p) for _, w in self.wrappers() for p in w.parameters())
        return [
            (k, p)
            for k, p in self.model.named_parameters()
            if (k == "bias" or k.endswith(".bias")) and id(p) not in skip
        ]

    def bias_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """CORE-BIAS-2: the biases `name`'s `bias` option trains, by in-memory key."""
        bias = getattr(self.peft_config[name], "bias", "none")
        if bias == "all":
            return dict(self._base_biases())
        if bias.endswith("_only"):
            return {
                f"{k}.base_layer.bias": layer.base_layer.bias
                for k, layer in self.tuner_layers()
                if name in layer.settings and layer.base_layer.bias is not None
            }
        return {}

    # ---- disable (CORE-LIFE-6/7, CORE-BIAS-4) ----
    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        with_bias = [n for n, c in self.peft_config.items() if getattr(c, "bias", "none") != "none"]
        if with_bias:
            warnings.warn(
                f"Adapter {with_bias[0]!r} trains biases (bias != 'none'): with adapters disabled "
                "the output is not the base model's.",
                UserWarning,
                stacklevel=3,
            )
        self._set_disabled(True)
        try:
            yield
        finally:
            self._set_disabled(False)

    def _set_disabled(self, flag: bool) -> None:
        for _, module in (*self.tuner_layers(), *self.wrappers()):
            module.disable_adapters = flag

    # ---- delete (CORE-LIFE-8/9/10) ----
    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} does not exist")
        if any(adapter_name in layer.merged_adapters for _, layer in self.tuner_layers()):
            raise ValueError(f"Adapter {adapter_name!r} is merged; unmerge it before deleting it.")
        for _, module in (*self.tuner_layers(), *self.wrappers()):
            module.delete_adapter(adapter_name)
        del self.peft_config[adapter_name]
        remaining = [n for n in self.active_adapters if n != adapter_name]
        if not remaining and self.peft_config:
            remaining = [next(iter(self.peft_config))]
            warnings.warn(
                f"Deleted the last active adapter; {remaining[0]!r} is now active.", UserWarning, stacklevel=2
            )
        self._activate(remaining)  # not set_adapter: that would unmerge the other adapters (CORE-LIFE-9)

    # ---- merge (CORE-MERGE-11/12/13) ----
    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self._merge(adapter_names, safe_merge)

    def _merge(self, adapter_names: list[str] | None, safe_merge: bool, progressbar: bool = False) -> None:
        """CORE-MERGE-1/2/9/11: adapter by adapter over all layers; a safe merge checks an adapter on every
        layer before writing it anywhere, so a failure at a_j leaves exactly a_1…a_{j−1} merged."""
        if isinstance(adapter_names, str):
            raise TypeError(f"adapter_names must be a list of names, not the string {adapter_names!r}")
        layers = [layer for _, layer in self.tuner_layers()]
        requested = self.active_adapters if adapter_names is None else adapter_names
        names = [n for n in dict.fromkeys(requested) if any(n in layer.settings for layer in layers)]
        done = [n for n in names if all(n in la.merged_adapters for la in layers if n in la.settings)]
        if names and len(done) == len(names):
            warnings.warn("All adapters are already merged, nothing to do.", UserWarning, stacklevel=3)
            return
        if done:
            warnings.warn(f"Adapters already merged, skipped: {done}", UserWarning, stacklevel=3)
        for name in (n for n in names if n not in done):
            holders = [la for la in layers if name in la.settings and name not in la.merged_adapters]
            if safe_merge:
                for layer in holders:
                    layer.check_safe_merge(name)
            for layer in _progress(holders, progressbar, f"Merging {name}"):
                layer.merge(adapter_names=[name])

    def unmerge_adapter(self) -> None:
        merged = [layer for _, layer in self.tuner_layers() if layer.merged]
        if not merged:
            warnings.warn("Already unmerged. Nothing to do.", UserWarning, stacklevel=2)
        for layer in merged:
            layer.unmerge()

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        self._merge(adapter_names, safe_merge, progressbar)
        return self._unwrap()

    def unload(self) -> nn.Module:
        """The base model without adapters; merged adapters are unmerged first, never returned merged."""
        for _, layer in self.tuner_layers():
            if layer.merged:
                layer.unmerge()
        return self._unwrap()

    def _unwrap(self) -> nn.Module:
        for key, layer in self.tuner_layers():
            self._replace(key, layer.base_layer)
        for key, wrapper in self.wrappers():
            self._replace(key, wrapper.active_module())
        return self.model


def _progress(items: list, enabled: bool, desc: str) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
