"""`PeftModel` and `get_peft_model`: PEFT's user-facing wrapper, files included (SPEC §1.1, §1.12)."""

from __future__ import annotations

import copy
import os
from typing import Any

from torch import nn

from .checkpoint import adapter_state_dict, load_state_dict_into, read_weights, write_weights
from .config import PeftConfig
from .tuner_model import TunerModel, count_parameters


class PeftModel(nn.Module):
    """Wraps a model as `base_model.model`; lifecycle calls (`merge_adapter`, `disable_adapter`,
    `merge_and_unload`, …) are those of `TunerModel`, reached through attribute delegation as in PEFT."""

    def __init__(
        self,
        model: nn.Module,
        peft_config: PeftConfig,
        adapter_name: str = "default",
        autocast_adapter_dtype: bool = True,
    ) -> None:
        super().__init__()
        self.base_model = TunerModel(model, peft_config, adapter_name, autocast_adapter_dtype)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def get_base_model(self) -> nn.Module:
        return self.base_model.model

    def add_adapter(self, adapter_name: str, peft_config: PeftConfig, autocast_adapter_dtype: bool = True) -> None:
        """CORE-LIFE-2: inject without activating; the new parameters start frozen."""
        self.base_model.inject_adapter(peft_config, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)

    # ---- counts ----
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        return count_parameters(self)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        share = 100 * trainable / total if total else 0.0
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}")

    # ---- files ----
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        selected_adapters: list[str] | None = None,
        safe_serialization: bool = True,
    ) -> None:
        """`default` goes to `save_directory`, every other adapter to `save_directory/<name>` (CORE-SAVE-1)."""
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"Cannot save unknown adapter(s) {unknown}; known: {list(self.peft_config)}")
        for name in names:
            directory = os.fspath(save_directory) if name == "default" else os.path.join(save_directory, name)
            write_weights(adapter_state_dict(self.base_model, name), directory, safe_serialization)
            self._saved_config(name).save_pretrained(directory)

    def _saved_config(self, name: str) -> PeftConfig:
        """CORE-SAVE-4: inference mode on; `auto_mapping` names the base class when task_type is None."""
        config = copy.deepcopy(self.peft_config[name])
        config.inference_mode = True
        if config.task_type is None:
            base_cls = type(self.get_base_model())
            config.auto_mapping = {"base_model_class": base_cls.__name__, "parent_library": base_cls.__module__}
        return config

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        autocast_adapter_dtype: bool = True,
    ) -> PeftModel:
        """CORE-SAVE-5/7: load a saved adapter into a fresh base model."""
        config = _load_config(model_id, is_trainable)
        weights = read_weights(os.fspath(model_id))
        peft_model = cls(model, config, adapter_name, autocast_adapter_dtype)
        try:
            load_state_dict_into(peft_model.base_model, adapter_name, weights)
        except Exception:
            peft_model.base_model.unload()  # hand the caller's model back as it was
            raise
        return peft_model

    def load_adapter(
        self,
        model_id: str | os.PathLike,
        adapter_name: str,
        is_trainable: bool = False,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        """CORE-SAVE-8: add the saved adapter under `adapter_name`, not active."""
        config = _load_config(model_id, is_trainable)
        weights = read_weights(os.fspath(model_id))
        self.add_adapter(adapter_name, config, autocast_adapter_dtype)
        try:
            load_state_dict_into(self.base_model, adapter_name, weights)
        except Exception:
            self.delete_adapter(adapter_name)
            raise


def _load_config(model_id: str | os.PathLike, is_trainable: bool) -> PeftConfig:
    config = PeftConfig.from_pretrained(model_id)
    config.inference_mode = not is_trainable
    return config


def get_peft_model(
    model: nn.Module,
    peft_config: PeftConfig,
    adapter_name: str = "default",
    autocast_adapter_dtype: bool = True,
) -> PeftModel:
    """Wrap `model`, inject one adapter and make it the only active one (CORE-LIFE-1)."""
    return PeftModel(model, peft_config, adapter_name, autocast_adapter_dtype)
