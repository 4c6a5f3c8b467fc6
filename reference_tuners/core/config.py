"""Config base class: PEFT's base fields, validation helpers and the JSON form (SPEC §1.2)."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._version import __version__
from .defaults import LORA_STYLE_TARGETS

CONFIG_NAME = "adapter_config.json"
TASK_TYPES = frozenset({"SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"})
# Written into `peft_version` when the caller leaves it None: the PEFT checkpoint format we follow,
# tagged as ours (a valid PEP 440 version).
PEFT_FORMAT_VERSION = f"0.21.2+tunerspec.{__version__}"

_CONFIG_CLASSES: dict[str, type[PeftConfig]] = {}


@dataclass
class PeftConfig:
    """Base fields every config has (CORE-CFG-1); subclasses add their tuner's table."""

    PEFT_TYPE: ClassVar[str] = ""
    # Fields stored as sets when given as lists (CORE-CFG-3).
    SET_FIELDS: ClassVar[tuple[str, ...]] = ("target_modules", "exclude_modules")

    task_type: str | None = None
    peft_type: str = field(init=False, default="")
    auto_mapping: dict | None = None
    peft_version: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    inference_mode: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.PEFT_TYPE:
            _CONFIG_CLASSES[cls.PEFT_TYPE] = cls

    def __post_init__(self) -> None:
        self.peft_type = self.PEFT_TYPE
        if self.peft_version is None:
            self.peft_version = PEFT_FORMAT_VERSION
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise ValueError(f"Invalid task_type {self.task_type!r}: use None or one of {sorted(TASK_TYPES)}.")
        for name in self.SET_FIELDS:
            value = getattr(self, name, None)
            if isinstance(value, (list, tuple)):
                setattr(self, name, set(value))

    # Default `target_modules` per model type (SPEC §1.4 table (a); IA3 overrides).
    DEFAULT_TARGETS: ClassVar[dict[str, list[str] | str]] = LORA_STYLE_TARGETS

    def resolve_defaults(self, model_type: str | None) -> None:
        """Fill `target_modules=None` from the default table (CORE-MATCH-11, CORE-DEF-1)."""
        if self.target_modules is None:
            if model_type not in self.DEFAULT_TARGETS:
                raise ValueError(
                    f"No default target_modules for model type {model_type!r}: please specify `target_modules`."
                )
            row = self.DEFAULT_TARGETS[model_type]
            self.target_modules = row if isinstance(row, str) else set(row)

    # ---- JSON form (CORE-CFG-7/8/9, CORE-SAVE-4) ----
    def to_dict(self) -> dict[str, Any]:
        """Every field; sets become sorted lists."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = sorted(value) if isinstance(value, set) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeftConfig:
        """Build the config `data["peft_type"]` names (or `cls` itself); unknown keys warn and are ignored."""
        data = dict(data)
        peft_type = data.pop("peft_type", None)
        peft_type = cls.PEFT_TYPE if peft_type is None else peft_type  # absent → the class's own; "" is invalid
        target_cls = config_class(peft_type) if cls is PeftConfig else cls
        if peft_type != target_cls.PEFT_TYPE:
            raise ValueError(f"peft_type {peft_type!r} does not match {target_cls.__name__}")
        known = {f.name for f in dataclasses.fields(target_cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(
                f"Ignoring keys unknown to {target_cls.__name__}: {', '.join(unknown)}", UserWarning, stacklevel=2
            )
        return target_cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_peft_type(cls, **kwargs: Any) -> PeftConfig:
        """PEFT's name for `from_dict(kwargs)`."""
        return cls.from_dict(kwargs)

    def to_json_string(self) -> str:
        # Top-level keys sorted; nested dicts keep their order (rank_pattern's first match depends on it).
        return json.dumps(dict(sorted(self.to_dict().items())), indent=2)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as fh:
            fh.write(self.to_json_string() + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> PeftConfig:
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No {CONFIG_NAME} in {os.fspath(directory)!r}")
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


def config_class(peft_type: str) -> type[PeftConfig]:
    """The config class of a `peft_type` string (CORE-CFG-9)."""
    if not isinstance(peft_type, str) or peft_type not in _CONFIG_CLASSES:  # a list would raise TypeError
        known = ", ".join(sorted(_CONFIG_CLASSES))
        raise ValueError(f"Unknown peft_type {peft_type!r}; known types: {known}")
    return _CONFIG_CLASSES[peft_type]


# ---- shared validation rules ----
def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def check_probability(name: str, value: float) -> None:
    """CORE-CFG-6."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1], got {value!r}")


def check_layer_filters(config: PeftConfig, *, pattern_needs_layers: bool) -> None:
    """CORE-CFG-5 (and, where `pattern_needs_layers`, HRA-CFG-2/LOHA-CFG-2)."""
    target = getattr(config, "target_modules", None)
    layers = getattr(config, "layers_to_transform", None)
    pattern = getattr(config, "layers_pattern", None)
    if isinstance(target, str) and layers is not None:
        raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str.")
    if isinstance(target, str) and pattern is not None:
        raise ValueError("`layers_pattern` cannot be used when `target_modules` is a str.")
    if pattern_needs_layers and pattern and layers is None:
        raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")


def check_bias(config: PeftConfig) -> None:
    """CORE-BIAS-1: 'none', 'all' or '<anything>_only'."""
    bias = getattr(config, "bias", "none")
    if not (bias in ("none", "all") or (isinstance(bias, str) and bias.endswith("_only"))):
        raise NotImplementedError(f"Requested bias: {bias!r}, is not implemented (use 'none', 'all' or '*_only').")
