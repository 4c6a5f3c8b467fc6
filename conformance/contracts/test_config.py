"""Family `config`: config objects, their validation and their JSON form (SPEC §1.2 CORE-CFG-1…9 and each tuner's
…-CFG clauses), reached only through the driver's `make_config`, `config_to_dict`, `config_from_dict` and, for the
rules checked at injection, `adapt` on small models of our own.

Validation clauses are driven by one catalogue (`CASES`): per clause, the invalid configs it rejects (`Rejection`:
the config, the fields or values the message must name, when it must be raised, the model it is injected into) and
the nearby valid configs it must accept (`Acceptance`). A rejection "no later than injection" (CORE-CFG-4) passes when
`make_config` raises, or when `adapt` raises before any layer is modified; a layer-dependent rejection must come from
`adapt`, before the offending layer is modified. CORE-CFG-4's own row runs every rejection of the tuner's clauses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from conformance.assertions import (
    ClauseFailure,
    Context,
    assert_close_to_oracle,
    assert_equal,
    assert_raises_clause,
    outcome,
)
from conformance.assertions import fail as clause_fail
from conformance.drivers.base import Driver, TunerCapabilities
from conformance.harness import KEY, Bundle, claims_of, clause_variants
from conformance.models import MODELS
from conformance.recording import calls_made
from conformance.rows import SHOULD, RowSpec
from conformance.scenes import assert_warned, caught_warnings, fill_row, user_warnings
from conformance.spec.draws import small_floats
from conformance.spec.layer import Adapter, Layer, linear, op
from conformance.spec.matching import matches
from conformance.spec.record import TunerRecord, Variant
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import scale, tolerance
from conformance.strategies import build_base, layers, logical_weight, random_tensor, seeds

# ---- SPEC facts this family checks ------------------------------------------------------------------------------

# CORE-CFG-1: the base fields and their defaults (`peft_version` is filled automatically; `peft_type` is fixed by the
# class and, by DESIGN's canonical dict, not part of `config_to_dict`).
BASE_DEFAULTS: dict[str, Any] = {
    "task_type": None,
    "auto_mapping": None,
    "base_model_name_or_path": None,
    "revision": None,
    "inference_mode": False,
}
BASE_FIELDS = frozenset({*BASE_DEFAULTS, "peft_version"})
TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")  # CORE-CFG-2
SET_FIELDS = ("target_modules", "exclude_modules", "feedforward_modules")  # CORE-CFG-3
PROBABILITY_FIELDS = ("miss_dropout", "gralora_dropout", "rank_dropout", "module_dropout")  # CORE-CFG-6
DEPRECATION = (DeprecationWarning, FutureWarning, UserWarning)  # SPEC §0.1 "deprecation"

# IA3-CFG-3: SPEC §1.4 table (b), `model_type` → (target_modules, feedforward_modules). Proposed as a shared
# `conformance/spec/defaults.py` (with table (a)) for the matching family's CORE-DEF-1.
IA3_DEFAULT_TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "mistral": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gpt2": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
    "t5": (("k", "v", "wo"), ("wo",)),
    "mt5": (("k", "v", "wi_1"), ()),
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
    "roberta": (("key", "value", "output.dense"), ("output.dense",)),
    "opt": (("q_proj", "k_proj", "fc2"), ("fc2",)),
    "bart": (("q_proj", "v_proj", "fc2"), ("fc2",)),
    "bloom": (("query_key_value", "mlp.dense_4h_to_h"), ("mlp.dense_4h_to_h",)),
    "gpt_neox": (("query_key_value", "dense_4h_to_h"), ("dense_4h_to_h",)),
    "falcon": (("query_key_value", "dense_4h_to_h"), ("dense_4h_to_h",)),
}

# Clauses of another tuner's chapter that do not carry over to a tuner checking that chapter (MiSS checks BONE-*:
# MISS-MATH-1 carries Bone's mathematics over, MISS-CFG-2/3 its init values and errors, but not these).
NOT_CARRIED = {
    "BONE-CFG-1": "MiSS's own table, defaults and peft_type are MISS-CFG-1's",
    "BONE-CFG-4": "MISS-CFG-1 requires MiSS configs not to warn about deprecation",
}
NO_DEPRECATION_WARNING = frozenset({"MISS-CFG-1"})  # the …-CFG-1 clauses that also forbid a deprecation warning

CONSTRUCTION, INJECTION, EITHER = "at construction", "at injection", "no later than injection"
FIT, MISFIT = "fit", "misfit"  # module keys of the two-layer models of layer-dependent rejections
# The model config-only rules are injected into: two layers (a config-only error must come before ANY layer is
# modified, CORE-CFG-4), wide enough for every tuner's default r (Bone/MiSS: r ≤ in).
WIDE = linear(64, 64)
TWO_WIDE = {KEY: WIDE, "other": WIDE}


# ---- small helpers ----------------------------------------------------------------------------------------------


def context(row: RowSpec, driver: Driver, config: dict | None = None, seed: int | None = None) -> Context:
    return Context(row.clause, row.tuner, driver.name, dict(config or {}), seed=seed)


def canonical(driver: Driver, cfg: object) -> dict:
    """`config_to_dict` without `peft_type` (DESIGN: the canonical dict leaves it out; a driver may still add it)."""
    return {k: v for k, v in driver.config_to_dict(cfg).items() if k != "peft_type"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} {value!r} has no JSON form")


def json_form(ctx: Context, what: str, fields: dict, peft_type: str | None) -> dict:
    """The JSON a config file holds for `fields` (CORE-CFG-3/7: sets written as lists, here sorted, so that two forms
    compare equal up to the order of sets), with `peft_type`."""
    payload = {k: v for k, v in fields.items() if k != "peft_type"}
    if peft_type is not None:
        payload["peft_type"] = peft_type
    try:
        return json.loads(json.dumps(payload, default=_jsonable))
    except TypeError as exc:
        clause_fail(ctx, f"{what} has no JSON form: {exc}")
        raise AssertionError from exc  # unreachable: fail() raises


def stored_form(name: str, value: Any) -> Any:
    """A value as the config should store it: lists of CORE-CFG-3's fields become sets."""
    return set(value) if name in SET_FIELDS and isinstance(value, (list, tuple)) else value


def assert_stored(ctx: Context, what: str, stored: Any, given_value: Any, name: str) -> None:
    """`stored` is `given_value` as the config stores it: equal, of the same type for scalars; a set (any set type) for
    CORE-CFG-3's list fields."""
    expected = stored_form(name, given_value)
    if isinstance(expected, set):
        if not isinstance(stored, (set, frozenset)):
            clause_fail(
                ctx, f"{what} = {stored!r} ({type(stored).__name__}), but should be stored as a set {expected!r}"
            )
        assert_equal(ctx, what, set(stored), expected)
        return
    assert_equal(ctx, what, stored, expected)
    if isinstance(expected, (bool, int, float, str)):
        assert_equal(ctx, f"type of {what}", type(stored).__name__, type(expected).__name__)


def names_any(message: str, names: Iterable[str]) -> bool:
    """Whether `message` names one of `names` as a whole word, case-insensitively (SPEC §0.1; a field `r` is not any
    letter r)."""
    return any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", message, re.IGNORECASE) for n in names)


def _rethrow(exc: BaseException) -> None:
    raise exc


def assert_rejects(
    ctx: Context,
    what: str,
    call: Callable[[], Any],
    names: tuple[str, ...],
    exceptions: tuple[type[BaseException], ...] = (ValueError,),
) -> None:
    """`call` raises one of `exceptions` (through `assert_raises_clause`) whose message names one of `names` as a word.
    (Proposed for assertions.py: `assert_raises_clause(..., subject=str | tuple, what=...)` with whole-word match.)"""
    __tracebackhide__ = True
    before = calls_made()
    try:
        exc = assert_raises_clause(ctx, exceptions, "", call)
    except ClauseFailure as failure:
        message = str(failure).replace("(subject '')", f"(naming one of {list(names)})")
        raise ClauseFailure(f"{what}: {message}", failure.context, failure.discrepancy) from None
    if not names_any(str(exc), names):
        message = f"{what}: the {type(exc).__name__} raised names none of {list(names)}: {exc}"
        clause_fail(ctx, message, outcome("unnamed", names, type(exc).__name__, before))


def call_catching(call: Callable[[], Any]) -> tuple[Any, list]:
    """`call()`'s result and every warning it emitted."""
    result: list = []
    caught = caught_warnings(lambda: result.append(call()))
    return result[0], caught


def warning_lines(caught: list) -> list[str]:
    return [f"{w.category.__name__}: {w.message}" for w in caught]


# ---- models of our own ------------------------------------------------------------------------------------------


def bundle(geometry: dict[str, Layer], seed: int, dtype: str = "float32") -> Bundle:
    return Bundle({key: build_base(layer, dtype, seed + 7 * i) for i, (key, layer) in enumerate(geometry.items())})


@dataclass
class Snapshot:
    modules: dict[str, nn.Module]
    tensors: dict[str, torch.Tensor]
    trainable: dict[str, bool]


def snapshot(model: nn.Module) -> Snapshot:
    return Snapshot(
        dict(model.named_modules()),
        {name: value.detach().clone() for name, value in model.state_dict().items()},
        {name: p.requires_grad for name, p in model.named_parameters()},
    )


def assert_untouched(ctx: Context, what: str, model: nn.Module, before: Snapshot, under: str | None) -> None:
    """SPEC §0.1 / CORE-CFG-4: the module at `under` (None: the whole model) is the same object with the same
    sub-modules, tensors (bitwise) and `requires_grad` flags as before the rejected call."""
    __tracebackhide__ = True

    def inside(name: str) -> bool:
        return under is None or name == under or name.startswith(under + ".")

    where = "the model" if under is None else f"module {under!r}"
    now = dict(model.named_modules())
    for key, module in before.modules.items():
        if inside(key) and now.get(key) is not module:
            got = type(now[key]).__name__ if key in now else "nothing"
            clause_fail(
                ctx, f"{what}: {where} was modified ({key or 'the root'!r} is now {got}), but should be as before"
            )
    added = sorted(k for k in now if inside(k) and k not in before.modules)
    if added:
        clause_fail(ctx, f"{what}: {where} was modified (new sub-modules {added}), but should be as before")
    state = model.state_dict()
    for name, value in before.tensors.items():
        if not inside(name):
            continue
        if name not in state:
            clause_fail(ctx, f"{what}: {where} lost the tensor {name!r}")
        assert_equal(ctx, f"{what}: {name}", state[name].detach(), value)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, flag in before.trainable.items():
        if inside(name):
            assert_equal(ctx, f"{what}: requires_grad of {name}", flags.get(name), flag)


def module_layer(module: nn.Module) -> Layer | None:
    """The oracle's geometry of a torch Linear or transformers Conv1D (None for other kinds)."""
    if isinstance(module, nn.Linear):
        return linear(module.in_features, module.out_features)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        n_in, n_out = module.weight.shape
        return linear(n_in, n_out, "hf_conv1d")
    return None


# ---- the validation catalogue -----------------------------------------------------------------------------------


@dataclass
class Rejection:
    """An invalid config (canonical fields; `target_modules` defaults to the model's keys) that `rule` rejects with
    ValueError naming one of `names`, `when` (CONSTRUCTION, EITHER or INJECTION), injected into a model of
    `geometry`; `offending`: the key whose layer or key the rule depends on (None: a config-only rule)."""

    rule: str
    what: str
    config: dict
    names: tuple[str, ...]
    when: str = EITHER
    geometry: dict[str, Layer] = field(default_factory=lambda: dict(TWO_WIDE))
    offending: str | None = None


@dataclass
class Acceptance:
    """A valid config near `rule`'s boundary: constructed, and (`inject`) injected into every key of `geometry`;
    `selects`: the parameters' shapes and zero-init follow the oracle for the config (e.g. `init_weights` selecting
    the variant, BONE-CFG-2)."""

    rule: str
    what: str
    config: dict
    geometry: dict[str, Layer] = field(default_factory=lambda: dict(TWO_WIDE))
    inject: bool = True
    selects: bool = False


Cases = tuple[list[Rejection], list[Acceptance]]


def plain_model_fields(record: TunerRecord) -> dict:
    """Fields a config needs on a model without `model_type` besides its targets: IA3's `feedforward_modules` has no
    default there (IA3-CFG-3), `[]` means none."""
    return {"feedforward_modules": []} if "feedforward_modules" in record.defaults else {}


def with_pinned(data: st.DataObject, pinned: Iterable[Any], strategy: st.SearchStrategy, label: str) -> list[Any]:
    """The boundary values, checked in every example (an `@example` for catalogue draws), and one drawn value."""
    return [*pinned, data.draw(strategy, label=label)]


def pair(data: st.DataObject, fit: Layer, misfit: Layer) -> dict[str, Layer]:
    """A two-layer geometry, one layer fitting the config and one not, in a drawn order (injection may adapt the
    fitting one first: SPEC §0.1 lets an injection error leave modules adapted before it)."""
    first = data.draw(st.booleans(), label="misfit first")
    return {MISFIT: misfit, FIT: fit} if first else {FIT: fit, MISFIT: misfit}


def init_values(record: TunerRecord, variants: Iterable[Variant]) -> list[Any]:
    """The values of the init field the variants stand for: True/False for variants leaving it open."""
    values: list[Any] = []
    for variant in variants:
        fixed = variant.config.get(record.init_field, None)
        for value in [fixed] if fixed is not None else [True, False]:
            if not any(value is v or (type(value) is type(v) and value == v) for v in values):
                values.append(value)
    return values


def task_type_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """CORE-CFG-2: a task_type other than None and the six names is rejected at construction."""
    strategy = st.from_regex(r"[A-Za-z]{2,6}_[A-Za-z]{2,8}", fullmatch=True).filter(lambda v: v not in TASK_TYPES)
    bad = with_pinned(data, ("causal_lm", "CAUSAL-LM", "SEQ_CLASSIFICATION", "CAUSAL_LM "), strategy, "task_type")
    rejections = [Rejection(clause, f"task_type={v!r}", {"task_type": v}, ("task_type", v), CONSTRUCTION) for v in bad]
    accepted = [Acceptance(clause, f"task_type={v!r}", {"task_type": v}, inject=False) for v in (None, *TASK_TYPES)]
    return rejections, accepted


def layer_filter_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """CORE-CFG-5: a string target_modules with a non-None layers_to_transform, or a non-None layers_pattern."""
    if not {"layers_to_transform", "layers_pattern"} <= set(record.defaults):
        return [], []
    target = data.draw(st.sampled_from([KEY, "lay.*", f"({KEY}|other)"]), label="string target_modules")
    indices = st.one_of(st.integers(0, 7), st.lists(st.integers(0, 7), max_size=3))
    layers_values = with_pinned(data, (0, []), indices, "layers_to_transform")
    patterns = with_pinned(data, ("layers",), st.sampled_from(["h", "blocks", KEY]), "layers_pattern")
    rejections = [
        Rejection(clause, f"target_modules={target!r} with layers_to_transform={v!r}",
                  {"target_modules": target, "layers_to_transform": v}, ("layers_to_transform",))
        for v in layers_values
    ] + [
        Rejection(clause, f"target_modules={target!r} with layers_pattern={p!r}",
                  {"target_modules": target, "layers_pattern": p}, ("layers_pattern",))
        for p in patterns
    ]  # fmt: skip
    both = {"layers_to_transform": layers_values[-1], "layers_pattern": patterns[-1]}
    rejections.append(
        Rejection(clause, f"target_modules={target!r} with {both}", {"target_modules": target, **both},
                  ("layers_to_transform", "layers_pattern"))
    )  # fmt: skip
    accepted = [
        Acceptance(clause, f"target_modules=[{KEY!r}] with {both}", {"target_modules": [KEY], **both}, {KEY: WIDE})
    ]
    return rejections, accepted


def probability_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """CORE-CFG-6: a probability field outside [0, 1] is rejected no later than injection; 0 and 1 are probabilities.
    The message names the field or the value (SPEC §0.1: the clause names no subject)."""
    outside = st.one_of(
        st.floats(min_value=-10, max_value=0, exclude_max=True), st.floats(min_value=1, max_value=10, exclude_min=True)
    )
    rejections, accepted = [], []
    for name in (f for f in PROBABILITY_FIELDS if f in record.defaults):
        for value in with_pinned(data, (-1e-9, 1.0000001, -0.5, 2.0), outside, f"{name} outside [0, 1]"):
            rejections.append(Rejection(clause, f"{name}={value!r}", {name: value}, (name, repr(value))))
        accepted += [Acceptance(clause, f"{name}={value!r}", {name: value}) for value in (0.0, 1.0)]
    return rejections, accepted


def init_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """BONE-CFG-2, MISS-CFG-2: the init field selects the variant (the values of the clause's variants, each adapting
    with the variant's shapes and zero/random init); any other value is rejected naming the field."""
    name = record.init_field
    allowed = init_values(record, record.variants)
    strategy = st.from_regex(r"[a-z]{1,8}", fullmatch=True)
    pinned = ("BAT", "Bat", "mini", "MINI", "random", "", "true", "gaussian", "bone")
    drawn = with_pinned(data, pinned, strategy, f"invalid {name}")
    bad = [v for v in drawn if v not in allowed]
    rejections = [Rejection(clause, f"{name}={v!r}", {name: v}, (name,)) for v in bad]
    accepted = []
    layer = data.draw(layers("linear"), label="layer")
    for variant in clause_variants(clause, record, claims):
        config = data.draw(record.configs(layer, variant, None), label=f"{variant.name} config")
        for value in init_values(record, [variant]):
            accepted.append(
                Acceptance(clause, f"{name}={value!r} ({variant.name})", {**config, name: value}, {KEY: layer},
                           selects=True)
            )  # fmt: skip
    return rejections, accepted


def _variant(record: TunerRecord, claims: TunerCapabilities, clause: str, name: str) -> Variant | None:
    return next((v for v in clause_variants(clause, record, claims) if v.name == name), None)


def block_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """BONE-CFG-5 (and MISS-CFG-3): r ≤ 0 no later than injection; at injection r > in, and for BAT in % r or
    out % r; r = in and BAT tiles that fit are accepted."""
    rejections = [
        Rejection(clause, f"r={r}", {"r": r}, ("r",)) for r in with_pinned(data, (0, -1), st.integers(-8, 0), "r <= 0")
    ]
    n_in, n_out = data.draw(st.integers(1, 6), label="in"), data.draw(st.integers(1, 6), label="out")
    r = n_in + data.draw(st.integers(1, 3), label="r - in")
    rejections.append(
        Rejection(clause, f"r={r} > in_features={n_in}", {"r": r}, ("r",), INJECTION,
                  pair(data, linear(r, n_out), linear(n_in, n_out)), MISFIT)
    )  # fmt: skip
    accepted = [Acceptance(clause, f"r = in_features = {n_in}", {"r": n_in}, {KEY: linear(n_in, n_out)})]
    bat = _variant(record, claims, clause, "bat")
    if bat is not None:
        r = data.draw(st.integers(2, 4), label="BAT r")
        rest_in, rest_out = data.draw(
            st.tuples(st.integers(0, r - 1), st.integers(0, r - 1)).filter(any), label="in % r, out % r"
        )
        n_in = r * data.draw(st.integers(1, 3), label="in // r") + rest_in
        n_out = r * data.draw(st.integers(1, 3), label="out // r") + rest_out
        config = {**bat.config, "r": r}
        rejections.append(
            Rejection(clause, f"BAT r={r} on {n_in}→{n_out}", config, ("r",), INJECTION,
                      pair(data, linear(2 * r, r), linear(n_in, n_out)), MISFIT)
        )  # fmt: skip
        accepted.append(Acceptance(clause, f"BAT r={r} on {2 * r}→{r}", config, {KEY: linear(2 * r, r)}))
    return rejections, accepted


def mini_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """MISS-CFG-3: BONE-CFG-5's errors, and with "mini" mini_r < 1 (no later than injection) and out % mini_r ≠ 0 (at
    injection); mini_r = out is accepted."""
    rejections, accepted = block_cases(clause, record, claims, data)
    mini = _variant(record, claims, clause, "mini")
    if mini is None:
        return rejections, accepted
    for value in with_pinned(data, (0, -1), st.integers(-4, 0), "mini_r < 1"):
        rejections.append(Rejection(clause, f"mini_r={value}", {**mini.config, "r": 1, "mini_r": value}, ("mini_r",)))
    mini_r = data.draw(st.integers(2, 5), label="mini_r")
    n_out = mini_r * data.draw(st.integers(0, 2), label="out // mini_r") + data.draw(
        st.integers(1, mini_r - 1), label="out % mini_r"
    )
    n_in = data.draw(st.integers(1, 6), label="in")
    config = {**mini.config, "r": 1, "mini_r": mini_r}
    rejections.append(
        Rejection(clause, f"mini_r={mini_r} on out_features={n_out}", config, ("mini_r",), INJECTION,
                  pair(data, linear(n_in, 2 * mini_r), linear(n_in, n_out)), MISFIT)
    )  # fmt: skip
    accepted.append(
        Acceptance(clause, f"mini_r = out_features = {n_out}", {**config, "mini_r": n_out}, {KEY: linear(n_in, n_out)})
    )
    return rejections, accepted


def pattern_needs_layers_cases(
    clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject
) -> Cases:
    """HRA-CFG-2, LOHA-CFG-2: a truthy layers_pattern with layers_to_transform=None is rejected at construction."""
    patterns = st.one_of(
        st.sampled_from(["h", "blocks"]), st.lists(st.sampled_from(["h", "layers"]), min_size=1, max_size=2)
    )
    rejections = [
        Rejection(clause, f"layers_pattern={p!r} without layers_to_transform", {"layers_pattern": p},
                  ("layers_pattern", "layers_to_transform"), CONSTRUCTION)
        for p in with_pinned(data, ("layers", ["layers"]), patterns, "layers_pattern")
    ]  # fmt: skip
    return rejections, []


def ignored_pattern_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """BONE-CFG-3: layers_pattern without layers_to_transform is accepted and ignored (a key without a layer index is
    still adapted)."""
    pattern = data.draw(st.sampled_from(["layers", "h", "blocks"]), label="layers_pattern")
    return [], [
        Acceptance(clause, f"layers_pattern={pattern!r} without layers_to_transform", {"layers_pattern": pattern})
    ]


def positive_r_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """HRA-CFG-3, LOHA-CFG-3: r ≤ 0 is rejected no later than injection."""
    values = with_pinned(data, (0, -1), st.integers(-8, 0), "r <= 0")
    return [Rejection(clause, f"r={r}", {"r": r}, ("r",)) for r in values], []


def hra_rank_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """HRA-CFG-3: r ≤ 0 rejected; r > d allowed in every claimed variant (with and without Gram–Schmidt)."""
    rejections, _ = positive_r_cases(clause, record, claims, data)
    d, n_out = data.draw(st.integers(1, 5), label="d"), data.draw(st.integers(1, 5), label="out")
    r = d + data.draw(st.integers(1, 3), label="r - d")
    accepted = [
        Acceptance(clause, f"r={r} > d={d} ({v.name})", {**v.config, "r": r}, {KEY: linear(d, n_out)})
        for v in clause_variants(clause, record, claims)
    ]
    return rejections, accepted


def loha_rank_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """LOHA-CFG-3: a resolved r ≤ 0, from `r` or from a `rank_pattern` entry, is rejected no later than injection
    (the pattern's module left untouched)."""
    rejections, _ = positive_r_cases(clause, record, claims, data)
    geometry = pair(data, linear(4, 3), linear(4, 3))
    for value in with_pinned(data, (0,), st.integers(-4, 0), "rank_pattern value <= 0"):
        rejections.append(
            Rejection(clause, f"rank_pattern={{{MISFIT!r}: {value}}}", {"rank_pattern": {MISFIT: value}},
                      ("r", "rank_pattern"), EITHER, geometry, MISFIT)
        )  # fmt: skip
    accepted = [Acceptance(clause, f"rank_pattern={{{MISFIT!r}: 2}}", {"rank_pattern": {MISFIT: 2}}, geometry)]
    return rejections, accepted


def gralora_k_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """GRALORA-CFG-2: gralora_k ≤ 0 is rejected at construction (whatever r is)."""
    values = with_pinned(data, (0, -1), st.integers(-6, 0), "gralora_k <= 0")
    rejections = [Rejection(clause, f"gralora_k={k}", {"gralora_k": k}, ("gralora_k",), CONSTRUCTION) for k in values]
    return rejections, [Acceptance(clause, "gralora_k=1, r=1", {"gralora_k": 1, "r": 1}, {KEY: linear(3, 5)})]


def gralora_divisible_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """GRALORA-CFG-3: r % gralora_k ≠ 0 is rejected at construction; multiples of k are accepted."""
    k = data.draw(st.integers(2, 5), label="gralora_k")
    r = k * data.draw(st.integers(0, 3), label="r // k") + data.draw(st.integers(1, k - 1), label="r % k")
    rejection = Rejection(clause, f"r={r}, gralora_k={k}", {"r": r, "gralora_k": k}, ("r", "gralora_k"), CONSTRUCTION)
    multiple = {"r": k * (r // k + 1), "gralora_k": k}
    return [rejection], [Acceptance(clause, f"r={multiple['r']}, gralora_k={k}", multiple, {KEY: linear(k, 2 * k)})]


def gralora_range_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """GRALORA-CFG-4: r ≤ 0 and hybrid_r < 0 no later than injection (with CORE-CFG-5/6); hybrid_r = 0 and r = 1 are
    accepted."""
    rejections = [
        Rejection(clause, f"r={r} (gralora_k=1)", {"r": r, "gralora_k": 1}, ("r",))
        for r in with_pinned(data, (0, -2), st.integers(-8, 0), "r <= 0")
    ] + [
        Rejection(clause, f"hybrid_r={h}", {"hybrid_r": h}, ("hybrid_r",))
        for h in with_pinned(data, (-1,), st.integers(-8, -1), "hybrid_r < 0")
    ]
    accepted = [Acceptance(clause, "r=1, gralora_k=1, hybrid_r=0", {"r": 1, "gralora_k": 1, "hybrid_r": 0})]
    for extra in (layer_filter_cases, probability_cases):
        more = extra(clause, record, claims, data)
        rejections += more[0]
        accepted += more[1]
    return rejections, accepted


def gralora_size_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """GRALORA-CFG-5: at injection in % k ≠ 0 and out % k ≠ 0; r may exceed in/k."""
    k = data.draw(st.integers(2, 4), label="gralora_k")
    a, b = data.draw(st.integers(1, 3), label="in // k"), data.draw(st.integers(1, 3), label="out // k")
    rest = data.draw(st.integers(1, k - 1), label="remainder")
    config = {"gralora_k": k, "r": k}
    fit = linear(k * a, k * b)
    rejections = [
        Rejection(clause, f"in_features={k * a + rest}, gralora_k={k}", config, ("in_features", "gralora_k"),
                  INJECTION, pair(data, fit, linear(k * a + rest, k * b)), MISFIT),
        Rejection(clause, f"out_features={k * b + rest}, gralora_k={k}", config, ("out_features", "gralora_k"),
                  INJECTION, pair(data, fit, linear(k * a, k * b + rest)), MISFIT),
    ]  # fmt: skip
    big = {"gralora_k": k, "r": k * (a + 1)}
    accepted = [Acceptance(clause, f"r={big['r']} > in/k={a}", big, {KEY: fit})]
    return rejections, accepted


def feedforward_subset_cases(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
    """IA3-CFG-2: list target_modules and feedforward_modules with feedforward ⊄ target are rejected at construction;
    a subset, or either being a string, is accepted."""
    names = ["q_proj", "k_proj", "v_proj", "down_proj", "mlp.fc2"]
    target = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True), label="target_modules")
    inside = data.draw(st.lists(st.sampled_from(target), max_size=2, unique=True), label="feedforward inside")
    outside = data.draw(st.sampled_from(["up_proj", "fc2", "proj", "mlp"]), label="feedforward outside")
    bad = {"target_modules": target, "feedforward_modules": [*inside, outside]}
    rejections = [Rejection(clause, f"{bad}", bad, ("feedforward_modules",), CONSTRUCTION)]
    accepted = [
        Acceptance(clause, "feedforward ⊆ target", {"target_modules": target, "feedforward_modules": inside},
                   inject=False),
        Acceptance(clause, "string target_modules",
                   {"target_modules": "|".join(target), "feedforward_modules": [outside]}, inject=False),
        Acceptance(clause, "string feedforward_modules", {"target_modules": target, "feedforward_modules": outside},
                   inject=False),
    ]  # fmt: skip
    return rejections, accepted


def union(*builders: Callable[..., Cases]) -> Callable[..., Cases]:
    def build(clause: str, record: TunerRecord, claims: TunerCapabilities, data: st.DataObject) -> Cases:
        rejections: list[Rejection] = []
        accepted: list[Acceptance] = []
        for builder in builders:
            more = builder(clause, record, claims, data)
            rejections += more[0]
            accepted += more[1]
        return rejections, accepted

    return build


# Per validation clause: its cases (a clause that says "CORE-CFG-5 and CORE-CFG-6 apply" includes theirs).
CASES: dict[str, Callable[[str, TunerRecord, TunerCapabilities, st.DataObject], Cases]] = {
    "CORE-CFG-2": task_type_cases,
    "CORE-CFG-5": layer_filter_cases,
    "CORE-CFG-6": probability_cases,
    "BONE-CFG-2": init_cases,
    "BONE-CFG-3": union(layer_filter_cases, ignored_pattern_cases),
    "BONE-CFG-5": block_cases,
    "MISS-CFG-2": union(init_cases, layer_filter_cases, probability_cases),
    "MISS-CFG-3": mini_cases,
    "GRALORA-CFG-2": gralora_k_cases,
    "GRALORA-CFG-3": gralora_divisible_cases,
    "GRALORA-CFG-4": gralora_range_cases,
    "GRALORA-CFG-5": gralora_size_cases,
    "HRA-CFG-2": union(layer_filter_cases, pattern_needs_layers_cases),
    "HRA-CFG-3": hra_rank_cases,
    "IA3-CFG-2": feedforward_subset_cases,
    "LOHA-CFG-2": union(layer_filter_cases, probability_cases, pattern_needs_layers_cases),
    "LOHA-CFG-3": loha_rank_cases,
}


def applies(clause: str, record: TunerRecord) -> bool:
    prefix = clause.split("-", 1)[0]
    return prefix == "CORE" or prefix in record.clause_prefixes


def check_rejection(
    base_ctx: Context, driver: Driver, record: TunerRecord, case: Rejection, seed: int, when: str | None = None
) -> None:
    """The case's config is rejected with ValueError naming one of its names, `when` (default: the case's), and a
    rejected injection leaves the model (a config-only rule) or the offending module untouched (CORE-CFG-4)."""
    __tracebackhide__ = True
    when = when or case.when
    config = {"target_modules": list(case.geometry), **plain_model_fields(record), **case.config}
    ctx = replace(base_ctx, config=config, seed=seed)
    what = f"{case.rule}: {case.what}"
    try:
        cfg = driver.make_config(record.tuner, config)
    except Exception as exc:  # rejected at construction: judged like any rejection
        if when == INJECTION:
            clause_fail(
                ctx,
                f"{what}: make_config raised {type(exc).__name__}({exc}), but the rule depends on a layer and must be "
                "checked at injection (CORE-CFG-4); the config alone is valid",
            )
        assert_rejects(ctx, f"{what} (raised at construction)", lambda exc=exc: _rethrow(exc), case.names)
        return
    if when == CONSTRUCTION:
        clause_fail(ctx, f"{what}: make_config accepted the config, but should reject it with ValueError {when}")
    model = bundle(case.geometry, seed)
    before = snapshot(model)
    assert_rejects(ctx, f"{what}, at injection", lambda: driver.adapt(model, record.tuner, cfg), case.names)
    assert_untouched(ctx, f"{what}: after the rejected injection", model, before, case.offending)


def check_acceptance(base_ctx: Context, driver: Driver, record: TunerRecord, case: Acceptance, seed: int) -> None:
    """The case's config is accepted (and injected into every key of its geometry; with `selects`, the parameters have
    the oracle's shapes and zero-init)."""
    __tracebackhide__ = True
    config = {"target_modules": list(case.geometry), **plain_model_fields(record), **case.config}
    ctx = replace(base_ctx, config=config, seed=seed)
    what = f"{case.rule}: {case.what}"
    try:
        cfg = driver.make_config(record.tuner, config)
    except Exception as exc:
        clause_fail(ctx, f"{what}: make_config raised {type(exc).__name__}({exc}), but the config is valid")
    if not case.inject:
        return
    model = bundle(case.geometry, seed)
    try:
        adapted = driver.adapt(model, record.tuner, cfg)
    except Exception as exc:
        clause_fail(
            ctx, f"{what}: adapt raised {type(exc).__name__}({exc}), but the config is valid for {case.geometry}"
        )
    assert_equal(ctx, f"{what}: adapted modules", sorted(driver.adapted_modules(adapted)), sorted(case.geometry))
    if not case.selects:
        return
    for key, layer in case.geometry.items():
        resolved = record.resolve({**record.defaults, **config}, key)
        params = driver.get_params(adapted, key, "default")
        shapes = {name: tuple(t.shape) for name, t in params.items()}
        assert_equal(ctx, f"{what}: parameter shapes on {key!r}", shapes, record.oracle.param_shapes(resolved, layer))
        for name, init in record.oracle.init_distributions(resolved, layer).items():
            zeros = not bool(params[name].any())
            assert_equal(ctx, f"{what}: {name} on {key!r} is all zeros", zeros, init.kind == "zeros")


def skip_if_not_carried(row: RowSpec) -> None:
    """A clause of another tuner's chapter listed in NOT_CARRIED does not apply to this tuner: an honest skip."""
    clause = row.clause.removesuffix(SHOULD)
    home = RECORDS.get(clause.split("-", 1)[0].lower())
    if home is not None and home.tuner != row.tuner and clause in NOT_CARRIED:
        pytest.skip(f"{clause} does not carry over to {row.tuner}: {NOT_CARRIED[clause]}")


# ---- drawn valid configs ----------------------------------------------------------------------------------------

MODULE_NAMES = ["layer", "q_proj", "v_proj", "mlp.down_proj", "fc1", "c_attn", "wo"]
MODULE_PATTERNS = [r"layer", r".*\.q_proj", r"(q|v)_proj", r"model\..*"]


@st.composite
def module_rule(draw: st.DrawFn, label: str, allow_none: bool = False) -> list[str] | str | None:
    options = [st.lists(st.sampled_from(MODULE_NAMES), max_size=4), st.sampled_from(MODULE_PATTERNS)]
    if allow_none:
        options.insert(0, st.none())
    return draw(st.one_of(options), label=label)


def valid_config(row: RowSpec, driver: Driver, data: st.DataObject) -> dict:
    """A valid canonical config of the row's tuner: the record's drawn config for a drawn variant and layer, with the
    fields CORE §1 describes drawn where the tuner has them (record.defaults), valid together, and the base fields."""
    row = fill_row(row, driver, data)
    record = RECORDS[row.tuner]
    layer = data.draw(layers(row.layer_kind), label="layer")
    init = data.draw(st.sampled_from(["identity", "random"]), label="init")
    config = dict(data.draw(record.configs(layer, record.variant(row.variant), init), label="config"))
    fields = record.defaults
    target = data.draw(module_rule("target_modules"))
    config["target_modules"] = target
    if "exclude_modules" in fields:
        config["exclude_modules"] = data.draw(module_rule("exclude_modules", allow_none=True))
    if "feedforward_modules" in fields:  # IA3-CFG-2: a list inside a list target
        inside = st.lists(st.sampled_from(target), max_size=2, unique=True) if target else st.just([])
        rule = inside if isinstance(target, list) else module_rule("feedforward_modules", allow_none=True)
        config["feedforward_modules"] = data.draw(rule, label="feedforward_modules")
    if "modules_to_save" in fields:
        saved = st.none() | st.lists(st.sampled_from(["classifier", "score", "lm_head"]), max_size=2, unique=True)
        config["modules_to_save"] = data.draw(saved, label="modules_to_save")
    if "layers_to_transform" in fields and isinstance(target, list):  # CORE-CFG-5: never with a string target
        indices = st.none() | st.integers(0, 3) | st.lists(st.integers(0, 3), max_size=3)
        config["layers_to_transform"] = data.draw(indices, label="layers_to_transform")
        if config["layers_to_transform"] is not None:
            config["layers_pattern"] = data.draw(st.none() | st.sampled_from(["layers", "h"]), label="layers_pattern")
    if "bias" in fields:
        config["bias"] = data.draw(st.sampled_from(["none", "all", "lora_only"]), label="bias")
    for name, default in fields.items():
        if isinstance(default, dict):  # per-module overrides (LoHa's rank_pattern, alpha_pattern)
            keys = st.sampled_from(["layer", "q_proj", "^fc$"])
            config[name] = data.draw(st.dictionaries(keys, st.integers(1, 4), max_size=2), label=name)
    config["task_type"] = data.draw(st.sampled_from([None, *TASK_TYPES]), label="task_type")
    config["inference_mode"] = data.draw(st.booleans(), label="inference_mode")
    config["base_model_name_or_path"] = data.draw(
        st.none() | st.just("org/tiny-model"), label="base_model_name_or_path"
    )
    config["revision"] = data.draw(st.none() | st.just("main"), label="revision")
    mapping = {"base_model_class": "Holder", "parent_library": "conformance.harness"}
    config["auto_mapping"] = data.draw(st.none() | st.just(mapping), label="auto_mapping")
    config["peft_version"] = data.draw(st.none() | st.just("0.21.2"), label="peft_version")
    return config


# ---- CORE-CFG-1 and the tables of §§2–6 -------------------------------------------------------------------------


@pytest.mark.contract("CORE-CFG-1")
def test_base_fields(row, driver):
    """CORE-CFG-1: every config has the base fields with their defaults (`peft_version` filled with a string when
    None) and keeps explicitly given values."""
    ctx = context(row, driver)
    fields = canonical(driver, driver.make_config(row.tuner, {}))
    for name, default in BASE_DEFAULTS.items():
        if name not in fields:
            clause_fail(ctx, f"the config has no base field {name!r} (fields: {sorted(fields)})")
        assert_stored(ctx, f"default {name}", fields[name], default, name)
    version = fields.get("peft_version")
    if not isinstance(version, str) or not version:
        clause_fail(ctx, f"peft_version = {version!r} when None is given, but should be filled with a version string")
    explicit = {
        "task_type": "CAUSAL_LM",
        "auto_mapping": {"base_model_class": "Holder", "parent_library": "conformance.harness"},
        "peft_version": "0.21.2",
        "base_model_name_or_path": "org/tiny-model",
        "revision": "main",
        "inference_mode": True,
    }
    ctx = context(row, driver, explicit)
    fields = canonical(driver, driver.make_config(row.tuner, explicit))
    for name, value in explicit.items():
        assert_stored(ctx, f"{name} given as {value!r}", fields.get(name), value, name)


@pytest.mark.contract("BONE-CFG-1", "MISS-CFG-1", "GRALORA-CFG-1", "HRA-CFG-1", "IA3-CFG-1", "LOHA-CFG-1")
@given(data=st.data())
def test_table_fields(row, driver, data):
    """…-CFG-1: the fields are exactly the tuner's table plus the base fields, with the table's defaults (and types);
    drawn valid values are stored as given (lists of CORE-CFG-3's fields as sets); the JSON `peft_type` is the
    tuner's. MISS-CFG-1: constructing a MiSS config emits no deprecation warning."""
    skip_if_not_carried(row)
    record = RECORDS[row.tuner]
    ctx = context(row, driver)
    cfg, caught = call_catching(lambda: driver.make_config(row.tuner, {}))
    fields = canonical(driver, cfg)
    assert_equal(ctx, "the config's fields", sorted(fields), sorted(set(record.defaults) | BASE_FIELDS))
    for name, default in record.defaults.items():
        assert_stored(ctx, f"default {name}", fields[name], default, name)
    if row.clause in NO_DEPRECATION_WARNING:
        deprecations = [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
        deprecations += user_warnings(caught, "deprecat")
        if deprecations:
            clause_fail(ctx, f"constructing the config warned {warning_lines(deprecations)}, but should not deprecate")
    config = valid_config(row, driver, data)
    ctx = context(row, driver, config)
    fields = canonical(driver, driver.make_config(row.tuner, config))
    for name, value in config.items():
        if name == "peft_version" and value is None:
            continue  # filled automatically (CORE-CFG-1)
        assert_stored(ctx, f"{name} given as {value!r}", fields.get(name), value, name)
    loaded = canonical(driver, driver.config_from_dict(row.tuner, {"peft_type": record.peft_type}))
    assert_equal(
        ctx, f"fields of the config loaded from peft_type {record.peft_type!r}", sorted(loaded), sorted(fields)
    )


# ---- validation (CORE-CFG-2, 4, 5, 6 and the tuners' validation clauses) ----------------------------------------


@pytest.mark.contract(
    "CORE-CFG-2", "CORE-CFG-4", "CORE-CFG-5", "CORE-CFG-6",
    "BONE-CFG-2", "BONE-CFG-3", "BONE-CFG-5", "MISS-CFG-2", "MISS-CFG-3",
    "GRALORA-CFG-2", "GRALORA-CFG-3", "GRALORA-CFG-4", "GRALORA-CFG-5",
    "HRA-CFG-2", "HRA-CFG-3", "IA3-CFG-2", "LOHA-CFG-2", "LOHA-CFG-3",
)  # fmt: skip
@given(data=st.data())
def test_validation(row, driver, data):
    """The row's clause rejects its invalid configs with ValueError naming the field (or value), at the time it states
    (CORE-CFG-4 otherwise: no later than injection, before any layer is modified; a layer-dependent error at injection,
    before that layer is modified), and accepts the valid configs at its boundary. CORE-CFG-4's row runs every
    rejection of every validation clause the tuner has, at the time CORE-CFG-4 allows."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    seed = data.draw(seeds, label="seed")
    ctx = context(row, driver, seed=seed)
    if row.clause == "CORE-CFG-4":
        rejections = []
        for clause, build in CASES.items():
            if applies(clause, record):
                rejections += build(clause, record, claims, data)[0]
        for case in rejections:  # "at construction" is the clause's own (checked in its row); EITHER here
            check_rejection(ctx, driver, record, case, seed, EITHER if case.when == CONSTRUCTION else None)
        return
    rejections, accepted = CASES[row.clause](row.clause, record, claims, data)
    if not rejections and not accepted:
        pytest.skip(
            f"{row.clause} does not apply to {row.tuner}: its config has none of the fields the clause is about"
        )
    for case in rejections:
        check_rejection(ctx, driver, record, case, seed)
    for case in accepted:
        check_acceptance(ctx, driver, record, case, seed)


# ---- JSON: sets (CORE-CFG-3), round trip (CORE-CFG-7), unknown and absent keys (CORE-CFG-8), peft_type (CORE-CFG-9)


@pytest.mark.contract("CORE-CFG-3")
@given(data=st.data())
def test_lists_stored_as_sets(row, driver, data):
    """CORE-CFG-3: a list given for target_modules, exclude_modules or feedforward_modules (where the config has it) is
    stored as a set, a string stays a string, and the set written to JSON as a list reads back as an equal set. (That
    the implementation itself writes a list is CORE-SAVE-4's, in the files family.)"""
    record = RECORDS[row.tuner]
    present = [name for name in SET_FIELDS if name in record.defaults]
    names = st.sampled_from(MODULE_NAMES)
    target = data.draw(st.lists(names, min_size=1, max_size=5), label="target_modules list")  # duplicates allowed
    lists = {"target_modules": target}
    for name in (n for n in present if n != "target_modules"):
        pool = st.sampled_from(target) if name == "feedforward_modules" else names  # IA3-CFG-2: inside the targets
        lists[name] = data.draw(st.lists(pool, max_size=4), label=f"{name} list")
    strings = {name: data.draw(st.sampled_from(MODULE_PATTERNS), label=f"{name} string") for name in present}
    for given_fields in (lists, strings):
        config = {**plain_model_fields(record), **given_fields}
        ctx = context(row, driver, config)
        fields = canonical(driver, driver.make_config(row.tuner, config))
        for name, value in given_fields.items():
            assert_stored(ctx, f"{name} given as {value!r}", fields.get(name), value, name)
        text = json_form(ctx, "the config", fields, record.peft_type)
        reloaded = canonical(driver, driver.config_from_dict(row.tuner, text))
        for name, value in given_fields.items():
            assert_stored(ctx, f"{name} read back from JSON {text[name]!r}", reloaded.get(name), value, name)


@pytest.mark.contract("CORE-CFG-7")
@given(data=st.data())
def test_json_round_trip(row, driver, data):
    """CORE-CFG-7: the JSON form holds every field of the tuner's table plus the base fields, and JSON → config → JSON
    is equal (sets compared as sorted lists)."""
    record = RECORDS[row.tuner]
    config = valid_config(row, driver, data)
    ctx = context(row, driver, config)
    fields = canonical(driver, driver.make_config(row.tuner, config))
    assert_equal(ctx, "fields of the JSON form", sorted(fields), sorted(set(record.defaults) | BASE_FIELDS))
    first = json_form(ctx, "the config", fields, record.peft_type)
    reloaded = canonical(driver, driver.config_from_dict(row.tuner, first))
    second = json_form(ctx, "the config read back", reloaded, record.peft_type)
    assert_equal(ctx, "fields of JSON → config → JSON", sorted(second), sorted(first))
    for name, value in first.items():
        assert_equal(ctx, f"{name} after JSON → config → JSON", second[name], value)


@pytest.mark.contract("CORE-CFG-8")
@given(data=st.data())
def test_unknown_and_absent_keys(row, driver, data):
    """CORE-CFG-8: a config JSON with keys unknown to the class loads, ignores them and warns naming each; absent keys
    take their defaults (a file without peft_version loads)."""
    record = RECORDS[row.tuner]
    unknown_names = st.from_regex(r"[a-z]{3,8}_zq[a-z]{0,3}", fullmatch=True)
    unknown_values = st.one_of(st.integers(-3, 3), st.text("abc", max_size=3), st.lists(st.integers(0, 2), max_size=2))
    unknown = data.draw(st.dictionaries(unknown_names, unknown_values, min_size=1, max_size=3), label="unknown keys")
    config = valid_config(row, driver, data)
    kept = {k: v for k, v in config.items() if k != "peft_version"}
    fields = canonical(driver, driver.make_config(row.tuner, kept))
    full = json_form(context(row, driver, kept), "the config", fields, record.peft_type)
    full.pop("peft_version", None)  # an older file
    minimal = {"peft_type": record.peft_type}
    for document, expected, source in (
        (full, fields, "the file"),
        (minimal, BASE_DEFAULTS | record.defaults, "default"),
    ):
        document = {**document, **unknown}
        ctx = context(row, driver, document)
        loaded, caught = call_catching(lambda document=document: driver.config_from_dict(row.tuner, document))
        for name in unknown:
            assert_warned(ctx, f"loading a config JSON with the unknown key {name!r}", caught, name)
        got = canonical(driver, loaded)
        leaked = sorted(set(got) & set(unknown))
        if leaked:
            clause_fail(ctx, f"the unknown keys {leaked} were kept in the config, but should be ignored")
        for name, value in expected.items():
            if name != "peft_version":
                assert_stored(ctx, f"{name} loaded ({source})", got.get(name), value, name)
        version = got.get("peft_version")
        if version is not None and not isinstance(version, str):
            clause_fail(ctx, f"peft_version = {version!r} for a file without it, but should be a string or None")


@pytest.mark.contract("CORE-CFG-9")
@given(data=st.data())
def test_peft_type(row, driver, data):
    """CORE-CFG-9: the JSON `peft_type` selects the tuner (a config loaded from the tuner's peft_type has the tuner's
    fields); an unknown value is rejected with ValueError or KeyError naming it."""
    record = RECORDS[row.tuner]
    ctx = context(row, driver, {"peft_type": record.peft_type})
    loaded = canonical(driver, driver.config_from_dict(row.tuner, {"peft_type": record.peft_type}))
    expected = sorted(set(record.defaults) | BASE_FIELDS)
    assert_equal(ctx, f"fields of the config loaded from peft_type {record.peft_type!r}", sorted(loaded), expected)
    known = {r.peft_type for r in RECORDS.values()}
    strategy = st.from_regex(r"[A-Z]{2,6}_ZQ[0-9]{0,2}", fullmatch=True)
    for value in with_pinned(data, (record.peft_type + "2", ""), strategy, "unknown peft_type"):
        if value in known:
            continue
        document = {"peft_type": value}
        ctx = context(row, driver, document)
        assert_rejects(
            ctx,
            f"loading a config JSON with peft_type {value!r}",
            lambda document=document: driver.config_from_dict(row.tuner, document),
            (value,) if value else ("peft_type",),
            (ValueError, KeyError),
        )


# ---- BONE-CFG-4: the deprecation warning ------------------------------------------------------------------------


@pytest.mark.contract("BONE-CFG-4", "BONE-CFG-4.should")
def test_deprecation_warning(row, driver):
    """BONE-CFG-4: a warning about Bone's succession by MiSS has a deprecation category (SPEC §0.1:
    DeprecationWarning, FutureWarning or UserWarning). Its SHOULD part (`.should` row): constructing a Bone config
    emits such a warning naming MiSS and the checkpoint conversion (MISS-CONV-1)."""
    skip_if_not_carried(row)
    ctx = context(row, driver)
    caught = caught_warnings(lambda: driver.make_config(row.tuner, {}))
    about = [w for w in caught if re.search(r"\bmiss\b|deprecat|supersed", str(w.message), re.IGNORECASE)]
    if not row.clause.endswith(SHOULD):
        wrong = [w for w in about if not issubclass(w.category, DEPRECATION)]
        if wrong:
            clause_fail(ctx, f"the deprecation is announced as {warning_lines(wrong)}, but should use {DEPRECATION}")
        return
    complete = [
        w
        for w in about
        if issubclass(w.category, DEPRECATION)
        and re.search(r"\bmiss\b", str(w.message), re.IGNORECASE)
        and re.search(r"conver(t|sion)", str(w.message), re.IGNORECASE)
    ]
    if not complete:
        clause_fail(
            ctx,
            "constructing a Bone config should warn (a deprecation category) that Bone is superseded by MiSS and that "
            f"checkpoints convert (MISS-CONV-1); warnings emitted: {warning_lines(caught)}",
        )


# ---- IA3-CFG-3: default targets and feedforward modules ---------------------------------------------------------


def _adapted_roles(driver: Driver, record: TunerRecord, adapted: nn.Module, layers_by_key: dict[str, Layer]) -> dict:
    """Adapted key → whether its parameters have the feedforward shapes of the oracle (IA3-PARAM-1)."""
    roles = {}
    for key in driver.adapted_modules(adapted):
        shapes = {n: tuple(t.shape) for n, t in driver.get_params(adapted, key, "default").items()}
        layer = layers_by_key[key]
        feedforward = record.oracle.param_shapes({"feedforward": True}, layer)
        regular = record.oracle.param_shapes({"feedforward": False}, layer)
        roles[key] = True if shapes == feedforward else False if shapes == regular else shapes
    return roles


@pytest.mark.contract("IA3-CFG-3", scope="model")
def test_default_feedforward(row, driver):
    """IA3-CFG-3: with target_modules=None the tiny models get table 1.4(b)'s targets, and with feedforward_modules=None
    (targets given or not) its feedforward column; feedforward_modules=[] means none. On a model of unknown type a None
    target_modules, and a None feedforward_modules even with targets given, are rejected with ValueError (before the
    model is modified); `[]` there is accepted."""
    record = RECORDS[row.tuner]
    for name, tiny in MODELS.items():
        probe = tiny.build(0)
        model_type = getattr(probe.config, "model_type", None)
        if model_type not in IA3_DEFAULT_TARGETS:  # a transformers model of a type the table lacks
            ctx = context(row, driver, {"target_modules": None, "model": name})
            before = snapshot(probe)
            cfg = driver.make_config(row.tuner, {})
            what = f"target_modules=None on the tiny {name} (model_type {model_type!r}, not in table 1.4(b))"
            assert_rejects(
                ctx, what, lambda cfg=cfg, probe=probe: driver.adapt(probe, row.tuner, cfg), ("target_modules",)
            )
            assert_untouched(ctx, f"{what}: after the rejected injection", probe, before, None)
            continue
        targets, feedforward = IA3_DEFAULT_TARGETS[model_type]
        keys = {k: module_layer(m) for k, m in probe.named_modules() if module_layer(m) is not None}
        expected_keys = sorted(k for k in keys if matches(targets, k))
        cases = [
            ({}, set(feedforward)),
            ({"target_modules": list(targets)}, set(feedforward)),
            ({"feedforward_modules": []}, set()),
        ]
        for config, ff in cases:
            ctx = context(row, driver, {**config, "model": name})
            adapted = driver.adapt(tiny.build(0), row.tuner, driver.make_config(row.tuner, config))
            roles = _adapted_roles(driver, record, adapted, keys)
            assert_equal(ctx, f"modules adapted in the tiny {name} ({model_type})", sorted(roles), expected_keys)
            expected_roles = {k: matches(sorted(ff), k) for k in expected_keys}
            assert_equal(ctx, f"feedforward modules in the tiny {name}", roles, expected_roles)
    plain = {KEY: linear(4, 3)}
    unknown = [
        Rejection(row.clause, "target_modules=None on a model without model_type", {"target_modules": None},
                  ("target_modules",), INJECTION, plain),
        Rejection(row.clause, "feedforward_modules=None on a model without model_type", {"feedforward_modules": None},
                  ("feedforward_modules",), INJECTION, plain),
    ]  # fmt: skip
    ctx = context(row, driver)
    for case in unknown:
        check_rejection(ctx, driver, record, case, 0)
    check_acceptance(ctx, driver, record, Acceptance(row.clause, "feedforward_modules=[]", {}, plain, selects=True), 0)


# ---- IA3-CFG-4, LOHA-CFG-4: per-module resolution ---------------------------------------------------------------

TREE_KEYS = ("fc", "blk.fc", "blk.fc2", "blk.q_proj", "blk.sub.proj", "xfc")
TREE_IN, TREE_OUT = 4, 3
LOHA_PATTERNS = ["fc", "^fc$", r"blk\.fc", ".*fc", "proj", "q_proj", "fc2", r"sub\.proj", "nomatch_zq"]


def pattern_matches(pattern: str, key: str) -> bool:
    """LOHA-CFG-4's rule: `re.match(r"(.*\\.)?(" + P + r")$", key)`."""
    return re.match(r"(.*\.)?(" + pattern + r")$", key) is not None


def feedforward_rules(data: st.DataObject) -> list[dict]:
    """IA3-CFG-4: feedforward_modules as a string (full match) or a list (exact or dot-suffix), with every key
    targeted by a string (no subset rule, IA3-CFG-2)."""
    entries = ["fc", "blk.fc", "proj", "q_proj", "fc2", "sub.proj", "c", "xfc", "k.fc"]
    regexes = [r"fc", r".*fc", r"blk\..*", r".*\.fc2?", r"(.*\.)?proj", r"xfc|fc", r"q_proj"]
    rule = st.one_of(st.lists(st.sampled_from(entries), max_size=4, unique=True), st.sampled_from(regexes))
    target = "|".join(re.escape(k) for k in TREE_KEYS)
    # r".*fc" tells re.fullmatch from re.match (blk.fc2)
    rules = with_pinned(data, (["proj", "fc"], "fc", r".*fc"), rule, "feedforward_modules")
    return [{"target_modules": target, "feedforward_modules": r} for r in rules]


def pattern_rules(data: st.DataObject) -> list[dict]:
    """LOHA-CFG-4: rank_pattern / alpha_pattern in a drawn order (the first matching key wins)."""
    patterns = st.dictionaries(st.sampled_from(LOHA_PATTERNS), st.integers(1, 4), max_size=3)
    alphas = st.dictionaries(st.sampled_from(LOHA_PATTERNS), small_floats(0.5, 8), max_size=3)
    pinned = {
        "r": 1, "alpha": 1.0, "rank_pattern": {"fc": 2, "^fc$": 3, "nomatch_zq": 4},
        "alpha_pattern": {"^fc$": 4.0, "fc": 0.5},
    }  # fmt: skip
    drawn = {
        "r": data.draw(st.integers(1, 4), label="r"),
        "alpha": data.draw(small_floats(0.5, 8), label="alpha"),
        "rank_pattern": data.draw(patterns, label="rank_pattern"),
        "alpha_pattern": data.draw(alphas, label="alpha_pattern"),
    }
    return [{"target_modules": list(TREE_KEYS), **config} for config in (pinned, drawn)]


# Per clause: its configs, and the dict fields whose keys are patterns that warn when they match no targeted module.
RESOLUTION: dict[str, tuple[Callable[[st.DataObject], list[dict]], tuple[str, ...]]] = {
    "IA3-CFG-4": (feedforward_rules, ()),
    "LOHA-CFG-4": (pattern_rules, ("rank_pattern", "alpha_pattern")),
}


@pytest.mark.contract("IA3-CFG-4", "LOHA-CFG-4")
@given(data=st.data())
def test_per_module_resolution(row, driver, data):
    """IA3-CFG-4 (which modules are feedforward), LOHA-CFG-4 (each module's r and alpha from the first matching
    rank_pattern / alpha_pattern key; an unmatched key warns naming it): on a model of six Linear modules, every
    module's parameter shapes and output follow the oracle for the config the record resolves for its key."""
    record = RECORDS[row.tuner]
    draw_configs, warned_fields = RESOLUTION[row.clause]
    seed = data.draw(seeds, label="seed")
    layer = linear(TREE_IN, TREE_OUT)
    for config in draw_configs(data):
        config = {**record.defaults, **config}
        ctx = context(row, driver, config, seed)
        model = bundle({key: layer for key in TREE_KEYS}, seed, "float64")
        cfg = driver.make_config(row.tuner, config)
        adapted, caught = call_catching(lambda cfg=cfg, model=model: driver.adapt(model, row.tuner, cfg))
        for name in warned_fields:
            for pattern in config[name]:
                if not any(pattern_matches(pattern, key) for key in TREE_KEYS):
                    assert_warned(ctx, f"{name} key {pattern!r} matching no targeted module", caught, pattern)
        assert_equal(ctx, "adapted modules", sorted(driver.adapted_modules(adapted)), sorted(TREE_KEYS))
        generator = torch.Generator().manual_seed(seed + 2)
        adapters = {}
        for key in TREE_KEYS:
            resolved = record.resolve(config, key)
            shapes = {n: tuple(t.shape) for n, t in driver.get_params(adapted, key, "default").items()}
            expected = record.oracle.param_shapes(resolved, layer)
            what = f"parameter shapes on {key!r} (resolved {_resolved_view(resolved)})"
            assert_equal(ctx, what, shapes, expected, "shapes")
            driver.set_params(adapted, key, "default", record.perturb(resolved, layer, shapes, generator))
            params = {n: t.double() for n, t in driver.get_params(adapted, key, "default").items()}
            adapters[key] = Adapter(resolved, params)
        x = random_tensor((2, TREE_IN), "float64", seed + 1)
        with torch.no_grad():
            y = adapted.eval()(x)
        parts = []
        for key in TREE_KEYS:
            base = driver.layer_state(adapted, key).base_layer
            bias = None if base.bias is None else base.bias.detach().double()
            weight, bias = record.oracle.effective(logical_weight(base, layer), bias, layer, [adapters[key]])
            parts.append(op(x, weight, bias, layer))
        expected_y = torch.cat(parts, dim=-1)
        assert_close_to_oracle(
            context=ctx,
            what=f"output of the modules {list(TREE_KEYS)} (each {TREE_OUT} columns)",
            actual=y,
            expected=expected_y,
            tol=tolerance("N", "float64", "layer"),
            scale=scale(expected_y),
        )


def _resolved_view(resolved: dict) -> dict:
    return {k: resolved[k] for k in ("r", "alpha", "feedforward") if k in resolved}
