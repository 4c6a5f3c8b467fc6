"""PEFT's checkpoint format: `adapter_config.json` + `adapter_model.safetensors|bin` (SPEC §1.12)."""

from __future__ import annotations

import os
import warnings

import torch
from safetensors.torch import load_file, save_file

from .tuner_model import TunerModel

KEY_PREFIX = "base_model.model."
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"


def adapter_tensors(tuner_model: TunerModel, name: str) -> dict[str, torch.Tensor]:
    """The live tensors of adapter `name` under their saved keys (CORE-SAVE-2/3)."""
    out: dict[str, torch.Tensor] = {}
    for key, layer in tuner_model.tuner_layers():
        if name in layer.settings:
            out.update({f"{key}.{p}": t for p, t in layer.adapter_parameters(name).items()})
    out.update(tuner_model.bias_parameters(name))
    for key, wrapper in tuner_model.wrappers():
        if name in wrapper.modules_to_save:
            out.update({f"{key}.{p}": t for p, t in wrapper.modules_to_save[name].state_dict(keep_vars=True).items()})
    return {KEY_PREFIX + k: t for k, t in out.items()}


def adapter_state_dict(tuner_model: TunerModel, name: str) -> dict[str, torch.Tensor]:
    """Contiguous, unshared copies of `name`'s tensors (CORE-SAVE-9)."""
    return {k: t.detach().clone().contiguous() for k, t in adapter_tensors(tuner_model, name).items()}


def load_state_dict_into(tuner_model: TunerModel, name: str, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a saved state dict into adapter `name`: shapes are checked before anything is written;
    missing and unexpected keys warn, listing them (CORE-SAVE-6)."""
    live = adapter_tensors(tuner_model, name)
    found = [k for k in live if k in state_dict]
    if live and not found:
        sample = sorted(state_dict)[:3]
        raise ValueError(
            f"The checkpoint holds none of adapter {name!r}'s tensors (expected e.g. {sorted(live)[0]!r}, "
            f"found {sample}); was it saved for another tuner or model?"
        )
    for key in found:
        if tuple(state_dict[key].shape) != tuple(live[key].shape):
            raise ValueError(
                f"Size mismatch for {key}: the checkpoint has shape {tuple(state_dict[key].shape)}, "
                f"the model expects {tuple(live[key].shape)}."
            )
    with torch.no_grad():
        for key in found:
            live[key].copy_(state_dict[key])
    missing = sorted(set(live) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(live))
    if missing:
        warnings.warn(f"Missing adapter keys while loading {name!r}: {missing}", UserWarning, stacklevel=3)
    if unexpected:
        warnings.warn(
            f"Unexpected keys in the checkpoint of {name!r}, not loaded: {unexpected}", UserWarning, stacklevel=3
        )


def write_weights(state_dict: dict[str, torch.Tensor], directory: str, safe_serialization: bool) -> None:
    os.makedirs(directory, exist_ok=True)
    if safe_serialization:
        save_file(state_dict, os.path.join(directory, SAFETENSORS_NAME), metadata={"format": "pt"})
    else:
        torch.save(state_dict, os.path.join(directory, BIN_NAME))


def read_weights(directory: str) -> dict[str, torch.Tensor]:
    safetensors_path = os.path.join(directory, SAFETENSORS_NAME)
    if os.path.isfile(safetensors_path):
        return load_file(safetensors_path)
    bin_path = os.path.join(directory, BIN_NAME)
    if os.path.isfile(bin_path):
        return torch.load(bin_path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"No {SAFETENSORS_NAME} or {BIN_NAME} in {directory!r}")
