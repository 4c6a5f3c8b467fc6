"""The tuner registry: `peft_type` → config class, layer class and key prefix."""

from __future__ import annotations

from dataclasses import dataclass

from .config import PeftConfig
from .layer import TunerLayer


@dataclass(frozen=True)
class Tuner:
    peft_type: str
    prefix: str
    config_cls: type[PeftConfig]
    layer_cls: type[TunerLayer]


_TUNERS: dict[str, Tuner] = {}


def register(config_cls: type[PeftConfig], layer_cls: type[TunerLayer], prefix: str) -> None:
    _TUNERS[config_cls.PEFT_TYPE] = Tuner(config_cls.PEFT_TYPE, prefix, config_cls, layer_cls)


def tuner_of(config: PeftConfig) -> Tuner:
    try:
        return _TUNERS[config.peft_type]
    except KeyError:
        raise ValueError(f"No tuner registered for peft_type {config.peft_type!r}") from None
