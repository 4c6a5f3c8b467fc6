"""`modules_to_save`: a frozen original plus one trainable copy per owning adapter (CORE-MTS-1/2)."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn


class ModulesToSaveWrapper(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.disable_adapters = False
        module.requires_grad_(False)

    def add_adapter(self, name: str) -> None:
        self.modules_to_save[name] = copy.deepcopy(self.original_module)

    def owner(self, active: list[str]) -> str | None:
        """The active adapter owning a copy; two owners active at once is an error."""
        owners = [n for n in active if n in self.modules_to_save]
        if len(owners) > 1:
            raise ValueError(f"Adapters {owners} each own a copy of this modules_to_save module; activate one.")
        return owners[0] if owners else None

    def set_active(self, active: list[str]) -> None:
        self.owner(active)
        self.active_adapters = list(active)

    def set_requires_grad(self, name: str, flag: bool) -> None:
        if name in self.modules_to_save:
            self.modules_to_save[name].requires_grad_(flag)

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]  # ModuleDict.pop takes no default
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def active_module(self) -> nn.Module:
        owner = None if self.disable_adapters else self.owner(self.active_adapters)
        return self.original_module if owner is None else self.modules_to_save[owner]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.active_module()(*args, **kwargs)
