"""CORE-MATCH-1…11, CORE-DEF-1: which modules are adapted.

The rules are checked against `oracle_*` functions written from SPEC §1.3's text (segment lists, not
the implementation's string tricks), through IA3 injection on generated module trees, and — for the
`layers_*` rules, which IA3 lacks — on `reference_tuners.core.matching` directly.
"""

from __future__ import annotations

import re
import warnings
from types import SimpleNamespace

import pytest
import torch
import transformers
from hypothesis import example, given
from hypothesis import strategies as st
from test_core_support import LINEAR_KEYS, adapted, ia3, small_net, tuner_layers
from tiny_models import tiny_gpt2, tiny_llama, tiny_llama_config, tiny_t5
from torch import nn
from transformers.pytorch_utils import Conv1D

from reference_tuners import IA3Config, TunerLayer, get_peft_model
from reference_tuners.core.defaults import IA3_TARGETS, LORA_STYLE_TARGETS
from reference_tuners.core.matching import is_targeted, layer_index


# ---- oracle, from SPEC §1.3 ----
def _digits(segment: str) -> bool:
    return re.fullmatch(r"[0-9]+", segment) is not None


def _rule_matches(rule, key: str) -> bool:
    """CORE-MATCH-1/2: string → re.fullmatch; list → equal, or a dot-boundary suffix (whole segments)."""
    if isinstance(rule, str):
        return re.fullmatch(rule, key) is not None
    segments = key.split(".")
    for entry in rule:
        entry_segments = entry.split(".")
        if len(entry_segments) <= len(segments) and segments[len(segments) - len(entry_segments) :] == entry_segments:
            return True
    return False


def oracle_layer_index(key: str, layers_pattern) -> int | None:
    """CORE-MATCH-7."""
    segments = key.split(".")
    n = len(segments)
    if layers_pattern is None:
        candidates = [i for i, s in enumerate(segments) if _digits(s) and i >= 2 and n - 1 - i >= 1]
        return int(segments[candidates[0]]) if candidates else None
    for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
        first = next((i for i, s in enumerate(segments) if re.fullmatch(pattern, s)), None)
        if first is not None and first + 2 <= n - 1 and _digits(segments[first + 1]):
            return int(segments[first + 1])
    return None


def oracle_targeted(key: str, target, exclude=None, modules_to_save=None, layers=None, pattern=None) -> bool:
    """CORE-MATCH-1…4, 6, 7 for a resolved config."""
    segments = key.split(".")
    for m in modules_to_save or []:
        ms = m.split(".")
        if any(segments[i : i + len(ms)] == ms for i in range(len(segments) - len(ms) + 1)):
            return False
    if exclude and _rule_matches(exclude, key):
        return False
    if not _rule_matches(target, key):
        return False
    if isinstance(target, str) or key in target or layers is None or layers == []:
        return True
    index = oracle_layer_index(key, pattern)
    if index is None:
        return False
    return index == layers if isinstance(layers, int) else index in layers


# ---- CORE-MATCH-7: layer index ----
@pytest.mark.parametrize(
    ("key", "pattern", "expected"),
    [
        ("model.layers.3.mlp.fc", None, 3),  # SPEC's example
        ("model.layers.3.mlp.fc", "layers", 3),
        ("layers.3.q", None, None),  # only one segment before the digits
        ("layers.3.q", "layers", 3),  # P may be the first segment
        ("a.b.3", None, None),  # no segment after
        ("model.layers.3", "layers", None),
        ("a.b.7.c.9.d", None, 7),  # the first one
        ("a.0.b.5.c", None, 5),  # `0` has one segment before it only
        ("m.h.2.h.4.x", "h", 2),
        ("m.h.x.h.4.x", "h", None),  # the first segment matching P has no index after it
        ("m.h.x.blocks.4.x", ["h", "blocks"], 4),  # list: tried in order
        ("m.blocks.1.h.4.x", ["h", "blocks"], 4),
        ("m.blocks.1.h.4.x", ["blocks", "h"], 1),
        ("m.lay.1.x", "layers", None),  # P matches a whole segment only
        ("m.x_layers.1.x", "layers", None),
        ("m.layers.1.x", "lay.*", 1),
        ("m.a.b.1.x", r"a\.b", None),  # one segment
        ("m.layers.01.x", None, 1),
        ("m.layers.-1.x", None, None),
        ("m.layers.1a.x", None, None),
        ("m.layers.².x", None, None),  # not an ASCII digit
        ("m.layers.٣.x", "layers", None),
    ],
)
def test_layer_index_examples(key, pattern, expected):
    assert oracle_layer_index(key, pattern) == expected
    assert layer_index(key, pattern) == expected


_segment = st.sampled_from(["model", "layers", "h", "blocks", "mlp", "q", "q_proj", "proj", "0", "1", "12", "01", "x"])
_odd_segment = st.text(alphabet="ab1²٣_", min_size=1, max_size=3)
_keys = st.lists(st.one_of(_segment, _odd_segment), min_size=1, max_size=6).map(".".join)
_patterns = st.one_of(
    st.none(),
    st.sampled_from(["layers", "h", "blocks", "lay.*", "h|layers", "(blocks|h)", "q_?proj", "²"]),
    st.lists(st.sampled_from(["layers", "h", "blocks", "x"]), min_size=1, max_size=3),
)


@given(key=_keys, pattern=_patterns)
@example(key="a.b.²", pattern=None).via("unicode digit, no segment after")
@example(key="a.b.².c", pattern=None).via("unicode digit")
def test_layer_index_matches_oracle(key, pattern):
    """CORE-MATCH-7 against the oracle."""
    assert layer_index(key, pattern) == oracle_layer_index(key, pattern)


# ---- CORE-MATCH-1…4, 6 on the matching function ----
_entries = st.lists(
    st.sampled_from(["proj", "q_proj", "v", "mlp", "mlp.fc", "layers.1.q_proj", "model", "h.0", "x"]), max_size=3
)
_regexes = st.sampled_from([r".*proj", r".*\.q_proj", r"model\..*", r"q_proj", r".*\.(0|1)\..*", r"h.*"])
_rules = st.one_of(_regexes, _entries)


@given(
    key=_keys,
    target=_rules,
    exclude=st.one_of(st.none(), _rules),
    modules_to_save=st.one_of(st.none(), _entries),
    layers=st.one_of(st.none(), st.integers(0, 2), st.lists(st.integers(0, 12), max_size=3)),
    pattern=_patterns,
)
@example(key="model.q_proj", target=["proj"], exclude=None, modules_to_save=None, layers=None, pattern=None)
@example(key="layers.1.q_proj", target=["layers.1.q_proj"], exclude=None, modules_to_save=None, layers=0, pattern=None)
@example(key="model.q_proj", target=r".*proj", exclude=None, modules_to_save=["proj"], layers=None, pattern=None)
@example(key="model.mlp.fc", target=["fc"], exclude=None, modules_to_save=["model.mlp"], layers=None, pattern=None)
@example(key="h.0.x", target=r"h.*", exclude=None, modules_to_save=["h.0"], layers=None, pattern=None)
def test_is_targeted_matches_oracle(key, target, exclude, modules_to_save, layers, pattern):
    if isinstance(target, str):
        layers = pattern = None  # CORE-CFG-5 rejects these combinations before matching
    config = SimpleNamespace(
        target_modules=target if isinstance(target, str) else set(target),
        exclude_modules=exclude if exclude is None or isinstance(exclude, str) else set(exclude),
        modules_to_save=modules_to_save,
        layers_to_transform=layers,
        layers_pattern=pattern,
    )
    assert is_targeted(config, key) == oracle_targeted(key, target, exclude, modules_to_save, layers, pattern)


def test_layers_to_transform_rules():
    """CORE-MATCH-6/8 examples."""

    def config(**kw):
        base = dict(target_modules={"q"}, exclude_modules=None, modules_to_save=None)
        return SimpleNamespace(**{**base, "layers_to_transform": None, "layers_pattern": None, **kw})

    assert is_targeted(config(layers_to_transform=1), "model.layers.1.q")
    assert not is_targeted(config(layers_to_transform=1), "model.layers.0.q")
    assert is_targeted(config(layers_to_transform=[]), "model.layers.0.q")  # empty list: no filter
    assert is_targeted(config(layers_to_transform=[0, 1]), "model.layers.0.q")
    assert not is_targeted(config(layers_to_transform=[0]), "model.q")  # no index while the filter is on
    assert is_targeted(config(layers_to_transform=[5]), "q")  # exact entry: not filtered
    assert is_targeted(config(layers_pattern="h"), "model.layers.0.q")  # pattern alone is ignored here
    assert not is_targeted(config(layers_to_transform=[0], layers_pattern="h"), "model.layers.0.q")
    assert is_targeted(config(layers_to_transform=[0], layers_pattern="h"), "t.h.0.q")


# ---- the same rules through IA3 injection on generated module trees ----
def _tree(keys: list[str]) -> nn.Module:
    """A module tree holding `keys`; leaves are Linear(2, 2), inner nodes plain containers."""
    root = nn.Module()
    inner = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    inner = {".".join(k.split(".")[: i + 1]) for k in inner for i in range(k.count(".") + 1)}
    for key in sorted({*keys, *inner}, key=lambda k: k.count(".")):
        parent, _, name = key.rpartition(".")
        owner = root.get_submodule(parent) if parent else root
        owner.add_module(name, nn.Module() if key in inner else nn.Linear(2, 2))
    return root


_tree_segments = st.sampled_from(["model", "layers", "0", "1", "q_proj", "proj", "v", "mlp", "fc", "h"])
_tree_keys = st.lists(st.lists(_tree_segments, min_size=1, max_size=4).map(".".join), min_size=1, max_size=6)


@given(keys=_tree_keys, target=_rules, exclude=st.one_of(st.none(), _rules), mts=st.one_of(st.none(), _entries))
@example(keys=["model.q_proj", "model.proj"], target=["proj"], exclude=None, mts=None)
@example(keys=["model.layers.0.q_proj", "model.layers.0.v"], target=["q_proj", "v"], exclude=["v"], mts=None)
@example(keys=["model.q_proj", "h.mlp.q_proj"], target=r".*q_proj", exclude=None, mts=["mlp"])
@example(keys=["model.q_proj", "model.proj"], target=["q_proj"], exclude=None, mts=["proj"])
def test_injection_matches_oracle(keys, target, exclude, mts):
    """CORE-MATCH-1…4, CORE-MATCH-9, CORE-INJ-2 through IA3 injection."""
    model = _tree(keys)
    all_keys = [k for k, _ in model.named_modules() if k]
    expected = {k for k in all_keys if oracle_targeted(k, target, exclude, mts)}
    config = IA3Config(target_modules=target, exclude_modules=exclude, feedforward_modules=[], modules_to_save=mts)
    not_linear = sorted(k for k in expected if not isinstance(model.get_submodule(k), nn.Linear))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not_linear:
            with pytest.raises((TypeError, ValueError), match="Module"):
                get_peft_model(model, config)
            assert not any(isinstance(m, TunerLayer) for m in model.modules())
            return
        if not expected:
            with pytest.raises(ValueError) as info:
                get_peft_model(model, config)
            for entry in [target] if isinstance(target, str) else target:
                assert entry in str(info.value)
            return
        peft_model = get_peft_model(model, config)
    assert set(tuner_layers(peft_model)) == expected


def test_list_entry_respects_dot_boundary():
    """CORE-MATCH-2: `proj` is not a suffix of `q_proj`."""
    model = _tree(["a.q_proj", "a.proj", "proj", "b.xproj"])
    assert set(tuner_layers(adapted(model, IA3Config(target_modules=["proj"], feedforward_modules=[])))) == {
        "a.proj",
        "proj",
    }


def test_exclude_first_and_modules_to_save_never_adapted():
    """CORE-MATCH-3/4 on SmallNet: exclude wins over a target; modules_to_save entries are never adapted."""
    config = ia3(targets=r".*(q_proj|v_proj|head)", exclude_modules=["layers.0.q_proj"], modules_to_save=["head"])
    model = adapted(small_net(), config)
    assert set(tuner_layers(model)) == {"layers.0.v_proj", "layers.1.q_proj", "layers.1.v_proj"}
    config = ia3(targets=["q_proj", "v_proj"], exclude_modules=r"layers\.1\..*", modules_to_save=["layers.0"])
    with pytest.raises(ValueError):
        adapted(small_net(), config)  # everything targeted is excluded or inside a modules_to_save module


# ---- all-linear (CORE-MATCH-5) ----
def test_all_linear_llama_excludes_lm_head():
    model = adapted(tiny_llama(), IA3Config(target_modules="ALL-linear", feedforward_modules=["down_proj"]))
    keys = set(tuner_layers(model))
    linear = {k for k, m in tiny_llama().named_modules() if isinstance(m, nn.Linear)}
    assert "lm_head" in linear and keys == linear - {"lm_head"} and len(keys) == 14


def test_all_linear_gpt2_includes_conv1d():
    model = adapted(tiny_gpt2(), IA3Config(target_modules="all-linear", feedforward_modules=[]))
    layers = tuner_layers(model)
    expected = {k for k, m in tiny_gpt2().named_modules() if isinstance(m, (nn.Linear, Conv1D))} - {"lm_head"}
    assert set(layers) == expected and len(expected) == 8
    assert all(isinstance(layer.base_layer, Conv1D) for layer in layers.values())


def _llama_seq_cls() -> transformers.LlamaForSequenceClassification:
    torch.manual_seed(0)
    config = tiny_llama_config(num_labels=3, pad_token_id=0)
    return transformers.LlamaForSequenceClassification(config).eval()


def test_all_linear_seq_cls_excludes_head():
    config = IA3Config(task_type="SEQ_CLS", target_modules="all-linear", feedforward_modules=[])
    keys = set(tuner_layers(adapted(_llama_seq_cls(), config)))
    linear = {k for k, m in _llama_seq_cls().named_modules() if isinstance(m, nn.Linear)}
    assert "score" in linear and keys == linear - {"score"}
    keys = set(tuner_layers(adapted(_llama_seq_cls(), IA3Config(target_modules="all-linear", feedforward_modules=[]))))
    assert keys == linear  # without SEQ_CLS the head is an ordinary Linear


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4, 4)
        self.out_proj = nn.Linear(4, 2)


class _Classifier(nn.Module):
    """A head with Linear children (RoBERTa-style) and a non-head layer also called `score`."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict({"score": nn.Linear(4, 4), "lin": nn.Linear(4, 4)})
        self.classifier = _Head()


def test_all_linear_seq_cls_head_is_the_model_attribute():
    config = IA3Config(task_type="SEQ_CLS", target_modules="all-linear", feedforward_modules=[])
    assert set(tuner_layers(adapted(_Classifier(), config))) == {"encoder.score", "encoder.lin"}


def test_all_linear_targets_linear_layers_only():
    """A Linear's key being a dot-suffix of another module's key must not drag that module in."""
    model = nn.Module()
    model.lin = nn.Linear(4, 4)
    model.block = nn.Module()
    model.block.lin = nn.Embedding(5, 4)
    model.block.proj = nn.Linear(4, 4)
    config = IA3Config(target_modules="all-linear", feedforward_modules=[])
    assert set(tuner_layers(adapted(model, config))) == {"lin", "block.proj"}
    assert isinstance(model.block.lin, nn.Embedding)


def test_all_linear_without_linear_layers_names_the_request():
    """CORE-MATCH-9 for all-linear."""
    model = nn.Sequential(nn.Embedding(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="all-linear"):
        adapted(model, IA3Config(target_modules="all-linear", feedforward_modules=[]))


# ---- CORE-MATCH-9/10/11, CORE-DEF-1 ----
@pytest.mark.parametrize("targets", [["nothing_here"], ["q_proj_x", "zz"], r".*\.nothing"])
def test_no_match_names_targets(targets):
    with pytest.raises(ValueError) as info:
        adapted(small_net(), IA3Config(target_modules=targets, feedforward_modules=[]))
    for entry in [targets] if isinstance(targets, str) else targets:
        assert entry in str(info.value)


def test_no_match_leaves_model_untouched():
    model = small_net()
    before = {k: p.requires_grad for k, p in model.named_parameters()}
    with pytest.raises(ValueError):
        adapted(model, IA3Config(target_modules=["nothing_here"], feedforward_modules=[]))
    assert not any(isinstance(m, TunerLayer) for m in model.modules())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == before


def test_second_adapter_reuses_the_wrapper():
    """CORE-MATCH-10."""
    model = adapted(small_net())
    first = tuner_layers(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.add_adapter("other", ia3(targets=["q_proj", "fc_in"], feedforward=[]))
    layers = tuner_layers(model)
    assert set(layers) == set(first) | {"layers.0.mlp.fc_in", "layers.1.mlp.fc_in"}
    for key, layer in first.items():
        assert layers[key] is layer
    for layer in layers.values():
        assert not any(isinstance(m, TunerLayer) for m in layer.base_layer.modules())
        assert isinstance(layer.base_layer, nn.Linear)
    assert set(layers["layers.0.q_proj"].settings) == {"default", "other"}
    assert set(layers["layers.0.v_proj"].settings) == {"default"}


@pytest.mark.parametrize(
    ("build", "targets", "feedforward"),
    [
        (tiny_llama, {"k_proj", "v_proj", "down_proj"}, {"down_proj"}),
        (tiny_gpt2, {"c_attn", "mlp.c_proj"}, {"mlp.c_proj"}),
        (tiny_t5, {"k", "v", "wo"}, {"wo"}),
    ],
)
def test_default_targets(build, targets, feedforward):
    """CORE-MATCH-11, CORE-DEF-1 (IA3 table 1.4(b)), IA3-CFG-3."""
    base = build()
    model = adapted(base, IA3Config())
    config = model.peft_config["default"]
    assert config.target_modules == targets and config.feedforward_modules == feedforward
    expected = {k for k, _ in build().named_modules() if any(k == t or k.endswith("." + t) for t in targets)}
    layers = tuner_layers(model)
    assert set(layers) == expected and expected
    for key, layer in layers.items():
        is_ff = any(key == f or key.endswith("." + f) for f in feedforward)
        assert layer.settings["default"].feedforward == is_ff


def test_unknown_model_type_needs_targets():
    """CORE-MATCH-11: a plain torch model has no default."""
    with pytest.raises(ValueError, match="target_modules"):
        adapted(small_net(), IA3Config(feedforward_modules=[]))
    model = small_net()
    model.config = SimpleNamespace(model_type="not_a_known_type")
    with pytest.raises(ValueError, match="target_modules"):
        adapted(model, IA3Config(feedforward_modules=[]))


def test_default_tables_hold_the_required_rows():
    """CORE-DEF-1: the rows SPEC §1.4 requires."""
    lora = {
        "llama": {"q_proj", "v_proj"},
        "mistral": {"q_proj", "v_proj"},
        "gpt2": {"c_attn"},
        "opt": {"q_proj", "v_proj"},
        "t5": {"q", "v"},
        "mt5": {"q", "v"},
        "bart": {"q_proj", "v_proj"},
        "bert": {"query", "value"},
        "roberta": {"query", "value"},
        "qwen2": {"q_proj", "v_proj"},
        "gemma": {"q_proj", "v_proj"},
        "bloom": {"query_key_value"},
        "gpt_neox": {"query_key_value"},
        "falcon": {"query_key_value"},
        "phi": {"q_proj", "v_proj", "fc1", "fc2"},
    }
    for model_type, targets in lora.items():
        assert set(LORA_STYLE_TARGETS[model_type]) == targets, model_type
    ia3_rows = {
        "llama": ({"k_proj", "v_proj", "down_proj"}, {"down_proj"}),
        "mistral": ({"k_proj", "v_proj", "down_proj"}, {"down_proj"}),
        "qwen2": ({"q_proj", "v_proj", "down_proj"}, {"down_proj"}),
        "gemma": ({"q_proj", "v_proj", "down_proj"}, {"down_proj"}),
        "gpt2": ({"c_attn", "mlp.c_proj"}, {"mlp.c_proj"}),
        "t5": ({"k", "v", "wo"}, {"wo"}),
        "mt5": ({"k", "v", "wi_1"}, set()),
        "bert": ({"key", "value", "output.dense"}, {"output.dense"}),
        "roberta": ({"key", "value", "output.dense"}, {"output.dense"}),
        "opt": ({"q_proj", "k_proj", "fc2"}, {"fc2"}),
        "bart": ({"q_proj", "v_proj", "fc2"}, {"fc2"}),
        "bloom": ({"query_key_value", "mlp.dense_4h_to_h"}, {"mlp.dense_4h_to_h"}),
        "gpt_neox": ({"query_key_value", "dense_4h_to_h"}, {"dense_4h_to_h"}),
        "falcon": ({"query_key_value", "dense_4h_to_h"}, {"dense_4h_to_h"}),
    }
    for model_type, (targets, feedforward) in ia3_rows.items():
        got_targets, got_feedforward = IA3_TARGETS[model_type]
        assert (set(got_targets), set(got_feedforward)) == (targets, feedforward), model_type


def test_small_net_keys():
    """The support model's keys are what the other core tests assume."""
    assert sorted(k for k, m in small_net().named_modules() if isinstance(m, nn.Linear)) == sorted(LINEAR_KEYS)
