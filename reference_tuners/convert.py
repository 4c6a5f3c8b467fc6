"""Convert saved adapter directories between Bone and MiSS, the same method under two names (SPEC §2.9):
Bone → MiSS (MISS-CONV-1) and MiSS → Bone (MISS-CONV-2, the optional capability `miss.to_bone`)."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

from .core.checkpoint import BIN_NAME, SAFETENSORS_NAME, read_weights, write_weights
from .core.config import CONFIG_NAME

_BLOCK = {"BONE": "bone_block", "MISS": "miss_block"}
_SOURCE = {"MISS": "BONE", "BONE": "MISS"}


def convert_checkpoint(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, to: str = "MISS") -> None:
    """Write `src_dir`'s adapter (`adapter_config.json` and `adapter_model.safetensors` or `.bin`) to `dst_dir`
    as the other tuner: every tensor key `<module>.bone_block` becomes `<module>.miss_block` (or back), other keys
    (biases, `modules_to_save` copies) stay; the tensors are copied unchanged, in the source's file format.

    `to="MISS"` (MISS-CONV-1): `peft_type` "MISS", every other field kept, `miss_dropout: 0.0` and `mini_r: 1`
    added. `to="BONE"` (MISS-CONV-2): `peft_type` "BONE", `mini_r` and `miss_dropout` dropped (a warning when a
    training-time `miss_dropout > 0` is lost); `init_weights="mini"` has no Bone form and raises ValueError.
    Everything is checked before `dst_dir` is written.
    """
    if to not in _SOURCE:
        raise ValueError(f"convert_checkpoint: `to` must be 'MISS' or 'BONE', got {to!r}.")
    source = _SOURCE[to]
    src_dir, dst_dir = os.fspath(src_dir), os.fspath(dst_dir)
    config_path = os.path.join(src_dir, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"No {CONFIG_NAME} in {src_dir!r}")
    with open(config_path, encoding="utf-8") as fh:
        config: dict[str, Any] = json.load(fh)
    if config.get("peft_type") != source:
        raise ValueError(
            f"convert_checkpoint(to={to!r}) needs a {source} checkpoint, but {config_path!r} has "
            f"peft_type {config.get('peft_type')!r}."
        )
    if to == "BONE" and config.get("init_weights") == "mini":
        raise ValueError(
            "A MiSS adapter with init_weights='mini' has no Bone equivalent; convert_checkpoint(to='BONE') "
            "needs init_weights True, False or 'bat'."
        )
    weights = read_weights(src_dir)
    safetensors = os.path.isfile(os.path.join(src_dir, SAFETENSORS_NAME))
    other = os.path.join(dst_dir, BIN_NAME if safetensors else SAFETENSORS_NAME)
    if os.path.isfile(other):
        raise FileExistsError(
            f"{other!r} exists beside the converted weights and loaders would read the wrong file; "
            "remove it or choose another `dst_dir`."
        )
    if to == "MISS":
        config.update(miss_dropout=0.0, mini_r=1)
    else:
        config.pop("mini_r", None)
        dropout = config.pop("miss_dropout", 0.0)
        if dropout:
            warnings.warn(
                f"Bone has no dropout: the training-time miss_dropout={dropout} is dropped in the Bone checkpoint.",
                UserWarning,
                stacklevel=2,
            )
    config["peft_type"] = to
    old, new = "." + _BLOCK[source], "." + _BLOCK[to]
    renamed = {(k.removesuffix(old) + new if k.endswith(old) else k): t for k, t in weights.items()}
    os.makedirs(dst_dir, exist_ok=True)
    write_weights(renamed, dst_dir, safe_serialization=safetensors)
    with open(os.path.join(dst_dir, CONFIG_NAME), "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
        fh.write("\n")
