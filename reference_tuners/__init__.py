"""Reference implementation of the Bone/MiSS, GraLoRA, HRA, IA3 and LoHa tuners with PEFT's API
and checkpoint format. SPEC.md is the contract; each module cites the clauses it implements."""

from ._version import __version__
from .bone import BoneConfig, BoneLayer, MissConfig, MissLayer
from .convert import convert_checkpoint
from .core.config import PeftConfig
from .core.layer import TunerLayer
from .core.peft_model import PeftModel, get_peft_model
from .gralora import GraLoRAConfig, GraLoRALayer
from .hra import HRAConfig, HRALayer
from .ia3 import IA3Config, IA3Layer
from .loha import LoHaConfig, LoHaLayer

__all__ = [
    "BoneConfig",
    "BoneLayer",
    "GraLoRAConfig",
    "GraLoRALayer",
    "HRAConfig",
    "HRALayer",
    "IA3Config",
    "IA3Layer",
    "LoHaConfig",
    "LoHaLayer",
    "MissConfig",
    "MissLayer",
    "PeftConfig",
    "PeftModel",
    "TunerLayer",
    "__version__",
    "convert_checkpoint",
    "get_peft_model",
]
