"""Family `matching`: which modules an adapter is injected into (SPEC §1.3, CORE-MATCH-1…11) and the default target
tables (§1.4, CORE-DEF-1/2).

Observable: `driver.adapted_modules(model)` after `driver.adapt` (keys as the base model's `named_modules()` gives
them), judged against `conformance.spec.matching`'s rules evaluated on the base model's own module names. Most rows
run on a synthetic model with nested, layer-indexed names and adversarial neighbours (`q_proj_extra`, `xq_proj`, a
top-level `q_proj`, `model.stack.0` with its index last, `blocks.0.h.1.fc` with two indices); the default-target
rows (`scope="model"`) also run on the tiny transformers models of `conformance.models`.
"""

from __future__ import annotations

import copy
import functools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest
import torch
import transformers
from hypothesis import Phase, assume, given, settings
from hypothesis import strategies as st
from torch import nn
from transformers.pytorch_utils import Conv1D

from conformance.assertions import Context, assert_raises_clause, fail
from conformance.drivers.base import Case, Discrepancy, Driver
from conformance.harness import claims_of
from conformance.models import LLAMA, MODELS
from conformance.rows import RowSpec
from conformance.scenes import SECOND, require_lifecycle
from conformance.spec.layer import Layer
from conformance.spec.matching import (
    DEFAULT_TABLES,
    IA3,
    LAYERS_PATTERN_ALONE,
    LAYERS_PATTERN_LISTS,
    LORA_STYLE,
    DefaultRow,
    select,
)
from conformance.spec.records import RECORDS

WIDTH = 4  # every synthetic leaf is Linear(4, 4); every real model's targets have sizes divisible by 4

# ---- the synthetic model ------------------------------------------------------------------------------------------

TREE_CODE = '''import torch
import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D


def tree(leaves):
    """A module tree with the given leaves (dotted key -> module); containers are plain nn.Module()."""
    root = nn.Module()
    for key, leaf in leaves.items():
        parent = root
        *path, name = key.split(".")
        for segment in path:
            if segment not in parent._modules:
                parent.add_module(segment, nn.Module())
            parent = parent._modules[segment]
        parent.add_module(name, leaf)
    return root
'''
_scope: dict[str, Any] = {}
exec(TREE_CODE, _scope)  # our own constant source, shared with the repro snippets
tree: Callable[[dict[str, nn.Module]], nn.Module] = _scope["tree"]

LEAF_CODE = {
    "linear": f"nn.Linear({WIDTH}, {WIDTH})",
    "embedding": f"nn.Embedding(8, {WIDTH})",
    "norm": f"nn.LayerNorm({WIDTH})",
    "conv2d": f"nn.Conv2d({WIDTH}, {WIDTH}, 1)",
    "hf_conv1d": f"Conv1D({WIDTH}, {WIDTH})",
}
LEAF = {
    "linear": lambda: nn.Linear(WIDTH, WIDTH),
    "embedding": lambda: nn.Embedding(8, WIDTH),
    "norm": lambda: nn.LayerNorm(WIDTH),
    "conv2d": lambda: nn.Conv2d(WIDTH, WIDTH, 1),
    "hf_conv1d": lambda: Conv1D(WIDTH, WIDTH),
}
TARGET_KINDS = frozenset({"linear", "hf_conv1d"})  # the synthetic leaves an adapter may be asked to target


def zoo_layout() -> dict[str, str]:
    """Key → leaf kind: three decoder layers with attention and MLP leaves and adversarial neighbours, two experts
    (`model.layers.i.mlp.experts.j.fc`: two eligible indices, the first counts), a ModuleList of Linears (index as the
    last segment), a top-level `q_proj` and `q_proj_extra`, an unindexed `head.q_proj`, `blocks.i.h.j.fc` (its first
    index too early) and a top-level `layers.i.fc` (index right after the first segment)."""
    layout = {"model.embed_tokens": "embedding"}
    for i in range(3):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_proj_extra", "xq_proj"):
            layout[f"model.layers.{i}.self_attn.{name}"] = "linear"
        for name in ("up_proj", "down_proj", "proj"):
            layout[f"model.layers.{i}.mlp.{name}"] = "linear"
    layout.update({"model.layers.1.mlp.experts.0.fc": "linear", "model.layers.2.mlp.experts.1.fc": "linear"})
    layout.update({"model.stack.0": "linear", "model.stack.1": "linear", "model.norm": "norm"})
    layout.update({"q_proj": "linear", "q_proj_extra": "linear", "head.q_proj": "linear"})
    layout.update({f"blocks.{i}.h.{j}.fc": "linear" for i in range(2) for j in range(2)})
    layout.update({f"layers.{i}.fc": "linear" for i in range(2)})
    return layout


ZOO = zoo_layout()
LINEAR_KEYS = sorted(k for k, kind in ZOO.items() if kind == "linear")


def with_containers(layout: Mapping[str, str]) -> dict[str, str]:
    """Every key of the tree `layout` builds (leaves and their containers, `"container"`), root excluded."""
    kinds = dict(layout)
    for key in layout:
        segments = key.split(".")
        for n in range(1, len(segments)):
            kinds.setdefault(".".join(segments[:n]), "container")
    return kinds


@functools.cache
def config_class(model_type: str) -> type:
    """A transformers config class of `model_type` (what `model.config.model_type` reports)."""
    return type(f"Config_{model_type.replace('-', '_')}", (transformers.PretrainedConfig,), {"model_type": model_type})


def build_tree(layout: Mapping[str, str], model_type: str | None = None) -> nn.Module:
    model = tree({key: LEAF[kind]() for key, kind in layout.items()})
    if model_type is not None:
        model.config = config_class(model_type)()
    return model


def tree_code(layout: Mapping[str, str], model_type: str | None = None) -> str:
    """Source binding `model` exactly as `build_tree(layout, model_type)` builds it (for repro snippets)."""
    leaves = ",\n".join(f"    {key!r}: {LEAF_CODE[kind]}" for key, kind in layout.items())
    code = f"{TREE_CODE}\n\nmodel = tree({{\n{leaves},\n}})\n"
    if model_type is not None:
        code += f"model.config = type('Config', (transformers.PretrainedConfig,), {{'model_type': {model_type!r}}})()\n"
    return code


# ---- tiny transformers models (built once, copied per use) ---------------------------------------------------------


@functools.cache
def _real(name: str) -> nn.Module:
    if name == "llama_seq_cls":
        torch.manual_seed(0)
        return transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**LLAMA)).eval()
    return MODELS[name].build(0)


def real_model(name: str) -> nn.Module:
    """A fresh copy of a tiny transformers model: `MODELS[name]`, or `llama_seq_cls` (Llama with a `score` head)."""
    return copy.deepcopy(_real(name))


def real_code(name: str) -> str:
    if name == "llama_seq_cls":
        return (
            "import torch, transformers\ntorch.manual_seed(0)\n"
            f"model = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**{LLAMA!r})).eval()\n"
        )
    return MODELS[name].code(0)


def module_kind(module: nn.Module) -> str:
    """The DESIGN vocabulary's kind of a module (`other` outside it)."""
    if isinstance(module, Conv1D):
        return "hf_conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    return {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d"}.get(type(module), "other")


def geometry(module: nn.Module) -> Layer:
    """The oracle's view of a linear-kind module (`Conv1D` stores (in, out))."""
    if isinstance(module, Conv1D):
        return Layer("hf_conv1d", module.weight.shape[0], module.weight.shape[1])
    return Layer("linear", module.in_features, module.out_features)


def module_kinds(model: nn.Module) -> dict[str, str]:
    return {key: module_kind(m) for key, m in model.named_modules() if key}


# ---- rows: configs, adaptation, comparison -------------------------------------------------------------------------


def supports(driver: Driver, row: RowSpec, kind: str) -> bool:
    """The implementation adapts `kind` for this tuner: a required kind it claims, or an optional one it declares."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    if kind in record.optional_kinds:
        return record.optional_kinds[kind] in claims.optional
    return kind in record.required_kinds and kind in claims.layer_kinds


def draw_config(row: RowSpec, driver: Driver, data: st.DataObject, kind: str = "linear", label: str = "config") -> dict:
    """A valid config of the tuner's first claimed variant for a `kind` layer of WIDTH × WIDTH (valid as well for
    every module whose sizes are multiples of WIDTH); `target_modules` is set by the caller."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    variant = next(v for v in record.variants if v.name in claims.variants and v.applies_to(kind))
    return data.draw(record.configs(Layer(kind, WIDTH, WIDTH), variant, "identity"), label=label)


def has_field(row: RowSpec, name: str) -> bool:
    """The tuner's config table has the field `name` (SPEC §§2–6; the record's `defaults`)."""
    return name in RECORDS[row.tuner].defaults


def require_field(row: RowSpec, name: str) -> None:
    if not has_field(row, name):
        pytest.skip(f"the {row.tuner} config has no `{name}` field (SPEC's config table): {row.clause} does not apply")


def context_for(
    row: RowSpec, driver: Driver, configs: dict[str, dict], code: str, calls: Iterable[str] = ()
) -> Context:
    """The failure context, with a repro in the implementation's own API (`driver.repro`) that builds `code`'s model
    and adapts it with `configs` (adapter name → canonical config)."""
    first = next(iter(configs.values()))
    context = Context(row.clause, row.tuner, driver.name, first if len(configs) == 1 else configs, model_code=code)
    case = Case(tuner=row.tuner, clause=row.clause, configs=configs, model_code=code, calls=list(calls))
    try:
        context.repro = driver.repro(case)
    except Exception as exc:  # a driver's broken repro must not hide the verdict
        context.repro = f"# {driver.name}.repro raised {type(exc).__name__}: {exc}"
    return context


def adapt(driver: Driver, row: RowSpec, model: nn.Module, config: dict, name: str = "default") -> nn.Module:
    return driver.adapt(model, row.tuner, driver.make_config(row.tuner, config), name)


def differences(adapted: list[str], expected: Iterable[str]) -> str:
    """'' when `adapted` is exactly `expected` (each once); else what differs."""
    expected = set(expected)
    missing = sorted(expected - set(adapted))
    extra = sorted(set(adapted) - expected)
    twice = sorted(k for k, n in Counter(adapted).items() if n > 1)
    parts = [f"targeted but not adapted {missing}"] if missing else []
    parts += [f"adapted but not targeted {extra}"] if extra else []
    parts += [f"listed more than once {twice}"] if twice else []
    return "; ".join(parts)


def assert_adapted(context: Context, what: str, adapted: list[str], expected: Iterable[str]) -> None:
    """⟨S⟩: the adapted module keys are exactly SPEC's selection."""
    __tracebackhide__ = True
    diff = differences(adapted, expected)
    if diff:
        fail(
            context,
            f"{what}: the adapted modules are not SPEC's selection of {len(set(expected))} modules: {diff}",
            Discrepancy("the adapted modules", (), (sorted(set(expected)),), sorted(adapted), 0.0, "adapted",
                        kind="differs"),
        )  # fmt: skip


def selection(kinds: Mapping[str, str], config: Mapping) -> set[str]:
    """SPEC's selection on the synthetic tree (containers included); draws whose selection holds a module that is
    not a linear kind are rejected (they would test CORE-INJ-2, not matching)."""
    chosen = select(kinds, config)
    assume(all(kinds[key] in TARGET_KINDS for key in chosen))
    return chosen


def check_selection(row: RowSpec, driver: Driver, data: st.DataObject, fields: dict, what: str) -> None:
    """Adapt the synthetic model with a drawn config plus `fields`; the adapted modules are SPEC's selection (a
    TypeError / ValueError where SPEC selects some is a violation too)."""
    config = {**draw_config(row, driver, data), **fields}
    kinds = with_containers(ZOO)
    expected = selection(kinds, config)
    assume(expected)  # nothing targeted is CORE-MATCH-9's case
    context = context_for(row, driver, {"default": config}, tree_code(ZOO))
    try:
        model = adapt(driver, row, build_tree(ZOO), config)
    except (TypeError, ValueError) as exc:  # SPEC selects modules: refusing the config leaves them unadapted
        fail(
            context,
            f"{what}: injection raised {type(exc).__name__}({exc}), but SPEC selects {sorted(expected)}",
            Discrepancy("the adapted modules", (), "", type(exc).__name__, 0.0, "call", kind="raised"),
        )
    assert_adapted(context, what, driver.adapted_modules(model), expected)


# ---- strategies ----------------------------------------------------------------------------------------------------

LEAF_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "q_proj_extra", "xq_proj", "up_proj", "down_proj", "proj", "fc")
DOTTED = (
    "self_attn.q_proj", "mlp.proj", "h.0.fc", "0.fc", "stack.0", "stack.1", "head.q_proj", "layers.1.mlp.down_proj",
    "model.layers.2.self_attn.v_proj", "layers.0.fc", "blocks.1.h.1.fc",
)  # fmt: skip
NEAR_MISSES = (  # entries no key equals or ends with at a dot boundary (CORE-MATCH-2's adversaries)
    "attn.q_proj", "_proj", "roj", "q.proj", ".*q_proj", "Q_PROJ", "q_proj.", "ayers.0.fc", "extra", "q_proj_",
)  # fmt: skip
ENTRIES = LEAF_NAMES + DOTTED + NEAR_MISSES

REGEX_PREFIXES = (  # the first draw, `.*(q_proj)`, already tells fullmatch from match (`…q_proj_extra`) and search
    ".*", "", r".*\.", r"model\.layers\.[0-9]+\.(self_attn|mlp)\.", r"model\.layers\.1\.[a-z_]+\.", r"(head\.)?",
    r"blocks\.[0-9]\.h\.[0-9]\.", r"[a-z0-9_.]*x",
)  # fmt: skip
REGEX_SUFFIXES = ("", "_extra", "(_extra)?", "[a-z_]*")


def target_lists() -> st.SearchStrategy[list[str] | set[str]]:
    """CORE-MATCH-2: a list (or set) of entries: leaf names, dotted suffixes, full keys and near misses."""
    entries = st.lists(st.sampled_from(ENTRIES), min_size=1, max_size=4, unique=True)
    return st.one_of(entries, entries.map(set))


@st.composite
def regexes(draw: st.DrawFn) -> str:
    """CORE-MATCH-1: a regex of a prefix, alternatives of leaf names and a suffix — or a key, escaped or raw."""
    form = draw(st.sampled_from(["pieces", "escaped key", "raw key"]), label="regex form")
    if form != "pieces":
        key = draw(st.sampled_from(LINEAR_KEYS), label="key")
        return key.replace(".", r"\.") if form == "escaped key" else key
    prefix = draw(st.sampled_from(REGEX_PREFIXES), label="prefix")
    names = draw(st.lists(st.sampled_from(LEAF_NAMES), min_size=1, max_size=3, unique=True), label="names")
    suffix = draw(st.sampled_from(REGEX_SUFFIXES), label="suffix")
    return f"{prefix}({'|'.join(names)}){suffix}"


def targets() -> st.SearchStrategy[list[str] | set[str] | str]:
    return st.one_of(target_lists(), regexes())


# ---------------------------------------------------------------------------------------------------------------
# CORE-MATCH-1…4: string and list targets, exclude_modules, modules_to_save


@pytest.mark.contract("CORE-MATCH-1")
@given(data=st.data())
def test_string_target_is_a_full_match(row, driver, data):
    """CORE-MATCH-1: a string `target_modules` P (other than "all-linear") targets exactly the keys with
    `re.fullmatch(P, key)` — not `re.match`/`re.search` (`q_proj` must not catch `model.….q_proj` or `q_proj_extra`)."""
    pattern = data.draw(regexes(), label="target_modules")
    check_selection(row, driver, data, {"target_modules": pattern}, f"target_modules={pattern!r}")


@pytest.mark.contract("CORE-MATCH-2")
@given(data=st.data())
def test_list_target_matches_at_a_dot_boundary(row, driver, data):
    """CORE-MATCH-2: a list/set targets a key equal to an entry or ending with "." + entry (`proj` does not catch
    `q_proj`, `attn.q_proj` does not catch `self_attn.q_proj`, entries are literal: `q.proj` is no regex)."""
    entries = data.draw(target_lists(), label="target_modules")
    check_selection(row, driver, data, {"target_modules": entries}, f"target_modules={entries!r}")


EXCLUDE_ENTRIES = (  # first the entries a substring or prefix rule would misread
    "attn", "1", "self_attn", "proj", "q_proj", "mlp.proj", "layers.1", "xq_proj", "h.0.fc", "stack.0", "q_proj_extra",
)  # fmt: skip
EXCLUDE_REGEXES = (
    r".*\.1\..*", r".*q_proj", "q_proj", r"model\.layers\.[02]\.self_attn\..*", r".*_proj", r"blocks\..*",
    r"(?!model).*", "self_attn",
)  # fmt: skip


@pytest.mark.contract("CORE-MATCH-3")
@given(data=st.data())
def test_exclude_modules_first(row, driver, data):
    """CORE-MATCH-3: `exclude_modules` is applied first, by the same rule (string: full match; list: exact or
    dot-suffix — `self_attn` excludes no leaf, `1` only keys ending in `.1`); an excluded module is never adapted."""
    require_field(row, "exclude_modules")
    exclude = data.draw(
        st.one_of(
            st.lists(st.sampled_from(EXCLUDE_ENTRIES), min_size=1, max_size=3, unique=True),
            st.sampled_from(EXCLUDE_REGEXES),
        ),
        label="exclude_modules",
    )
    fields = {"target_modules": data.draw(targets(), label="target_modules"), "exclude_modules": exclude}
    check_selection(row, driver, data, fields, f"target_modules={fields['target_modules']!r}, exclude={exclude!r}")


MODULES_TO_SAVE = ("self_attn", "attn", "mlp", "q_proj", "layers.1", "model.layers.0", "h", "h.1", "proj", "1", "fc")


@pytest.mark.contract("CORE-MATCH-4")
@given(data=st.data())
def test_modules_to_save_never_adapted(row, driver, data):
    """CORE-MATCH-4: a module whose key holds a `modules_to_save` entry as whole segments (`m`, `m.…`, `….m`,
    `….m.…`) is never adapted — and only those (`attn` is not a segment of `self_attn.q_proj`)."""
    require_lifecycle(driver, row)  # modules_to_save belongs to the lifecycle surface (DESIGN "Surfaces")
    saved = data.draw(st.lists(st.sampled_from(MODULES_TO_SAVE), min_size=1, max_size=2, unique=True), label="mts")
    fields = {"target_modules": data.draw(targets(), label="target_modules"), "modules_to_save": saved}
    check_selection(row, driver, data, fields, f"target_modules={fields['target_modules']!r}, modules_to_save={saved}")


# ---------------------------------------------------------------------------------------------------------------
# CORE-MATCH-5: all-linear

SPELLINGS = ("all-linear", "ALL-LINEAR", "All-Linear", "aLL-lINEAR")


def all_linear_case(driver: Driver, row: RowSpec, name: str) -> tuple[nn.Module, str, set[str], dict]:
    """(model, its source, the keys SPEC's "all-linear" selects, extra config fields) for a named case: the synthetic
    tree (plain torch: every Linear / Conv1D, not the Conv2d beside them), a tiny Llama or GPT-2 (the LM head left
    out) or a Llama for sequence classification under task_type SEQ_CLS (its `score` head left out)."""
    if name == "zoo":
        layout = {**ZOO, "model.conv": "conv2d"}
        if supports(driver, row, "hf_conv1d"):
            layout["model.c_fc"] = "hf_conv1d"
        model = build_tree(layout)
        heads: set[str] = set()
        code = tree_code(layout)
    else:
        model, code = real_model(name), real_code(name)
        head = model.get_output_embeddings()
        heads = {key for key, m in model.named_modules() if head is not None and m is head}
        if name == "llama_seq_cls":
            heads.add("score")
    kinds = module_kinds(model)
    expected = {key for key, kind in kinds.items() if kind in TARGET_KINDS} - heads
    return model, code, expected, {"task_type": "SEQ_CLS"} if name == "llama_seq_cls" else {}


@pytest.mark.contract("CORE-MATCH-5", scope="model")
@given(data=st.data())
def test_all_linear(row, driver, data):
    """CORE-MATCH-5: "all-linear" (any case) targets every torch Linear and transformers Conv1D except the LM head
    of a transformers model and, for task_type SEQ_CLS, its classification head (never a Conv2d, an Embedding or a
    norm); rejecting a spelling violates it too."""
    names = ["zoo", "llama", "llama_seq_cls"] + (["gpt2"] if supports(driver, row, "hf_conv1d") else [])
    name = data.draw(st.sampled_from(names), label="model")
    spelling = data.draw(st.sampled_from(SPELLINGS), label="spelling")
    model, code, expected, fields = all_linear_case(driver, row, name)
    kind = "hf_conv1d" if name == "gpt2" else "linear"
    config = {**draw_config(row, driver, data, kind), **fields, "target_modules": spelling}
    context = context_for(row, driver, {"default": config}, code)
    try:
        peft_model = adapt(driver, row, model, config)
    except (TypeError, ValueError) as exc:  # "any case": a spelling read as a regex matching nothing, say
        fail(context, f"target_modules={spelling!r} on {name} was rejected ({type(exc).__name__}: {exc})")
    adapted = driver.adapted_modules(peft_model)
    assert_adapted(context, f"target_modules={spelling!r} on {name}", adapted, expected)


# ---------------------------------------------------------------------------------------------------------------
# CORE-MATCH-6…8: layers_to_transform, the layer index, layers_pattern alone

FILTER_ENTRIES = (
    "q_proj", "down_proj", "proj", "fc", "self_attn.v_proj", "h.1.fc", "stack.0", "model.layers.1.self_attn.k_proj",
    "layers.0.fc", "head.q_proj", "k_proj", "0.fc",
)  # fmt: skip
# First the patterns whose first matching segment is not followed by an index (`model` in `model.layers.1.…`): no
# index for them, although a later segment would match.
STRING_PATTERNS = ("[a-z]+", "model|layers", "layers", "h", "blocks", "lay.*", "layer", "model", "h|blocks")
LIST_PATTERNS = (("h", "blocks"), ("blocks", "h"), ("layer", "layers"), ("nomatch", "h"), ("model", "layers"))


def layers_patterns(row: RowSpec) -> st.SearchStrategy[str | list[str]]:
    """Truthy `layers_pattern` values of the type the tuner's config table allows (a list only where it says so)."""
    strings = st.sampled_from(STRING_PATTERNS)
    if row.tuner not in LAYERS_PATTERN_LISTS:
        return strings
    return st.one_of(strings, st.sampled_from(LIST_PATTERNS).map(list))


def filter_entries() -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(FILTER_ENTRIES), min_size=1, max_size=4, unique=True)


@pytest.mark.contract("CORE-MATCH-6")
@given(data=st.data())
def test_layers_to_transform(row, driver, data):
    """CORE-MATCH-6: `layers_to_transform` (an int — 0 included — or a list; [] means no filter) keeps a dot-suffix
    match only if its layer index (CORE-MATCH-7's default rule) equals the int / is in the list; a key equal to an
    entry is never filtered; a key without an index is dropped while the filter is on."""
    require_field(row, "layers_to_transform")
    layers = data.draw(
        st.one_of(st.integers(0, 3), st.lists(st.integers(0, 3), max_size=3, unique=True)), label="layers_to_transform"
    )
    fields = {"target_modules": data.draw(filter_entries(), label="target_modules"), "layers_to_transform": layers}
    check_selection(row, driver, data, fields, f"target_modules={fields['target_modules']}, layers={layers!r}")


@pytest.mark.contract("CORE-MATCH-7")
@given(data=st.data())
def test_layer_index(row, driver, data):
    """CORE-MATCH-7: the layer index is the first all-digit segment with ≥ 2 segments before and one after
    (`model.layers.2.mlp.experts.1.fc` → 2, `blocks.0.h.1.fc` → 1, `model.stack.0` → none, `layers.0.fc` → none);
    with `layers_pattern` (a whole-segment regex, or a list tried in order) the digit segment right after the FIRST
    segment matching it, with a segment after it (`layers.0.fc` → 0 for `layers`; `model.layers.1.…` → none for
    `model`). No index → not targeted."""
    require_field(row, "layers_to_transform")
    pattern = data.draw(st.one_of(layers_patterns(row), st.none()), label="layers_pattern")
    layers = data.draw(
        st.one_of(st.integers(0, 2), st.lists(st.integers(0, 2), min_size=1, max_size=2, unique=True)), label="layers"
    )
    entries = data.draw(filter_entries(), label="target_modules")
    fields = {"target_modules": entries, "layers_to_transform": layers, "layers_pattern": pattern}
    check_selection(row, driver, data, fields, f"target_modules={entries}, layers={layers!r}, pattern={pattern!r}")


@pytest.mark.contract("CORE-MATCH-8")
@given(data=st.data())
def test_layers_pattern_alone(row, driver, data):
    """CORE-MATCH-8: `layers_pattern` with `layers_to_transform=None` is ignored (Bone, MiSS, GraLoRA: the selection
    is the unfiltered one) or rejected with ValueError naming `layers_pattern` (HRA-CFG-2, LOHA-CFG-2: at
    construction or, at the latest, at injection)."""
    if row.tuner not in LAYERS_PATTERN_ALONE:
        pytest.skip(f"the {row.tuner} config has no `layers_pattern` field (SPEC's config table): not applicable")
    pattern = data.draw(layers_patterns(row), label="layers_pattern")
    entries = data.draw(filter_entries(), label="target_modules")
    config = {**draw_config(row, driver, data), "target_modules": entries, "layers_pattern": pattern}
    context = context_for(row, driver, {"default": config}, tree_code(ZOO))
    if LAYERS_PATTERN_ALONE[row.tuner] == "reject":
        assert_raises_clause(
            context, (ValueError,), "layers_pattern", lambda: adapt(driver, row, build_tree(ZOO), config)
        )
        return
    expected = selection(with_containers(ZOO), {**config, "layers_to_transform": None})
    adapted = driver.adapted_modules(adapt(driver, row, build_tree(ZOO), config))
    assert_adapted(context, f"target_modules={entries}, layers_pattern={pattern!r} alone (ignored)", adapted, expected)


# ---------------------------------------------------------------------------------------------------------------
# CORE-MATCH-9: nothing targeted

ABSENT_ENTRIES = (
    "attn.q_proj", "q.proj", "Q_PROJ", "q_proj_", "roj", ".*q_proj", "layers.3.mlp.proj", "mlp.q_proj", "stack.2",
)  # fmt: skip
ABSENT_REGEXES = (
    "q_proj_", "proj", "Q_PROJ", r"model\.layers\.3\..*", r"self_attn\.q_proj", r".*\.q", "xq", r"head\.q",
    r"model\.layers\.0\.self_attn\.q_proj\.weight",
)  # fmt: skip


@st.composite
def empty_selections(draw: st.DrawFn, row: RowSpec) -> dict:
    """Config fields that target nothing: absent list entries, a regex matching no key in full, every match
    filtered out by layers_to_transform, or excluded (the last two where the config has the field)."""
    causes = ["absent", "regex"]
    causes += ["filtered"] if has_field(row, "layers_to_transform") else []
    causes += ["excluded"] if has_field(row, "exclude_modules") else []
    cause = draw(st.sampled_from(causes), label="cause")
    if cause == "absent":
        return {"target_modules": draw(st.lists(st.sampled_from(ABSENT_ENTRIES), min_size=1, max_size=3, unique=True))}
    if cause == "regex":
        return {"target_modules": draw(st.sampled_from(ABSENT_REGEXES))}
    if cause == "filtered":
        entries = draw(st.lists(st.sampled_from(("xq_proj", "up_proj", "fc", "proj")), min_size=1, unique=True))
        return {"target_modules": entries, "layers_to_transform": draw(st.sampled_from([7, [5, 9]]))}
    exclude = draw(st.sampled_from([["down_proj"], r".*down_proj", ["mlp.down_proj"]]))
    return {"target_modules": ["down_proj"], "exclude_modules": exclude}


@pytest.mark.contract("CORE-MATCH-9")
@given(data=st.data())
def test_nothing_targeted_is_an_error(row, driver, data):
    """CORE-MATCH-9: if nothing is targeted, injection fails with ValueError (or a subclass) whose message names the
    requested target modules (each entry of a list, the string itself)."""
    fields = data.draw(empty_selections(row), label="fields")
    config = {**draw_config(row, driver, data), **fields}
    assert not select(with_containers(ZOO), config), f"harness: {fields} selects modules"
    context = context_for(row, driver, {"default": config}, tree_code(ZOO))
    requested = fields["target_modules"]
    subjects = [requested] if isinstance(requested, str) else sorted(requested)
    exc = assert_raises_clause(context, (ValueError,), subjects[0], lambda: adapt(driver, row, build_tree(ZOO), config))
    for subject in subjects[1:]:
        if subject.lower() not in str(exc).lower():
            fail(context, f"the ValueError does not name the requested target module {subject!r}: {exc}")


# ---------------------------------------------------------------------------------------------------------------
# CORE-MATCH-10: a second adapter goes inside the existing wrapper

SECOND_TARGETS = (r".*q_proj.*", r".*proj.*", r".*\.(q|k)_proj")


@pytest.mark.contract("CORE-MATCH-10")
@given(data=st.data())
def test_no_nested_wrappers(row, driver, data):
    """CORE-MATCH-10: `add_adapter` into modules already wrapped by this tuner puts the new adapter inside the existing
    wrapper: the adapted keys are the union of both selections (none of them `….base_layer`), every adapted layer's
    base layer is of the original module's type (not another wrapper), and each adapter lives exactly on its own
    selection."""
    require_lifecycle(driver, row)
    kinds = with_containers(ZOO)
    first = {**draw_config(row, driver, data), "target_modules": data.draw(target_lists(), label="first targets")}
    second_targets = data.draw(st.one_of(targets(), st.sampled_from(SECOND_TARGETS)), label="second targets")
    second = {**draw_config(row, driver, data, label="second config"), "target_modules": second_targets}
    chosen = {"default": selection(kinds, first), SECOND: selection(kinds, second)}
    assume(chosen["default"] and chosen[SECOND])
    base = build_tree(ZOO)
    originals = {key: base.get_submodule(key) for key in chosen["default"] | chosen[SECOND]}  # before wrapping
    calls = [f"add_adapter({SECOND!r}, config_{SECOND})"]
    context = context_for(row, driver, {"default": first, SECOND: second}, tree_code(ZOO), calls)
    model = adapt(driver, row, base, first)
    driver.add_adapter(model, row.tuner, SECOND, driver.make_config(row.tuner, second))
    union = chosen["default"] | chosen[SECOND]
    assert_adapted(
        context, f"after add_adapter({SECOND!r}) targeting {second_targets!r}", driver.adapted_modules(model), union
    )
    for key in sorted(union):
        base_layer = driver.layer_state(model, key).base_layer
        if type(base_layer) is not type(originals[key]):
            fail(
                context, f"the base layer of {key!r} is a {type(base_layer).__name__}, not the original Linear: nested"
            )
        for name, keys in chosen.items():
            held = bool(driver.get_params(model, key, name))
            if held != (key in keys):
                where = "missing from" if key in keys else "injected into"
                fail(context, f"adapter {name!r} is {where} {key!r} (its selection: {sorted(keys)})")


# ---------------------------------------------------------------------------------------------------------------
# CORE-MATCH-11, CORE-DEF-1, CORE-DEF-2: target_modules=None


def table_names() -> list[str]:
    """Every list entry of §1.4's tables (required and further rows)."""
    names = set()
    for table in (LORA_STYLE, IA3):
        for default in (*table.required.values(), *table.further.values()):
            if not isinstance(default.targets, str):
                names.update(default.targets)
    return sorted(names)


# Neighbours a table entry must not catch: another parent of a dotted entry's leaf, a leaf under another parent,
# extensions of entry names; and the keys upstream's regex row (gemma4) is written for.
DEFAULT_EXTRA = ("attn.c_proj", "intermediate.dense", "q_proj_extra", "xq_proj", "query_key_value_x")
LANGUAGE_MODEL = tuple(f"model.language_model.layers.0.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj"))


def default_layout(default: DefaultRow, unsupported: str | None = None) -> dict[str, str]:
    """A decoder layer holding a Linear for every table entry (`model.layers.0.<entry>`) and the neighbours above;
    subtrees whose container the row itself targets are left out (rwkv's `output` beside `output.dense`, which would
    make the row target a container). `unsupported`: that entry becomes an Embedding (CORE-DEF-2)."""
    layout = {f"model.layers.0.{name}": "linear" for name in (*table_names(), *DEFAULT_EXTRA)}
    layout.update(dict.fromkeys(LANGUAGE_MODEL, "linear"))
    targets = {"target_modules": default.target_modules()}
    while hit := [k for k, kind in with_containers(layout).items() if kind == "container" and select([k], targets)]:
        layout = {key: kind for key, kind in layout.items() if not any(key.startswith(h + ".") for h in hit)}
    if unsupported is not None:
        layout[f"model.layers.0.{unsupported}"] = "embedding"
    return layout


def defaults_config(row: RowSpec, driver: Driver, data: st.DataObject, kind: str = "linear") -> dict:
    """A drawn config with `target_modules=None` and, where the tuner has it, `feedforward_modules=None` (both from
    the table, IA3-CFG-3)."""
    config = {**draw_config(row, driver, data, kind), "target_modules": None}
    if has_field(row, "feedforward_modules"):
        config["feedforward_modules"] = None
    return config


def check_default(
    row: RowSpec, driver: Driver, config: dict, model: nn.Module, default: DefaultRow, model_type: str
) -> str:
    """'' if adapting `model` with `config` (target_modules=None) adapts exactly the row's selection, each module with
    the parameter shapes of its resolved config (IA3: feedforward per the table's second column); else the deviation.
    A rejection (ValueError: an unknown model type or nothing found; TypeError: a container targeted) is one too."""
    kinds = module_kinds(model)
    expected = select(kinds, {"target_modules": default.target_modules()})
    modules = {key: model.get_submodule(key) for key in expected}
    try:
        peft_model = adapt(driver, row, model, config)
    except (TypeError, ValueError) as exc:  # CORE-MATCH-9/11's or CORE-INJ-2's rejection: a row read wrong or missing
        return f"{model_type}: rejected with {type(exc).__name__}({exc}); the table's row is {default.targets!r}"
    diff = differences(driver.adapted_modules(peft_model), expected)
    if diff:
        return f"{model_type} (row {default.targets!r}): {diff}"
    record = RECORDS[row.tuner]
    resolved = {**config, "target_modules": default.target_modules()}
    if default.feedforward is not None:
        resolved["feedforward_modules"] = list(default.feedforward)
    for key in sorted(expected):
        layer = geometry(modules[key])
        want = dict(sorted(record.oracle.param_shapes(record.resolve(resolved, key), layer).items()))
        got = {name: tuple(t.shape) for name, t in sorted(driver.get_params(peft_model, key, "default").items())}
        if got != want:
            return f"{model_type}: {key} holds parameters {got}, but should hold {want} (row {default})"
    return ""


def typed_case(default: DefaultRow, model_type: str, unsupported: str | None = None) -> tuple[nn.Module, str]:
    layout = default_layout(default, unsupported)
    return build_tree(layout, model_type), tree_code(layout, model_type)


@pytest.mark.contract("CORE-MATCH-11")
@given(data=st.data())
def test_none_target_uses_the_model_type(row, driver, data):
    """CORE-MATCH-11: `target_modules=None` uses §1.4's row for `model.config.model_type` (a model type drawn from the
    tuner's table, on a model holding every table entry); a plain torch module (no model type) is rejected with
    ValueError naming `target_modules`."""
    table = DEFAULT_TABLES[row.tuner]
    config = {**draw_config(row, driver, data), "target_modules": None}  # IA3 keeps feedforward_modules=[]
    context = context_for(row, driver, {"default": config}, tree_code(ZOO))
    assert_raises_clause(context, (ValueError,), "target_modules", lambda: adapt(driver, row, build_tree(ZOO), config))
    model_type = data.draw(st.sampled_from(sorted(table.required)), label="model_type")
    default = table.required[model_type]
    model, code = typed_case(default, model_type)
    context = context_for(row, driver, {"default": config}, code)
    expected = select(module_kinds(model), {"target_modules": default.target_modules()})
    adapted = driver.adapted_modules(adapt(driver, row, model, config))
    assert_adapted(context, f"target_modules=None on a {model_type!r} model (row {default.targets})", adapted, expected)


REAL_DEFAULTS = ("llama", "t5", "gpt2")
# The table rows check every row of a table in each example; the examples vary only the drawn config (its r, init…),
# which the tables do not depend on: two are enough, in every profile, and shrinking a failure gains nothing (its
# message lists every deviating row whatever the config).
TABLE_EXAMPLES = settings(max_examples=2, phases=[Phase.explicit, Phase.reuse, Phase.generate])


@pytest.mark.contract("CORE-DEF-1", scope="model")
@TABLE_EXAMPLES
@given(data=st.data())
def test_default_table(row, driver, data):
    """CORE-DEF-1: with `target_modules=None`, every required row of the tuner's table (§1.4 (a), or (b) for IA3 with
    its feedforward column) on a model of that type holding every table entry, and on the tiny Llama, T5 and GPT-2
    (GPT-2's Conv1D where the tuner adapts it)."""
    table = DEFAULT_TABLES[row.tuner]
    config = defaults_config(row, driver, data)
    deviations = []
    for model_type, default in sorted(table.required.items()):
        model, _ = typed_case(default, model_type)
        deviations.append(check_default(row, driver, config, model, default, model_type))
    for name in REAL_DEFAULTS:
        kinds = set(module_kinds(_real(name)).values())
        if "hf_conv1d" in kinds and not supports(driver, row, "hf_conv1d"):
            continue  # CORE-DEF-2's case
        kind_config = defaults_config(row, driver, data, "hf_conv1d") if "hf_conv1d" in kinds else config
        model_type = _real(name).config.model_type
        deviation = check_default(row, driver, kind_config, real_model(name), table.required[model_type], name)
        deviations.append(deviation)
    found = [d for d in deviations if d]
    if found:
        context = context_for(row, driver, {"default": config}, real_code("llama"))
        fail(
            context,
            f"default targets ({table.name}) differ from SPEC's table in {len(found)} rows: " + " | ".join(found),
        )


@pytest.mark.contract("CORE-DEF-1.should", scope="model")
@TABLE_EXAMPLES
@given(data=st.data())
def test_default_table_further_rows(row, driver, data):
    """CORE-DEF-1 (SHOULD): the further rows follow upstream PEFT 0.21's tables (its regex row included); a model type
    upstream has no row for (the tiny ResNet) is rejected like an unknown one, with ValueError naming
    `target_modules`."""
    table = DEFAULT_TABLES[row.tuner]
    config = defaults_config(row, driver, data)
    deviations = []
    for model_type, default in sorted(table.further.items()):
        model, _ = typed_case(default, model_type)
        deviations.append(check_default(row, driver, config, model, default, model_type))
    plain = {**config, "feedforward_modules": []} if has_field(row, "feedforward_modules") else config
    try:
        adapted = driver.adapted_modules(adapt(driver, row, real_model("resnet"), plain))
        deviations.append(f"resnet (no upstream row): adapted {adapted} instead of rejecting")
    except ValueError as exc:
        if "target_modules" not in str(exc).lower():
            deviations.append(f"resnet (no upstream row): the ValueError does not name target_modules: {exc}")
    found = [d for d in deviations if d]
    if found:
        context = context_for(row, driver, {"default": config}, real_code("resnet"))
        fail(context, f"default targets differ from upstream's further rows ({len(found)}): " + " | ".join(found))


@pytest.mark.contract("CORE-DEF-2", scope="model")
@given(data=st.data())
def test_unsupported_default_target(row, driver, data):
    """CORE-DEF-2: a default that selects a layer kind the tuner does not support fails as CORE-INJ-2 says — TypeError
    or ValueError naming the module's type, that module left as it was: the tuner's `llama` row on a model whose
    last default entry is an Embedding, and the tiny GPT-2 (`c_attn`, a Conv1D) where Conv1D is not a kind of the
    tuner (HRA)."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    default = DEFAULT_TABLES[row.tuner].required["llama"]
    entry = default.targets[-1]
    cases = [("llama", "Embedding", *typed_case(default, "llama", unsupported=entry), f"model.layers.0.{entry}")]
    if "hf_conv1d" not in record.kinds and "hf_conv1d" not in claims.layer_kinds:
        gpt2 = real_model("gpt2")
        cases.append(("gpt2", "Conv1D", gpt2, real_code("gpt2"), "transformer.h.0.attn.c_attn"))
    for model_type, subject, model, code, key in cases:
        config = defaults_config(row, driver, data, "hf_conv1d" if subject == "Conv1D" else "linear")
        parent_key, _, child = key.rpartition(".")
        parent, module = model.get_submodule(parent_key), model.get_submodule(key)
        before = {name: p.detach().clone() for name, p in module.named_parameters()}
        context = context_for(row, driver, {"default": config}, code)
        assert_raises_clause(
            context, (TypeError, ValueError), subject, lambda m=model, c=config: adapt(driver, row, m, c)
        )
        if parent._modules[child] is not module:
            fail(
                context, f"{model_type}: the rejected {subject} {key!r} was replaced by {type(parent._modules[child])}"
            )
        for name, value in module.named_parameters():
            if not torch.equal(value, before[name]):
                fail(context, f"{model_type}: the rejected {subject} {key!r} had its {name} changed")
