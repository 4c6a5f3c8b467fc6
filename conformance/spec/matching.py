"""SPEC §1.3's matching rules and §1.4's default target tables, written for the suite from SPEC's text (the judge's
copy: nothing here is imported from any implementation).

`targeted(key, config)` says whether a module key is adapted under CORE-MATCH-1…4, 6, 7 (the `"all-linear"` and
`None` targets are resolved by the caller: they need the model, CORE-MATCH-5/11). `DEFAULT_TABLES` holds §1.4's
required rows per tuner and, for CORE-DEF-1's SHOULD part, the further rows of upstream PEFT (0.21.x,
`src/peft/utils/constants.py`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ALL_LINEAR = "all-linear"
_INDEX = re.compile(r"[0-9]+")  # an all-digit segment (ASCII digits: what `int()` reads as a layer index)


def matches(rule: str | Iterable[str], key: str) -> bool:
    """CORE-MATCH-1/2 (and IA3-CFG-4): a string is a full regex match; a collection matches a key equal to
    an entry or ending in "." + entry."""
    if isinstance(rule, str):
        return re.fullmatch(rule, key) is not None
    return any(key == entry or key.endswith("." + entry) for entry in rule)


def is_all_linear(target: object) -> bool:
    """CORE-MATCH-5: the string `"all-linear"`, in any case."""
    return isinstance(target, str) and target.lower() == ALL_LINEAR


def in_modules_to_save(key: str, modules_to_save: Iterable[str] | None) -> bool:
    """CORE-MATCH-4: an entry `m` occurs in `key` as whole segments — `key = m`, or `key` starts with `m.`, ends
    with `.m` or contains `.m.`."""
    return any(
        key == m or key.startswith(m + ".") or key.endswith("." + m) or f".{m}." in key for m in modules_to_save or ()
    )


def layer_index(key: str, layers_pattern: str | Iterable[str] | None = None) -> int | None:
    """CORE-MATCH-7: without `layers_pattern`, the first all-digit segment with at least two segments before it and
    one after it; with patterns (a string, or a list tried in order; each a regex matched against one whole
    segment), the all-digit segment right after the first segment matching the pattern, with a segment after it.
    None: no index."""
    segments = key.split(".")
    if layers_pattern is None:
        for i, segment in enumerate(segments):
            if _INDEX.fullmatch(segment) and 2 <= i <= len(segments) - 2:
                return int(segment)
        return None
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern)
    for pattern in patterns:
        first = next((i for i, segment in enumerate(segments) if re.fullmatch(pattern, segment)), None)
        if first is not None and first + 2 <= len(segments) - 1 and _INDEX.fullmatch(segments[first + 1]):
            return int(segments[first + 1])
    return None


def targeted(key: str, config: Mapping) -> bool:
    """Whether SPEC §1.3 adapts the module `key` under a canonical config whose `target_modules` is a regex string
    or a list/set (not None, not `"all-linear"`): CORE-MATCH-4 (modules_to_save), CORE-MATCH-3 (exclude_modules,
    first), CORE-MATCH-1 (string: full match), CORE-MATCH-2 (list: exact or dot-suffix), CORE-MATCH-6/7
    (layers_to_transform filters dot-suffix matches by layer index; exact matches are not filtered)."""
    if in_modules_to_save(key, config.get("modules_to_save")):
        return False
    exclude = config.get("exclude_modules")
    if exclude is not None and matches(exclude, key):
        return False
    target = config["target_modules"]
    if isinstance(target, str):
        return matches(target, key)
    if key in target:
        return True
    if not matches(target, key):
        return False
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    index = layer_index(key, config.get("layers_pattern"))
    wanted = [layers] if isinstance(layers, int) else list(layers)
    return index is not None and index in wanted


def select(keys: Iterable[str], config: Mapping) -> set[str]:
    """The keys `targeted` keeps."""
    return {key for key in keys if targeted(key, config)}


# ---- §1.4 default target modules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DefaultRow:
    """One row of a §1.4 table: the default `target_modules` (a list, or upstream's one regex string) and, for IA3's
    table (b), the default `feedforward_modules` (None for tables without that column)."""

    targets: tuple[str, ...] | str
    feedforward: tuple[str, ...] | None = None

    def target_modules(self) -> list[str] | str:
        return self.targets if isinstance(self.targets, str) else list(self.targets)


@dataclass(frozen=True)
class DefaultTable:
    """§1.4 (a) or (b): `required` rows (MUST, CORE-DEF-1) and `further` rows (upstream's, SHOULD)."""

    name: str
    required: dict[str, DefaultRow]
    further: dict[str, DefaultRow]


def _rows(table: Mapping[str, Iterable[str] | str]) -> dict[str, DefaultRow]:
    return {t: DefaultRow(v if isinstance(v, str) else tuple(v)) for t, v in table.items()}


def _ia3_rows(table: Mapping[str, tuple[Iterable[str], Iterable[str]]]) -> dict[str, DefaultRow]:
    return {t: DefaultRow(tuple(targets), tuple(ff)) for t, (targets, ff) in table.items()}


_QV = ("q_proj", "v_proj")
LORA_STYLE = DefaultTable(
    "1.4(a)",
    required=_rows({
        "llama": _QV, "mistral": _QV, "gpt2": ["c_attn"], "opt": _QV, "t5": ["q", "v"], "mt5": ["q", "v"],
        "bart": _QV, "bert": ["query", "value"], "roberta": ["query", "value"], "qwen2": _QV, "gemma": _QV,
        "bloom": ["query_key_value"], "gpt_neox": ["query_key_value"], "falcon": ["query_key_value"],
        "phi": ["q_proj", "v_proj", "fc1", "fc2"],
    }),
    further=_rows({  # upstream peft 0.21.x TRANSFORMERS_MODELS_TO_{LORA,MISS,GRALORA,HRA,LOHA}_TARGET_MODULES_MAPPING
        "blip-2": ["q", "v", "q_proj", "v_proj"], "gptj": _QV, "gpt_neo": _QV, "xlm-roberta": ["query", "value"],
        "electra": ["query", "value"], "deberta-v2": ["query_proj", "value_proj"], "deberta": ["in_proj"],
        "layoutlm": ["query", "value"], "llama4": _QV, "chatglm": ["query_key_value"], "gpt_bigcode": ["c_attn"],
        "mpt": ["Wqkv"], "RefinedWebModel": ["query_key_value"], "RefinedWeb": ["query_key_value"],
        "btlm": ["c_proj", "c_attn"], "codegen": ["qkv_proj"], "mixtral": _QV, "stablelm": _QV, "gemma2": _QV,
        "gemma3_text": _QV, "gemma4": r".*language_model\..*\.(q_proj|v_proj)", "qwen3": _QV,
        "nemotron_h": ["q_proj", "k_proj", "v_proj", "o_proj"], "rwkv": ["key", "value", "receptance", "output"],
        "rwkv7": ["r_proj", "k_proj", "v_proj", "o_proj", "key", "value"],
    }),
)  # fmt: skip

_DOWN = (["q_proj", "v_proj", "down_proj"], ["down_proj"])
IA3 = DefaultTable(
    "1.4(b)",
    required=_ia3_rows({
        "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
        "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
        "qwen2": _DOWN, "gemma": _DOWN,
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
    }),
    further=_ia3_rows({  # upstream peft 0.21.x TRANSFORMERS_MODELS_TO_IA3_{TARGET,FEEDFORWARD}_MODULES_MAPPING
        "gptj": (["q_proj", "v_proj", "fc_out"], ["fc_out"]),
        "gpt_neo": (["q_proj", "v_proj", "c_proj"], ["c_proj"]),
        "gpt_bigcode": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
        "llama4": _DOWN, "gemma2": _DOWN, "gemma3_text": _DOWN, "qwen3": _DOWN,
        "mixtral": (["k_proj", "v_proj", "w2"], ["w2"]),
        "deberta-v2": (["key_proj", "value_proj", "output.dense"], ["output.dense"]),
        "deberta": (["in_proj", "output.dense"], ["output.dense"]),
        "RefinedWebModel": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
        "RefinedWeb": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
        "phi": (["q_proj", "v_proj", "fc2"], ["fc2"]),
    }),
)  # fmt: skip

# CORE-DEF-1: which table a tuner's `target_modules=None` uses. (Proposed as a `TunerRecord` field.)
DEFAULT_TABLES: dict[str, DefaultTable] = {
    "bone": LORA_STYLE, "miss": LORA_STYLE, "gralora": LORA_STYLE, "hra": LORA_STYLE, "loha": LORA_STYLE, "ia3": IA3,
}  # fmt: skip

# CORE-MATCH-8: `layers_pattern` given with `layers_to_transform=None` is ignored, or rejected with ValueError by the
# tuner's CFG clause (HRA-CFG-2, LOHA-CFG-2). Tuners absent here have no `layers_pattern` field (IA3).
LAYERS_PATTERN_ALONE: dict[str, str] = {
    "bone": "ignore", "miss": "ignore", "gralora": "ignore", "hra": "reject", "loha": "reject",
}  # fmt: skip

# The type SPEC's config table gives `layers_pattern`: `str | None` (Bone, MiSS, GraLoRA) or `list[str] | str | None`
# (HRA, LoHa): only the latter may be given a list (CORE-MATCH-7's "list tried in order").
LAYERS_PATTERN_LISTS: frozenset[str] = frozenset({"hra", "loha"})
