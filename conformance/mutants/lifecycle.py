"""Lifecycle and `bias` mutants (SPEC §1.7 CORE-LIFE-3, CORE-BIAS-1/3): a check of `add_adapter` or of the `bias`
option misread."""

from __future__ import annotations

import copy
from typing import Any

from reference_tuners.core import tuner_model
from reference_tuners.core.config import PeftConfig

from .base import MutantDriver

_reference_check_bias = tuner_model.check_bias


class _ExistingNameReplaced:
    def inject_adapter(self, config: PeftConfig, name: str, **kwargs: Any) -> None:
        if name in self.peft_config:
            self.delete_adapter(name)  # a dict-like overwrite where a rejection belongs
        super().inject_adapter(config, name, **kwargs)


class ExistingNameReplaced(MutantDriver):
    """add_adapter with an existing name replaces that adapter (deleted, then added) instead of raising ValueError."""

    model_mixin = _ExistingNameReplaced


def _invalid_bias_value_error(config: PeftConfig) -> None:
    try:
        _reference_check_bias(config)
    except NotImplementedError as exc:
        raise ValueError(str(exc)) from None


class InvalidBiasValueError(MutantDriver):
    """An invalid bias value raises ValueError, like the other config checks, instead of NotImplementedError."""

    patches = ((tuner_model, "check_bias", _invalid_bias_value_error),)


class _BiasCheckedOnFirstAdapter:
    def inject_adapter(self, config: PeftConfig, name: str, **kwargs: Any) -> None:
        bias = getattr(config, "bias", "none")
        if not self.peft_config or bias == "none":
            return super().inject_adapter(config, name, **kwargs)
        unchecked = copy.copy(config)
        unchecked.bias = "none"  # the one-adapter-with-bias rule sees "none" and lets it through
        super().inject_adapter(unchecked, name, **kwargs)
        self.peft_config[name].bias = bias


class BiasCheckedOnFirstAdapter(MutantDriver):
    """Only get_peft_model's adapter is checked for bias: add_adapter accepts a second adapter with bias != "none"."""

    model_mixin = _BiasCheckedOnFirstAdapter
