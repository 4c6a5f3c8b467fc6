"""The tuner registry: `peft_type` → config class, layer class and key prefix."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import PeftConfig
from .layer import TunerLayer


@dataclass(frozen=True)
class Tuner:
    peft_type: str
    prefix: str
    config_cls: type[PeftConfig]
    layer_cls: type[TunerLayer]
    # Tuner-specific model-level operations, `op(tuner_model, *args)`, reached as methods of the
    # model (e.g. IA3's `add_weighted_adapter`).
    model_ops: dict[str, Callable[..., Any]] = field(default_factory=dict)


_TUNERS: dict[str, Tuner] = {}


def register(
    config_cls: type[PeftConfig],
    layer_cls: type[TunerLayer],
    prefix: str,
    model_ops: Mapping[str, Callable[..., Any]] | None = None,
) -> None:
    ops = dict(model_ops or {})
    _TUNERS[config_cls.PEFT_TYPE] = Tuner(config_cls.PEFT_TYPE, prefix, config_cls, layer_cls, ops)


def tuner_of(config: PeftConfig) -> Tuner:
    try:
        return _TUNERS[config.peft_type]
    except KeyError:
        raise ValueError(f"No tuner registered for peft_type {config.peft_type!r}") from None
