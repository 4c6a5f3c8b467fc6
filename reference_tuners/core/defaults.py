"""Default target modules per `model.config.model_type` (SPEC §1.4, facts of peft's constants)."""

from __future__ import annotations

_Q_V = ["q_proj", "v_proj"]

# (a) Bone, MiSS, GraLoRA, HRA, LoHa — copies of PEFT's LoRA table.
LORA_STYLE_TARGETS: dict[str, list[str]] = {
    "llama": _Q_V,
    "mistral": _Q_V,
    "mixtral": _Q_V,
    "opt": _Q_V,
    "bart": _Q_V,
    "qwen2": _Q_V,
    "qwen3": _Q_V,
    "gemma": _Q_V,
    "gemma2": _Q_V,
    "gemma3_text": _Q_V,
    "gpt2": ["c_attn"],
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "bloom": ["query_key_value"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "phi": ["q_proj", "v_proj", "fc1", "fc2"],
}

# (b) IA3: (targets, feedforward).
IA3_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "mixtral": (["k_proj", "v_proj", "w2"], ["w2"]),
    "qwen2": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen3": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gemma": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gemma2": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gemma3_text": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "t5": (["k", "v", "wo"], ["wo"]),
    "mt5": (["k", "v", "wi_1"], []),
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    "opt": (["q_proj", "k_proj", "fc2"], ["fc2"]),
    "bart": (["q_proj", "v_proj", "fc2"], ["fc2"]),
    "bloom": (["query_key_value", "mlp.dense_4h_to_h"], ["mlp.dense_4h_to_h"]),
    "gpt_neox": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "falcon": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
}


def model_type(model) -> str | None:
    """`model.config.model_type`, or None for a model without one (every plain torch module)."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) if config is not None else None
