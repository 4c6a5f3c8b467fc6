"""CORE-CFG-1…9: the config base class and its JSON form, through IA3Config."""

from __future__ import annotations

import dataclasses
import json
import warnings
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference_tuners import IA3Config, PeftConfig
from reference_tuners.core.config import CONFIG_NAME, check_layer_filters, check_probability, config_class

BASE_FIELDS = {
    "task_type": None,
    "auto_mapping": None,
    "base_model_name_or_path": None,
    "revision": None,
    "inference_mode": False,
}
IA3_FIELDS = {
    "target_modules": None,
    "exclude_modules": None,
    "feedforward_modules": None,
    "fan_in_fan_out": False,
    "modules_to_save": None,
    "init_ia3_weights": True,
}
TASK_TYPES = ["SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"]


def test_base_fields_and_defaults():
    """CORE-CFG-1 (and IA3-CFG-1's table)."""
    config = IA3Config()
    names = {f.name for f in dataclasses.fields(config)}
    assert names == set(BASE_FIELDS) | set(IA3_FIELDS) | {"peft_type", "peft_version"}
    for name, default in {**BASE_FIELDS, **IA3_FIELDS}.items():
        assert getattr(config, name) == default, name
    assert config.peft_type == "IA3"
    assert isinstance(config.peft_version, str) and config.peft_version
    assert IA3Config(peft_version="0.1.0").peft_version == "0.1.0"
    with pytest.raises(TypeError):
        IA3Config(peft_type="LOHA")  # fixed by the class


@pytest.mark.parametrize("task_type", [*TASK_TYPES, None])
def test_task_type_accepted(task_type):
    assert IA3Config(task_type=task_type).task_type == task_type


@pytest.mark.parametrize("task_type", ["causal_lm", "CAUSAL-LM", "", "IMAGE_CLS", "LORA"])
def test_task_type_rejected_at_construction(task_type):
    """CORE-CFG-2."""
    with pytest.raises(ValueError, match="task_type"):
        IA3Config(task_type=task_type)


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules", "feedforward_modules"])
def test_lists_stored_as_sets_strings_kept(field):
    """CORE-CFG-3; JSON writes a set as a list and reads it back as an equal set."""
    kwargs = {"target_modules": ["a", "b", "a"]} if field == "feedforward_modules" else {}
    config = IA3Config(**{**kwargs, field: ["b", "a", "b"]})
    assert getattr(config, field) == {"a", "b"}
    data = json.loads(config.to_json_string())
    assert isinstance(data[field], list) and sorted(data[field]) == ["a", "b"]
    assert getattr(PeftConfig.from_dict(data), field) == {"a", "b"}
    assert getattr(IA3Config(**{field: r".*\.q"}), field) == r".*\.q"
    assert getattr(IA3Config(**{**kwargs, field: ("a",)}), field) == {"a"}


def test_validation_error_is_value_error_at_construction():
    """CORE-CFG-4 through IA3-CFG-2 (a config-only error raised at construction)."""
    with pytest.raises(ValueError, match="feedforward_modules"):
        IA3Config(target_modules=["q"], feedforward_modules=["k"])
    IA3Config(target_modules="q", feedforward_modules=["k"])  # no check with a string


def test_layer_filter_helper():
    """CORE-CFG-5 / CORE-MATCH-8 helper (IA3 has no layers_* fields; the rule is shared core code)."""
    ok = SimpleNamespace(target_modules={"q"}, layers_to_transform=[0], layers_pattern="layers")
    check_layer_filters(ok, pattern_needs_layers=True)
    for field, value in (("layers_to_transform", 1), ("layers_to_transform", []), ("layers_pattern", "h")):
        config = SimpleNamespace(target_modules=r".*q", layers_to_transform=None, layers_pattern=None)
        setattr(config, field, value)
        with pytest.raises(ValueError, match=field):
            check_layer_filters(config, pattern_needs_layers=False)
    pattern_only = SimpleNamespace(target_modules={"q"}, layers_to_transform=None, layers_pattern="layers")
    check_layer_filters(pattern_only, pattern_needs_layers=False)  # Bone, MiSS, GraLoRA: ignored
    with pytest.raises(ValueError, match="layers_to_transform"):
        check_layer_filters(pattern_only, pattern_needs_layers=True)  # HRA, LoHa: rejected


@pytest.mark.parametrize("value", [-0.01, 1.0001, float("nan"), float("inf")])
def test_probability_helper_rejects(value):
    """CORE-CFG-6 helper."""
    with pytest.raises(ValueError, match="p_field"):
        check_probability("p_field", value)


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_probability_helper_accepts(value):
    check_probability("p_field", value)


_names = st.lists(st.sampled_from(["q", "k", "v", "o_proj", "mlp.fc", "a.b.c"]), max_size=4, unique=True)
_module_field = st.one_of(st.none(), st.sampled_from([r".*\.q", "q|k"]), _names)


@st.composite
def ia3_configs(draw) -> IA3Config:
    targets = draw(_module_field, label="target_modules")
    feedforward = draw(_module_field, label="feedforward_modules")
    if isinstance(targets, list) and isinstance(feedforward, list):
        feedforward = [f for f in feedforward if f in targets]
    return IA3Config(
        task_type=draw(st.sampled_from([None, *TASK_TYPES]), label="task_type"),
        inference_mode=draw(st.booleans(), label="inference_mode"),
        base_model_name_or_path=draw(st.sampled_from([None, "org/model"]), label="base_model_name_or_path"),
        revision=draw(st.sampled_from([None, "main"]), label="revision"),
        auto_mapping=draw(st.sampled_from([None, {"base_model_class": "X", "parent_library": "m"}])),
        target_modules=targets,
        exclude_modules=draw(_module_field, label="exclude_modules"),
        feedforward_modules=feedforward,
        fan_in_fan_out=draw(st.booleans(), label="fan_in_fan_out"),
        modules_to_save=draw(st.one_of(st.none(), _names), label="modules_to_save"),
        init_ia3_weights=draw(st.booleans(), label="init_ia3_weights"),
    )


def _normalised(data: dict) -> dict:
    return {k: sorted(v) if k.endswith("_modules") and isinstance(v, list) else v for k, v in data.items()}


@given(config=ia3_configs())
def test_json_round_trip(config):
    """CORE-CFG-7: JSON holds the table + base fields; JSON → config → JSON is equal (sets up to order)."""
    data = json.loads(config.to_json_string())
    assert set(data) == set(BASE_FIELDS) | set(IA3_FIELDS) | {"peft_type", "peft_version"}
    assert data["peft_type"] == "IA3"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = PeftConfig.from_dict(json.loads(json.dumps(data)))
    assert type(again) is IA3Config
    assert _normalised(json.loads(again.to_json_string())) == _normalised(data)
    assert again == config


def test_unknown_keys_warn_naming_them():
    """CORE-CFG-8."""
    data = IA3Config(target_modules=["q"], feedforward_modules=[]).to_dict()
    data.update({"lora_alpha": 8, "use_dora": False})
    with pytest.warns(UserWarning) as record:
        config = PeftConfig.from_dict(data)
    text = " ".join(str(w.message) for w in record)
    assert "lora_alpha" in text and "use_dora" in text
    assert config.target_modules == {"q"} and not hasattr(config, "lora_alpha")


def test_missing_keys_take_defaults():
    """CORE-CFG-8: an old file without `peft_version` (or most fields) loads."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = PeftConfig.from_dict({"peft_type": "IA3", "target_modules": ["q"]})
    assert isinstance(config, IA3Config)
    assert config.target_modules == {"q"}
    assert config.peft_version and config.feedforward_modules is None and config.init_ia3_weights is True


def test_peft_type_selects_class_and_unknown_rejected(tmp_path):
    """CORE-CFG-9, PeftConfig.from_pretrained."""
    assert config_class("IA3") is IA3Config
    IA3Config(target_modules=["k"], feedforward_modules=["k"]).save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is IA3Config and loaded.feedforward_modules == {"k"}
    assert type(IA3Config.from_pretrained(tmp_path)) is IA3Config
    for bad in ("NOT_A_TUNER", "LORA", "ia3", ["IA3"]):
        with pytest.raises((ValueError, KeyError), match=str(bad).replace("[", r"\[")):
            PeftConfig.from_dict({"peft_type": bad})
    with pytest.raises(ValueError, match="peft_type ''"):  # an empty type is not "absent"
        IA3Config.from_dict({"peft_type": ""})
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**data, "peft_type": "BOGUS_TYPE"}))
    with pytest.raises((ValueError, KeyError), match="BOGUS_TYPE"):
        PeftConfig.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        PeftConfig.from_pretrained(tmp_path / "nowhere")
