"""The tuner-layer base: adapter bookkeeping, forward dispatch, merge/unmerge (SPEC §1.6, §1.8)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from .kinds import apply_op, features, logical_weight, stored_layout


def introduces_non_finite(new: torch.Tensor, old: torch.Tensor) -> bool:
    """Whether `new` is non-finite anywhere `old` is finite. A finite sum proves every element of `new` finite
    (a NaN or ±inf term makes the sum non-finite) in one reduction; only otherwise are the elements compared."""
    if torch.isfinite(new.sum()):
        return False
    return bool((~torch.isfinite(new) & torch.isfinite(old)).any())


class TunerLayer(nn.Module):
    """Wraps a base layer and holds any number of named adapters of one tuner.

    Subclasses name their per-adapter containers (`adapter_layer_names` → `nn.ParameterDict`,
    `adapter_module_names` → `nn.ModuleDict`) and implement four hooks: `create_adapter`,
    `adapted_forward`, `merged_tensors` and `unmerged_tensors`. In-memory parameter names follow
    PEFT: `<module>.<canonical name>.<adapter>`.
    """

    adapter_layer_names: ClassVar[tuple[str, ...]] = ()
    adapter_module_names: ClassVar[tuple[str, ...]] = ()
    supported_kinds: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, base_layer: nn.Module, kind: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.kind = kind
        self.in_features, self.out_features = features(base_layer, kind)
        self.settings: dict[str, Any] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disable_adapters = False
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ParameterDict())
        for name in self.adapter_module_names:
            setattr(self, name, nn.ModuleDict())

    # ---- hooks ----
    @classmethod
    def resolve_settings(cls, config: Any, key: str, base_layer: nn.Module, kind: str) -> Any:
        """Per-module hyper-parameters; raises ValueError for a shape the config cannot adapt."""
        raise NotImplementedError

    @classmethod
    def check_targets(cls, config: Any, keys: list[str]) -> None:
        """Once per injection, with every targeted key, before any module changes (e.g. unused patterns)."""

    def create_adapter(self, name: str, settings: Any, dtype: torch.dtype) -> None:
        """Create and initialise `name`'s parameters in `dtype` on the base weight's device."""
        raise NotImplementedError

    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def merged_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W', b') after merging `name` into the current base tensors, computed on copies."""
        raise NotImplementedError

    def unmerged_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, b) with the merged adapter `name` taken out of the current base tensors."""
        raise NotImplementedError

    # ---- introspection ----
    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def base_weight(self) -> torch.Tensor:
        """The live base weight in logical orientation."""
        return logical_weight(self.base_layer, self.kind)

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return apply_op(self.base_layer, self.kind, x, weight, bias)

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """`name`'s parameters under their canonical names (e.g. `gralora_A_general.weight`)."""
        params = {n: getattr(self, n)[name] for n in self.adapter_layer_names if name in getattr(self, n)}
        for n in self.adapter_module_names:
            container = getattr(self, n)
            if name in container:
                params.update({f"{n}.{p}": v for p, v in container[name].named_parameters()})
        return params

    def adapter_dtype(self, name: str) -> torch.dtype:
        """The dtype of `name`'s parameters (read from its first container: this runs every forward)."""
        for container in self.adapter_layer_names:
            if name in getattr(self, container):
                return getattr(self, container)[name].dtype
        return next(iter(self.adapter_parameters(name).values())).dtype

    def applicable(self, names: Iterable[str]) -> list[str]:
        """Names injected on this layer, in the given order."""
        return [n for n in names if n in self.settings]

    # ---- lifecycle ----
    def add_adapter(self, name: str, settings: Any, *, autocast_adapter_dtype: bool = True) -> None:
        """CORE-DTYPE-1: the base weight's device and dtype, half precision upcast to float32 by default."""
        dtype = self.base_layer.weight.dtype
        if autocast_adapter_dtype and dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        self.settings[name] = settings
        self.create_adapter(name, settings, dtype)
        self.set_requires_grad(name, False)

    def set_requires_grad(self, name: str, flag: bool) -> None:
        for param in self.adapter_parameters(name).values():
            param.requires_grad_(flag)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"Adapter {name!r} is merged; unmerge it before deleting it.")
        for container in (*self.adapter_layer_names, *self.adapter_module_names):
            if name in getattr(self, container):
                del getattr(self, container)[name]  # ParameterDict.pop takes no default
        self.settings.pop(name, None)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    # ---- forward (CORE-FWD-5, CORE-FWD-9, CORE-LIFE-6) ----
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        active = self.applicable(self.active_adapters)
        if self.merged or not active:
            return self.base_layer(x, *args, **kwargs)
        return self.adapted_forward(x, active, *args, **kwargs)

    # ---- merge / unmerge (CORE-MERGE-1…10) ----
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        if isinstance(adapter_names, str):
            raise TypeError(f"adapter_names must be a list of names, not the string {adapter_names!r}")
        names = self.applicable(self.active_adapters if adapter_names is None else adapter_names)
        names = list(dict.fromkeys(names))
        pending = [n for n in names if n not in self.merged_adapters]
        if not pending:
            if names:
                warnings.warn("All adapters are already merged, nothing to do.", UserWarning, stacklevel=2)
            return
        if len(pending) < len(names):
            skipped = [n for n in names if n in self.merged_adapters]
            warnings.warn(f"Adapters already merged, skipped: {skipped}", UserWarning, stacklevel=2)
        for name in pending:
            weight, bias = self.merged_tensors(name)
            if safe_merge:
                self._check_finite(name, weight, bias)
            self._write_base(weight, bias)
            self.merged_adapters.append(name)

    def check_safe_merge(self, name: str) -> None:
        """CORE-MERGE-7: raise if merging `name` now would write a non-finite value; changes nothing."""
        self._check_finite(name, *self.merged_tensors(name))

    def _check_finite(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        changed = [weight] if bias is None or bias is self.base_layer.bias else [weight, bias]
        if not all(torch.isfinite(t).all() for t in changed):
            raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")

    def unmerge(self) -> None:
        """Revert merged adapters last-in-first-out; never writes a non-finite value (raises instead)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", UserWarning, stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters[-1]
            weight, bias = self.unmerged_tensors(name)
            current = [(weight, self.base_weight()), (bias, self.base_layer.bias)]
            for new, old in current:
                if new is not None and introduces_non_finite(new, old):
                    raise ValueError(f"Unmerging adapter {name!r} would write non-finite values; it stays merged.")
            self._write_base(weight, bias)
            self.merged_adapters.pop()

    def _write_base(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Update the base parameters in place (same Parameter objects, dtype and device)."""
        with torch.no_grad():
            stored = self.base_layer.weight
            stored.copy_(stored_layout(weight, self.kind))
            if bias is not None and bias is not self.base_layer.bias:
                self.base_layer.bias.copy_(bias)


class AdditiveLayer(TunerLayer):
    """Tuners whose effective weight is `W + Σ_a ΔW_a` (Bone/MiSS plain, GraLoRA, LoHa)."""

    def delta_weight(self, name: str) -> torch.Tensor:
        """ΔW of `name` in logical orientation and the adapter dtype."""
        raise NotImplementedError

    def delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The adapter path's output for `x` (already in the adapter dtype)."""
        raise NotImplementedError

    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        for name in active:
            delta = self.delta_output(x.to(self.adapter_dtype(name)), name)
            result = result + delta.to(result.dtype)
        return result

    def merged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        weight = self.base_weight()
        return (weight + self.delta_weight(name)).to(weight.dtype), None  # one rounding, in the wider dtype

    def unmerged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        weight = self.base_weight()
        return (weight - self.delta_weight(name)).to(weight.dtype), None
