"""Family `lifecycle`: named adapters (SPEC §1.7 CORE-LIFE-1…5, 8…11), `modules_to_save` (CORE-MTS-1/2), `unload`
(CORE-MERGE-13), trainability (§1.9 CORE-TRAIN-1…6) and the `bias` option (CORE-BIAS-1…3).

Adapter names are drawn from a pool whose names are substrings of each other ("a", "a1", "default", "default2"), so
that an implementation matching names by prefix or substring is caught. Trainability is read through the driver
(`get_requires_grad` for adapter parameters, `saved_module` for `modules_to_save` copies) and through
`named_parameters()` of the module `adapt` returns; base parameters are recognised by identity (CORE-INJ-1 keeps
them). Model-scope rows: `modules_to_save` on a small network with a head, trainability on a tiny Llama.
"""

from __future__ import annotations

import copy
import functools
import itertools
import os
import pickle
import string
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from conformance.assertions import (
    ClauseFailure,
    Context,
    assert_close_to_oracle,
    assert_equal,
    assert_raises_clause,
    fail,
)
from conformance.drivers.base import Discrepancy, Driver
from conformance.harness import KEY, Holder, Rig, claims_of, optional_geometry_ok, require_base_runs
from conformance.models import LLAMA, MODELS
from conformance.rows import RowSpec
from conformance.scenes import (
    ALL_DTYPES,
    INNER,
    SECOND,
    THIRD,
    Scene,
    Setup,
    assert_restored,
    assert_warned,
    build,
    caught_warnings,
    draw_setup,
    fill_row,
    offers,
    user_warnings,
)
from conformance.spec.layer import Layer, conv, linear
from conformance.spec.record import TunerRecord
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import scale, tolerance, violations
from conformance.strategies import build_base, input_shapes, logical_weight, random_tensor

POOL = ("default", "default2", "a", "a1")  # adapter names that are substrings of each other
UNKNOWN = ("default3", "a2", "zeta_default")  # never a substring of a POOL name (a message naming it is recognisable)
HEAD = "head"  # the modules_to_save target of a `Rig`


# ---------------------------------------------------------------------------------------------------------------
# A small network with an optional modules_to_save head (scenes.build makes a Holder or a Twin, without a head)


def head_geometry(layer: Layer) -> Layer:
    """The head after `layer`: `Linear(out, out)`, or a 1×1 convolution of the layer's kind."""
    out = layer.out_features
    return conv(layer.kind, out, out, 1) if layer.is_conv else linear(out, out)


def fresh_rig(setup: Setup, head: bool = False) -> tuple[Rig, list[nn.Module]]:
    """The un-adapted model of `setup` (bases seeded as `scenes.build` seeds them) and its base layers."""
    row, layer = setup.row, setup.layer
    bases = [build_base(layer, row.dtype, setup.seed + 7 * i) for i in range(len(setup.keys))]
    top = build_base(head_geometry(layer), row.dtype, setup.seed + 5) if head else None
    return Rig(bases[0], bases[1] if setup.twin else None, top), bases


def build_rig(
    driver: Driver, setup: Setup, *, head: bool = False, names: Iterable[str] | None = None
) -> tuple[Scene, list[nn.Module]]:
    """`scenes.build` for a `Rig`: adapt the fresh model through the driver (the first of `names` by `adapt`, the
    others by `add_adapter`, default every adapter of the setup), each adapter perturbed to non-identity values of
    §8's input domain on every key it is injected in; eval mode. Also returns the base layers as built."""
    row, layer = setup.row, setup.layer
    model, bases = fresh_rig(setup, head)
    require_base_runs(bases[0], layer, row.dtype)
    generator = torch.Generator().manual_seed(setup.seed + 2)
    chosen = list(setup.configs) if names is None else list(names)
    for i, name in enumerate(chosen):
        cfg = driver.make_config(row.tuner, setup.configs[name])
        if i == 0:
            model = driver.adapt(model, row.tuner, cfg, name)
        else:
            driver.add_adapter(model, row.tuner, name, cfg)
        perturb(driver, model, setup, name, generator)
    context = Context(
        row.clause, row.tuner, driver.name, setup.configs, {"weight": layer.weight_shape}, row.dtype, setup.seed
    )
    return Scene(setup, model.eval(), context), bases


def perturb(driver: Driver, model: nn.Module, setup: Setup, name: str, generator: torch.Generator) -> None:
    """Set adapter `name`'s parameters to the record's non-identity values on every key it is injected in."""
    record = setup.record
    for key in setup.keys:
        shapes = {n: tuple(t.shape) for n, t in driver.get_params(model, key, name).items()}
        if shapes:
            values = record.perturb(record.resolve(setup.configs[name], key), setup.layer, shapes, generator)
            driver.set_params(model, key, name, values)


# ---------------------------------------------------------------------------------------------------------------
# Shared steps


def batched_input(scene: Scene, data: st.DataObject) -> torch.Tensor:
    """An ordinary input (non-empty, batched: `strategies.input_shapes`) drawn like `Scene.input`: these families
    read outputs only as evidence of which adapters act."""
    shape = data.draw(input_shapes(scene.setup.layer), label="input_shape")
    scene.context.shapes["x"] = shape
    return random_tensor(shape, scene.setup.row.dtype, scene.setup.seed + 1)


def setup_for(row: RowSpec, driver: Driver, data: st.DataObject, *args: Any, **kw: Any) -> Setup:
    """`scenes.draw_setup` without the optional geometries the driver does not declare (e.g. grouped Conv2d for
    HRA; `harness.optional_geometry_ok`)."""
    setup = draw_setup(driver, row, data, *args, **kw)
    assume(optional_geometry_ok(setup.layer, setup.record, claims_of(driver, setup.row)))
    return setup


def draw_names(data: st.DataObject, count: int) -> tuple[str, ...]:
    """`count` adapter names from POOL, in a drawn order (the first one is created by `adapt`)."""
    return tuple(data.draw(st.permutations(POOL), label="adapter names")[:count])


def has_bias_option(record: TunerRecord) -> bool:
    """CORE-BIAS-1: Bone, MiSS, GraLoRA and HRA have a `bias` field (their SPEC table); IA3, LoHa behave as "none"."""
    return "bias" in record.defaults


def only_values() -> st.SearchStrategy[str]:
    """Bias values of the "…_only" kind: any string ending in "_only" (CORE-BIAS-1)."""
    prefixes = st.sampled_from(["bone", "MiSS", "gralora", "hra", "lora", ""]) | st.text(
        string.ascii_letters, max_size=6
    )
    return prefixes.map(lambda p: p + "_only")


def bias_values(allow_all: bool = True) -> st.SearchStrategy[str]:
    """A `bias` value other than "none"."""
    return (st.just("all") | only_values()) if allow_all else only_values()


def requires_grad(driver: Driver, model: nn.Module, keys: Iterable[str], names: Iterable[str]) -> dict:
    """(key, adapter) → {canonical name: requires_grad}, for the adapters injected on each key."""
    out = {}
    for key in keys:
        for name in names:
            flags = driver.get_requires_grad(model, key, name)
            if flags:
                out[key, name] = flags
    return out


def assert_trainability(
    ctx: Context,
    driver: Driver,
    model: nn.Module,
    keys: Iterable[str],
    names: Iterable[str],
    when: str,
    *,
    inference: bool = False,
    inactive_only: bool = False,
) -> None:
    """The active adapters' parameters are trainable (frozen if `inference`), every other adapter's are frozen
    (CORE-LIFE-4, CORE-TRAIN-2); `inactive_only` checks the latter alone. The active list is read from the layer
    state of the first key."""
    __tracebackhide__ = True
    keys = list(keys)
    active = set(driver.layer_state(model, keys[0]).active_adapters)
    for (key, name), flags in requires_grad(driver, model, keys, names).items():
        want = name in active and not inference
        if inactive_only and name in active:
            continue
        wrong = sorted(p for p, flag in flags.items() if flag != want)
        if wrong:
            state = "trainable" if want else "frozen"
            fail(
                ctx,
                f"{when}: parameters {wrong} of adapter {name!r} on {key!r} should be {state} ({flags})",
                Discrepancy(f"requires_grad of adapter {name!r} on {key!r}", (), ({p: want for p in flags},), flags,
                            0.0, "requires_grad", key, kind="differs", adapter=name),
            )  # fmt: skip


def snapshot(driver: Driver, scene: Scene, names: Iterable[str]) -> dict:
    """What a rejected call must leave as it was: adapter parameters, active and merged lists, adapted modules, every
    parameter's requires_grad flag."""
    model = scene.model
    return {
        "parameters": {(k, n): driver.get_params(model, k, n) for k in scene.setup.keys for n in names},
        "active lists": {k: driver.layer_state(model, k).active_adapters for k in scene.setup.keys},
        "merged lists": {k: driver.layer_state(model, k).merged_adapters for k in scene.setup.keys},
        "adapted modules": sorted(driver.adapted_modules(model)),
        "requires_grad flags": [(n, p.requires_grad) for n, p in model.named_parameters()],
    }


def assert_same_state(ctx: Context, what: str, before: dict, after: dict) -> None:
    """Two snapshots are equal (parameters bitwise): "reject with E" changed nothing (SPEC §0.1)."""
    __tracebackhide__ = True
    for part, value in before.items():
        if part == "parameters":
            for (key, name), params in value.items():
                now = after[part][key, name]
                assert_equal(ctx, f"{what}: parameter names of {name!r} on {key!r}", sorted(now), sorted(params))
                for p, tensor in params.items():
                    assert_equal(ctx, f"{what}: {p} of {name!r} on {key!r}", now[p], tensor)
        else:
            assert_equal(ctx, f"{what}: {part}", after[part], value)


def shapes_of(params: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in sorted(params.items())}


def structure(model: nn.Module) -> list[tuple[str, str, list[str]]]:
    """Every module's name, class and own parameter names: what unloading must give back."""
    return [
        (name, type(module).__qualname__, [n for n, _ in module.named_parameters(recurse=False)])
        for name, module in model.named_modules()
    ]


def no_shared_storage(ctx: Context, what: str, copy_: nn.Module, original: nn.Module) -> None:
    __tracebackhide__ = True
    pointers = {p.data_ptr() for p in original.parameters()}
    for name, p in copy_.named_parameters():
        if p.data_ptr() in pointers:
            fail(ctx, f"{what}: parameter {name!r} shares its storage with the original module, but should be a copy")


# ---------------------------------------------------------------------------------------------------------------
# CORE-LIFE-1…4: get_peft_model, add_adapter, set_adapter


@pytest.mark.contract("CORE-LIFE-1")
@given(data=st.data())
def test_get_peft_model_state(row, driver, data):
    """CORE-LIFE-1: adapting without an adapter name injects one adapter named "default" on the targeted module,
    makes it the only active adapter, nothing merged, adapters enabled (the output is not the base model's where the
    oracle says the adapter changes it; its accuracy is the forward family's)."""
    row = fill_row(row, driver, data)
    setup = setup_for(row, driver, data)
    layer = setup.layer
    model, bases = fresh_rig(setup)
    require_base_runs(bases[0], layer, row.dtype)
    ctx = Context(
        row.clause, row.tuner, driver.name, setup.configs, {"weight": layer.weight_shape}, row.dtype, setup.seed
    )
    model = driver.adapt(model, row.tuner, driver.make_config(row.tuner, setup.configs["default"]), None).eval()
    if not driver.get_params(model, KEY, "default"):
        fail(ctx, "get_peft_model without adapter_name created no adapter named 'default' on 'layer'")
    assert_equal(ctx, "adapted modules", driver.adapted_modules(model), [KEY])
    state = driver.layer_state(model, KEY)
    assert_equal(ctx, "active adapters after get_peft_model", state.active_adapters, ["default"])
    assert_equal(ctx, "merged adapters after get_peft_model", state.merged_adapters, [])
    perturb(driver, model, setup, "default", torch.Generator().manual_seed(setup.seed + 2))
    scene = Scene(setup, model, ctx)
    x = batched_input(scene, data)
    with torch.no_grad():
        y = model(x)
    base = scene.expected_output(x, {KEY: scene.tensors(driver)})
    adapted = scene.expected_output(x, {KEY: scene.effective(driver, ["default"])})
    tol = tolerance("N", row.dtype)
    if violations(adapted, base, tol, scale(base)).any() and not violations(y, base, tol, scale(base)).any():
        fail(
            ctx,
            "the output after get_peft_model is the base model's, but the adapter should be enabled (it changes it)",
        )


@pytest.mark.contract("CORE-LIFE-2")
@given(data=st.data())
def test_add_adapter(row, driver, data):
    """CORE-LIFE-2: `add_adapter` injects only into the modules its own config targets (here `inner.layer`, which the
    first adapter does not target), leaves the active list (the output keeps the first adapter only) and every
    existing parameter's requires_grad flag (also one the user flipped) unchanged, and creates its parameters frozen."""
    row = fill_row(row, driver, data)
    first, second = draw_names(data, 2)
    setup = setup_for(row, driver, data, (first, second), twin=True, targets={first: KEY, second: r"inner\.layer"})
    scene, bases = build_rig(driver, setup, names=[first])
    ctx, model = scene.context, scene.model
    flip = data.draw(st.sampled_from([None, KEY, INNER]), label="base weight the user unfroze")
    if flip == KEY:
        driver.layer_state(model, KEY).base_layer.weight.requires_grad_(True)
    elif flip == INNER:
        bases[1].weight.requires_grad_(True)
    before = {id(p): (name, p.requires_grad) for name, p in model.named_parameters()}
    x = batched_input(scene, data)
    with torch.no_grad():
        y_before = model(x)
    driver.add_adapter(model, row.tuner, second, driver.make_config(row.tuner, setup.configs[second]))
    for name, p in model.named_parameters():
        if id(p) in before:
            old_name, flag = before[id(p)]
            assert_equal(ctx, f"requires_grad of {old_name!r} after add_adapter({second!r})", p.requires_grad, flag)
        else:
            if p.requires_grad:
                fail(
                    ctx,
                    f"add_adapter({second!r}) created the parameter {name!r} trainable, but should create it frozen",
                )
    assert_equal(
        ctx, f"adapted modules after add_adapter({second!r})", sorted(driver.adapted_modules(model)), [INNER, KEY]
    )
    assert_equal(
        ctx, f"parameters of {second!r} on {KEY!r} (not targeted by it)", driver.get_params(model, KEY, second), {}
    )
    assert_equal(
        ctx, f"parameters of {first!r} on {INNER!r} (not targeted by it)", driver.get_params(model, INNER, first), {}
    )
    if not driver.get_params(model, INNER, second):
        fail(ctx, f"add_adapter({second!r}) did not inject into {INNER!r}, which its config targets")
    assert_equal(
        ctx,
        f"active adapters of {KEY!r} after add_adapter({second!r})",
        driver.layer_state(model, KEY).active_adapters,
        [first],
    )
    perturb(driver, model, setup, second, torch.Generator().manual_seed(setup.seed + 3))
    with torch.no_grad():
        y = model(x)
    assert_close_to_oracle(
        context=ctx,
        what=f"output after add_adapter({second!r}) vs before (active list [{first!r}] unchanged)",
        actual=y,
        expected=y_before,
        tol=tolerance("N", row.dtype),
        scale=scale(y_before),
    )


@pytest.mark.contract("CORE-LIFE-3")
@given(data=st.data())
def test_add_adapter_errors(row, driver, data):
    """CORE-LIFE-3: `add_adapter` with an existing name (names are substrings of each other), or with a config of
    another peft_type (any other tuner the driver claims), is rejected with ValueError before anything changes."""
    row = fill_row(replace(row, layer_kind="linear"), driver, data)  # every tuner supports linear: the other's too
    names = draw_names(data, 2)
    setup = setup_for(row, driver, data, names)
    scene, _ = build_rig(driver, setup)
    ctx, model, record = scene.context, scene.model, setup.record
    before = snapshot(driver, scene, [*names, THIRD])
    existing = data.draw(st.sampled_from(names), label="existing name")
    config = data.draw(record.configs(setup.layer, record.variant(row.variant), row.init), label="new config")
    cfg = driver.make_config(row.tuner, {**config, "target_modules": [KEY]})
    assert_raises_clause(ctx, (ValueError,), "", lambda: driver.add_adapter(model, row.tuner, existing, cfg))
    assert_same_state(
        ctx, f"after the rejected add_adapter({existing!r})", before, snapshot(driver, scene, [*names, THIRD])
    )
    claims = driver.capabilities().tuners
    others = sorted(t for t, c in claims.items() if c.native and RECORDS[t].peft_type != record.peft_type)
    if not others:
        return  # the driver claims no other tuner: no config of another peft_type can be made
    other = data.draw(st.sampled_from(others), label="tuner of the other config")
    other_record = RECORDS[other]
    other_config = data.draw(
        other_record.configs(setup.layer, other_record.variants[0], row.init), label="other config"
    )
    other_cfg = driver.make_config(other, {**other_config, "target_modules": [KEY]})
    assert_raises_clause(ctx, (ValueError,), "", lambda: driver.add_adapter(model, other, THIRD, other_cfg))
    assert_same_state(
        ctx,
        f"after the rejected add_adapter({THIRD!r}) with a {other_record.peft_type} config",
        before,
        snapshot(driver, scene, [*names, THIRD]),
    )


@pytest.mark.contract("CORE-LIFE-4")
@given(data=st.data())
def test_set_adapter(row, driver, data):
    """CORE-LIFE-4: `set_adapter` sets the active list exactly, order kept, on every layer; the active adapters'
    parameters become trainable (unless in inference mode: every config with `inference_mode=True`), all others
    frozen; an unknown name (alone or in a list) is rejected with ValueError, changing nothing."""
    row = fill_row(row, driver, data)
    names = draw_names(data, 3)
    setup = setup_for(row, driver, data, names, twin=True)
    inference = data.draw(st.booleans(), label="inference mode")
    setup.configs = {name: {**config, "inference_mode": inference} for name, config in setup.configs.items()}
    scene, _ = build_rig(driver, setup)
    ctx, model, keys = scene.context, scene.model, setup.keys
    for _ in range(2):
        active = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True), label="active list")
        driver.set_active(model, active)
        for key in keys:
            got = driver.layer_state(model, key).active_adapters
            assert_equal(ctx, f"active adapters of {key!r} after set_adapter({active})", got, active)
        assert_trainability(ctx, driver, model, keys, names, f"after set_adapter({active})", inference=inference)
    unknown = data.draw(st.sampled_from(UNKNOWN), label="unknown name")
    request = data.draw(st.sampled_from([[unknown], [*active, unknown], [unknown, *active]]), label="request")
    flags = requires_grad(driver, model, keys, names)
    assert_raises_clause(ctx, (ValueError,), "", lambda: driver.set_active(model, request))
    for key in keys:
        got = driver.layer_state(model, key).active_adapters
        assert_equal(ctx, f"active adapters of {key!r} after the rejected set_adapter({request})", got, active)
    assert_equal(
        ctx,
        f"requires_grad after the rejected set_adapter({request})",
        requires_grad(driver, model, keys, names),
        flags,
    )


@pytest.mark.contract("CORE-LIFE-5")
@given(data=st.data())
def test_set_adapter_when_merged(row, driver, data):
    """CORE-LIFE-5: `set_adapter` on a merged model warns and unmerges first: nothing stays merged, the new active
    list is set, and the base tensors are restored within the tuner's unmerge class (§8 round-trip scale)."""
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    scene = build(driver, setup_for(row, driver, data, ("default", SECOND)))
    ctx, model = scene.context, scene.model
    orders = [["default"], [SECOND], ["default", SECOND], [SECOND, "default"]]
    merged_names = data.draw(st.sampled_from(orders), label="merged")
    target = data.draw(st.sampled_from(orders), label="new active list")
    original = scene.tensors(driver)
    reverted = scene.adapters(driver, merged_names)
    driver.merge(model, merged_names)
    merged = scene.tensors(driver)
    caught = caught_warnings(lambda: driver.set_active(model, target))
    assert_warned(ctx, f"set_adapter({target}) with {merged_names} merged", caught)
    assert_equal(ctx, f"merged adapters after set_adapter({target})", scene.merged(driver), [])
    assert_equal(
        ctx, f"active adapters after set_adapter({target})", driver.layer_state(model, KEY).active_adapters, target
    )
    restored = scene.tensors(driver)
    assert_restored(
        scene,
        restored=restored,
        original=original,
        written=[*merged, *restored],
        reverted=reverted,
        what=f"after merging {merged_names} and set_adapter({target})",
    )


# ---------------------------------------------------------------------------------------------------------------
# CORE-LIFE-8…10: delete_adapter


@pytest.mark.contract("CORE-LIFE-8")
@given(data=st.data())
def test_delete_adapter_errors(row, driver, data):
    """CORE-LIFE-8: deleting an unknown name is rejected with ValueError naming it; deleting a merged adapter with
    ValueError; neither changes anything (the merged adapter stays merged, the weights bitwise as they were)."""
    row = fill_row(row, driver, data)
    names = draw_names(data, 2)
    scene, _ = build_rig(driver, setup_for(row, driver, data, names))
    ctx, model = scene.context, scene.model
    before = snapshot(driver, scene, names)
    unknown = data.draw(st.sampled_from(UNKNOWN), label="unknown name")
    assert_raises_clause(ctx, (ValueError,), unknown, lambda: driver.delete_adapter(model, unknown))
    assert_same_state(ctx, f"after the rejected delete_adapter({unknown!r})", before, snapshot(driver, scene, names))
    victim = data.draw(st.sampled_from(names), label="merged adapter")
    driver.merge(model, [victim])
    merged = snapshot(driver, scene, names)
    weights = scene.tensors(driver)
    assert_raises_clause(ctx, (ValueError,), "", lambda: driver.delete_adapter(model, victim))
    assert_same_state(
        ctx,
        f"after the rejected delete_adapter({victim!r}) of a merged adapter",
        merged,
        snapshot(driver, scene, names),
    )
    assert_equal(
        ctx, f"base weight after the rejected delete_adapter({victim!r})", scene.tensors(driver)[0], weights[0]
    )


@pytest.mark.contract("CORE-LIFE-9")
@given(data=st.data())
def test_delete_adapter_removes_everything(row, driver, data):
    """CORE-LIFE-9: after `delete_adapter(name)` no parameter of it remains on any layer (the model holds exactly its
    parameters fewer), its config entry and settings are gone (saving writes nothing of it; the name can be added
    again, with a new config and that config's shapes), and the other adapter — whose name has the deleted
    one as prefix, or is its prefix — is unchanged: parameters and output bitwise."""
    row = fill_row(row, driver, data)
    deleted, kept = data.draw(
        st.sampled_from([("a", "a1"), ("default", "default2"), ("a1", "a"), ("default2", "default")]), label="names"
    )
    order = data.draw(st.permutations([deleted, kept]), label="creation order")
    setup = setup_for(row, driver, data, order, twin=True)
    scene = build(driver, setup)
    ctx, model, keys, record = scene.context, scene.model, setup.keys, setup.record
    active = data.draw(st.sampled_from([[deleted], [kept], [deleted, kept], [kept, deleted]]), label="active list")
    x = batched_input(scene, data)
    driver.set_active(model, [kept])
    with torch.no_grad():
        y_kept = model(x)
    driver.set_active(model, active)
    kept_params = {key: driver.get_params(model, key, kept) for key in keys}
    deleted_numel = sum(t.numel() for key in keys for t in driver.get_params(model, key, deleted).values())
    total = sum(p.numel() for p in model.parameters())
    driver.delete_adapter(model, deleted)
    for key in keys:
        assert_equal(
            ctx, f"parameters of the deleted {deleted!r} on {key!r}", driver.get_params(model, key, deleted), {}
        )
        now = driver.get_params(model, key, kept)
        assert_equal(ctx, f"parameter names of {kept!r} on {key!r}", sorted(now), sorted(kept_params[key]))
        for name, value in kept_params[key].items():
            assert_equal(ctx, f"{name} of {kept!r} on {key!r} after deleting {deleted!r}", now[name], value)
    assert_equal(
        ctx,
        f"parameter count of the model after deleting {deleted!r} (held {deleted_numel})",
        sum(p.numel() for p in model.parameters()),
        total - deleted_numel,
    )
    driver.set_active(model, [kept])
    with torch.no_grad():
        assert_equal(ctx, f"output with [{kept!r}] active after deleting {deleted!r}", model(x), y_kept)
    if offers(driver, row.tuner, "files"):
        with tempfile.TemporaryDirectory() as tmp:
            driver.save(model, tmp)
            stale = os.path.join(tmp, "adapter_config.json") if deleted == "default" else os.path.join(tmp, deleted)
            if os.path.exists(stale):
                fail(ctx, f"saving after deleting {deleted!r} wrote {os.path.relpath(stale, tmp)!r}")
    config = data.draw(record.configs(setup.layer, record.variant(row.variant), row.init), label="config added again")
    try:
        driver.add_adapter(
            model, row.tuner, deleted, driver.make_config(row.tuner, {**config, "target_modules": [KEY]})
        )
    except ValueError as exc:  # CORE-LIFE-3's "existing name": something of it remained
        fail(ctx, f"adding {deleted!r} again after deleting it was rejected: {exc}")
    for key in keys:
        want = {
            n: tuple(v) for n, v in sorted(record.oracle.param_shapes(record.resolve(config, key), setup.layer).items())
        }
        got = shapes_of(driver.get_params(model, key, deleted))
        assert_equal(ctx, f"shapes of {deleted!r} on {key!r} added again with config {config}", got, want)


@pytest.mark.contract("CORE-LIFE-10")
@given(data=st.data())
def test_delete_active_adapter(row, driver, data):
    """CORE-LIFE-10: deleting an active adapter removes it from the active list; deleting the last active one while
    adapters remain activates one remaining adapter, the same on every layer (one remaining adapter is injected on
    `inner.layer` only, so a per-layer choice would differ), with a warning."""
    row = fill_row(row, driver, data)
    names = draw_names(data, 4)
    first, second, inner_only, last = names
    setup = setup_for(row, driver, data, names, twin=True, targets={inner_only: r"inner\.layer"})
    scene = build(driver, setup)
    ctx, model, keys = scene.context, scene.model, setup.keys
    active = data.draw(st.permutations([first, second]), label="active list")
    driver.set_active(model, active)
    driver.delete_adapter(model, active[0])
    for key in keys:
        got = driver.layer_state(model, key).active_adapters
        assert_equal(ctx, f"active adapters of {key!r} after deleting {active[0]!r} from {active}", got, [active[1]])
    caught = caught_warnings(lambda: driver.delete_adapter(model, active[1]))
    assert_warned(ctx, f"deleting {active[1]!r}, the last active adapter", caught)
    lists = {key: driver.layer_state(model, key).active_adapters for key in keys}
    chosen = {name for names_ in lists.values() for name in names_}
    if len(chosen) != 1 or not chosen <= {inner_only, last} or any(len(v) > 1 for v in lists.values()):
        admissible = [  # one remaining adapter, on every layer or on some (none longer than one name)
            dict(zip(keys, lists_, strict=True))
            for name in (inner_only, last)
            for lists_ in itertools.product([[], [name]], repeat=len(keys))
            if any(lists_)
        ]
        fail(
            ctx,
            f"after deleting every active adapter the active lists are {lists}, but should name one remaining "
            f"adapter ({inner_only!r} or {last!r}), the same on every layer",
            Discrepancy("the active adapters of each layer", (), admissible, lists, 0.0, "active", kind="differs"),
        )


# ---------------------------------------------------------------------------------------------------------------
# CORE-LIFE-11: deepcopy and pickle


@pytest.mark.contract("CORE-LIFE-11")
@given(data=st.data())
def test_deepcopy_and_pickle(row, driver, data):
    """CORE-LIFE-11: `copy.deepcopy` and a pickle round trip of an adapted model (two adapters, one or both active,
    possibly one merged) give bitwise-equal outputs."""
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    scene, _ = build_rig(
        driver, setup_for(row, driver, data, ("default", SECOND), twin=data.draw(st.booleans(), label="twin"))
    )
    ctx, model = scene.context, scene.model
    driver.set_active(model, data.draw(st.sampled_from([["default"], [SECOND, "default"]]), label="active list"))
    if data.draw(st.booleans(), label="merged"):
        driver.merge(model, [SECOND])
    x = batched_input(scene, data)
    with torch.no_grad():
        y = model(x)
        for how, clone in (("copy.deepcopy", copy.deepcopy), ("pickle", lambda m: pickle.loads(pickle.dumps(m)))):
            assert_equal(ctx, f"output of the model after {how}", clone(model)(x), y)


# ---------------------------------------------------------------------------------------------------------------
# CORE-MTS-1, CORE-MTS-2: modules_to_save (model scope: a network with a head)


def mts_scene(row: RowSpec, driver: Driver, data: st.DataObject) -> tuple[Scene, tuple[str, str, str], dict]:
    """A Rig with a head; adapters `owner_a`, `owner_b` name the head in `modules_to_save`, `plain` does not; each
    copy set to its own values (so an output tells which module ran). Returns the scene, the names and the modules."""
    row = fill_row(row, driver, data)
    owner_a, owner_b, plain = names = draw_names(data, 3)
    setup = setup_for(row, driver, data, names)
    for name in (owner_a, owner_b):
        setup.configs[name] = {**setup.configs[name], "modules_to_save": [HEAD]}
    scene, _ = build_rig(driver, setup, head=True)
    ctx, model = scene.context, scene.model
    original = driver.saved_module(model, HEAD)
    if original is None:
        fail(ctx, f"no modules_to_save wrapper holds {HEAD!r}, which {owner_a!r} and {owner_b!r} name")
    modules = {None: original}
    generator = torch.Generator().manual_seed(setup.seed + 4)
    for name in names:
        module = driver.saved_module(model, HEAD, name)
        if name == plain:
            assert_equal(ctx, f"copy of {HEAD!r} for {plain!r} (whose modules_to_save is None)", module, None)
            continue
        if module is None or module is original:
            fail(ctx, f"adapter {name!r} names {HEAD!r} in modules_to_save but has no copy of its own")
        no_shared_storage(ctx, f"copy of {HEAD!r} for {name!r}", module, original)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1)
        modules[name] = module
    return scene, names, modules


@pytest.mark.contract("CORE-MTS-1", scope="model")
@given(data=st.data())
def test_modules_to_save(row, driver, data):
    """CORE-MTS-1: the `modules_to_save` module is kept frozen and gets one copy per adapter naming it (trainable while
    that adapter is active); forward runs exactly the copy of the active adapter owning one — bitwise its output —,
    the original when no active adapter owns one or adapters are disabled; activating two owners is rejected with
    ValueError, changing nothing."""
    scene, (owner_a, owner_b, plain), modules = mts_scene(row, driver, data)
    ctx, model = scene.context, scene.model
    ran: list[tuple[str | None, torch.Tensor]] = []
    for tag, module in modules.items():
        module.register_forward_hook(lambda m, args, out, tag=tag: ran.append((tag, out)))
    x = batched_input(scene, data)

    def check(when: str, expected: str | None) -> None:
        ran.clear()
        with torch.no_grad():
            y = model(x)
        who = "the original" if expected is None else f"{expected!r}'s copy"
        assert_equal(
            ctx, f"{HEAD!r} modules run by the forward {when} (expected {who})", [t for t, _ in ran], [expected]
        )
        assert_equal(ctx, f"model output {when} vs the output of {who}", y, ran[0][1])

    scenarios = [[owner_a], [plain], data.draw(st.permutations([owner_b, plain]), label="active list")]
    for active in data.draw(st.permutations(scenarios), label="activation order"):
        driver.set_active(model, active)
        owner = next((n for n in active if n in modules), None)
        for tag, module in modules.items():
            want = tag is not None and tag == owner
            flags = {n: p.requires_grad for n, p in module.named_parameters()}
            if any(flag != want for flag in flags.values()):
                who = "the original" if tag is None else f"the copy of {tag!r}"
                fail(ctx, f"with {active} active, {who} of {HEAD!r} has requires_grad {flags}, but should be {want}")
        check(f"with {active} active", owner)
        with driver.disabled(model):
            check(f"inside disable_adapter() with {active} active", None)
    assert_raises_clause(ctx, (ValueError,), "", lambda: driver.set_active(model, [owner_a, owner_b]))
    assert_equal(
        ctx,
        f"active adapters after the rejected set_adapter([{owner_a!r}, {owner_b!r}])",
        driver.layer_state(model, KEY).active_adapters,
        active,
    )


@pytest.mark.contract("CORE-MTS-2", scope="model")
@given(data=st.data())
def test_modules_to_save_unload(row, driver, data):
    """CORE-MTS-2: `merge_and_unload` and `unload` replace the `modules_to_save` wrapper by the active adapter's copy
    (its values), or by the original module when no active adapter owns one; no wrapper is left (the model's modules,
    classes and parameter names are the un-adapted model's)."""
    scene, (owner_a, owner_b, plain), modules = mts_scene(row, driver, data)
    ctx, model = scene.context, scene.model
    active = data.draw(st.sampled_from([[owner_a], [plain], [plain, owner_b]]), label="active list")
    driver.set_active(model, active)
    owner = next((n for n in active if n in modules), None)
    expected = {n: p.detach().clone() for n, p in modules[owner].named_parameters()}
    how = data.draw(st.sampled_from(["unload", "merge_and_unload"]), label="operation")
    plain_model = driver.unload(model) if how == "unload" else driver.merge_and_unload(model)
    fresh, _ = fresh_rig(scene.setup, head=True)
    assert_equal(
        ctx, f"modules of the model {how}() returns (name, class, parameters)", structure(plain_model), structure(fresh)
    )
    who = "the original" if owner is None else f"{owner!r}'s copy"
    for name, param in plain_model.get_submodule(HEAD).named_parameters():
        assert_equal(
            ctx, f"{HEAD}.{name} after {how}() with {active} active (should be {who})", param.detach(), expected[name]
        )


# ---------------------------------------------------------------------------------------------------------------
# CORE-MERGE-13: unload


@pytest.mark.contract("CORE-MERGE-13")
@given(data=st.data())
def test_unload(row, driver, data):
    """CORE-MERGE-13: `unload()` returns the model with its base layers in place of the tuner layers (the un-adapted
    model's modules); with nothing merged its output equals the original model's bitwise; with adapters merged it
    either warns or returns the base weights unmerged (restored within the tuner's unmerge class)."""
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    names = ("default", SECOND)[: data.draw(st.integers(1, 2), label="adapters")]
    setup = setup_for(row, driver, data, names, twin=data.draw(st.booleans(), label="twin"))
    scene, _ = build_rig(driver, setup)
    ctx, model, keys, layer = scene.context, scene.model, setup.keys, setup.layer
    driver.set_active(model, list(names))
    merged = data.draw(st.booleans(), label="merged")
    original = {key: scene.tensors(driver, key) for key in keys}
    reverted = {key: scene.adapters(driver, names, key) for key in keys}
    if merged:
        driver.merge(model)
    written = {key: scene.tensors(driver, key) for key in keys}
    x = batched_input(scene, data)
    out: list[nn.Module] = []
    caught = caught_warnings(lambda: out.append(driver.unload(model)))
    unloaded = out[0]
    fresh, _ = fresh_rig(setup)
    assert_equal(
        ctx, "modules of the model unload() returns (name, class, parameters)", structure(unloaded), structure(fresh)
    )
    if not merged:
        with torch.no_grad():
            assert_equal(ctx, "output of the unloaded model vs the original model", unloaded(x), fresh(x))
        return
    for key in keys:
        module = unloaded.get_submodule(key)
        restored = (logical_weight(module, layer), None if module.bias is None else module.bias.detach().double())
        try:
            assert_restored(
                scene,
                restored=restored,
                original=original[key],
                written=[*written[key], *restored],
                reverted=reverted[key],
                what=f"{key} returned by unload() after merge(), without a warning",
            )
        except ClauseFailure:
            if not user_warnings(caught):
                raise  # merged weights returned silently
            return  # merged weights returned, but with a warning


# ---------------------------------------------------------------------------------------------------------------
# CORE-TRAIN-1, CORE-TRAIN-6: trainable parameters of a tiny Llama (model scope)

LLAMA_WITH_BIAS = replace(MODELS["llama"], config={**LLAMA, "attention_bias": True})  # q/k/v/o carry biases
LLAMA_TARGETS = ["q_proj", "v_proj"]  # hidden × hidden: one drawn config is valid for each


@functools.cache
def llama_template() -> nn.Module:
    """One tiny Llama per process (its values do not matter to trainability); rows adapt deep copies of it."""
    return LLAMA_WITH_BIAS.build(0)


@dataclass
class LlamaScene:
    """A tiny Llama adapted by `default` (what its trainable counts need)."""

    record: TunerRecord
    config: dict
    model: nn.Module
    context: Context
    keys: list[str]  # the adapted modules
    names: list[str]  # the adapters: `default` (active), possibly SECOND (inactive)
    base_params: dict[int, str]  # id → name of every parameter of the base model as built
    bias: str | None  # the `bias` option of `default` (None: the tuner has none)
    selected_biases: set[str]  # the modules whose bias the option selects
    selected_bias_numel: int
    head_numel: int  # of `lm_head`, counted when `modules_to_save=["lm_head"]`


def llama_scene(row: RowSpec, driver: Driver, data: st.DataObject) -> LlamaScene:
    """A tiny Llama with biases adapted on q_proj/v_proj by `default` (a drawn `bias` option where the tuner has one,
    `modules_to_save=["lm_head"]` or None), possibly with an inactive second adapter."""
    row = fill_row(replace(row, variant="plain", layer_kind="linear"), driver, data)
    record = RECORDS[row.tuner]
    hidden = LLAMA["hidden_size"]
    config = data.draw(record.configs(linear(hidden, hidden), record.variant("plain"), row.init), label="config")
    bias = data.draw(st.just("none") | bias_values(), label="bias") if has_bias_option(record) else None
    mts = data.draw(st.sampled_from([None, ["lm_head"]]), label="modules_to_save")
    config = {**config, "target_modules": LLAMA_TARGETS, "modules_to_save": mts}
    if bias is not None:
        config["bias"] = bias
    base = copy.deepcopy(llama_template())
    base_params = {id(p): name for name, p in base.named_parameters()}
    biases = {name.removesuffix(".bias"): p.numel() for name, p in base.named_parameters() if name.endswith(".bias")}
    head_numel = sum(p.numel() for p in base.get_submodule("lm_head").parameters()) if mts else 0
    configs = {"default": config}
    context = Context(row.clause, row.tuner, driver.name, configs, {"hidden": (hidden,)}, row.dtype)
    model = driver.adapt(base, row.tuner, driver.make_config(row.tuner, config))
    if data.draw(st.booleans(), label="inactive second adapter"):
        second = {**config, "modules_to_save": data.draw(st.sampled_from([None, ["lm_head"]]), label="its mts")}
        second.pop("bias", None)  # CORE-BIAS-3: one adapter with a bias option at most
        configs[SECOND] = second
        driver.add_adapter(model, row.tuner, SECOND, driver.make_config(row.tuner, second))
    keys = driver.adapted_modules(model)
    if bias in (None, "none"):
        selected = set()
    elif bias == "all":
        selected = set(biases)
    else:
        selected = set(keys) & set(biases)
    return LlamaScene(
        record,
        config,
        model,
        context,
        keys,
        list(configs),
        base_params,
        bias,
        selected,
        sum(biases[k] for k in selected),
        head_numel,
    )


def trainable_numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.contract("CORE-TRAIN-1", scope="model")
@given(data=st.data())
def test_trainable_after_get_peft_model(row, driver, data):
    """CORE-TRAIN-1: after `get_peft_model` exactly these parameters require grad: the active adapter's (on every
    adapted layer), its `modules_to_save` copy, and the biases its `bias` option selects ("all": every bias,
    "…_only": the adapted layers'); every other base parameter and the inactive adapter's are frozen."""
    s = llama_scene(row, driver, data)
    ctx, model = s.context, s.model
    expected = s.selected_bias_numel + s.head_numel
    for key in s.keys:
        for name in s.names:
            flags = driver.get_requires_grad(model, key, name)
            want = name == "default"
            if any(flag != want for flag in flags.values()):
                fail(ctx, f"adapter {name!r} on {key!r} has requires_grad {flags}, but should be {want}")
        expected += sum(t.numel() for t in driver.get_params(model, key, "default").values())
    selected = {f"{m}.bias" for m in s.selected_biases}
    for p in model.parameters():
        name = s.base_params.get(id(p))
        if name is not None and p.requires_grad != (name in selected):
            fail(ctx, f"base parameter {name!r} has requires_grad {p.requires_grad} with bias={s.bias!r}")
    if s.head_numel:
        copy_ = driver.saved_module(model, "lm_head", "default")
        if copy_ is None or not all(p.requires_grad for p in copy_.parameters()):
            fail(ctx, "the active adapter's modules_to_save copy of 'lm_head' is missing or not trainable")
    what = f"trainable parameters (bias={s.bias!r}, modules_to_save={s.config['modules_to_save']})"
    assert_equal(ctx, what, trainable_numel(model), expected)


@pytest.mark.contract("CORE-TRAIN-6", scope="model")
@given(data=st.data())
def test_trainable_count(row, driver, data):
    """CORE-TRAIN-6: the trainable-parameter count is the sum over the adapted layers of the tuner's per-layer formula
    for the active adapter (the oracle's `trainable_count`), plus its `modules_to_save` copy and the selected biases."""
    s = llama_scene(row, driver, data)
    expected = s.selected_bias_numel + s.head_numel
    for key in s.keys:
        state = driver.layer_state(s.model, key)
        geometry = linear(state.in_features, state.out_features)
        expected += s.record.oracle.trainable_count(s.record.resolve(s.config, key), geometry)
    what = (
        f"trainable parameters over {sorted(s.keys)} (bias={s.bias!r}, modules_to_save={s.config['modules_to_save']})"
    )
    assert_equal(s.context, what, trainable_numel(s.model), expected)


# ---------------------------------------------------------------------------------------------------------------
# CORE-TRAIN-2…5


@pytest.mark.contract("CORE-TRAIN-2")
@given(data=st.data())
def test_inactive_adapters_frozen(row, driver, data):
    """CORE-TRAIN-2: inactive adapters' parameters are frozen at all times — after creation, `set_adapter`, merge and
    unmerge, inside and after the disable context, after deleting another adapter — and trainability moves with
    the active list."""
    row = fill_row(row, driver, data)
    names = draw_names(data, 3)
    scene = build(driver, setup_for(row, driver, data, names, twin=True))
    ctx, model, keys = scene.context, scene.model, scene.setup.keys
    assert_trainability(ctx, driver, model, keys, names, "after get_peft_model and add_adapter")
    active = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True), label="active list")
    driver.set_active(model, active)
    assert_trainability(ctx, driver, model, keys, names, f"after set_adapter({active})")
    driver.merge(model)
    assert_trainability(ctx, driver, model, keys, names, f"after merge() of {active}")
    driver.unmerge(model)
    assert_trainability(ctx, driver, model, keys, names, "after unmerge()")
    with driver.disabled(model):  # active adapters may be frozen while disabled; inactive ones must be
        assert_trainability(ctx, driver, model, keys, names, "inside disable_adapter()", inactive_only=True)
    assert_trainability(ctx, driver, model, keys, names, "after disable_adapter()")
    inactive = [n for n in names if n not in active]
    driver.delete_adapter(model, inactive[0])
    assert_trainability(ctx, driver, model, keys, names, f"after delete_adapter({inactive[0]!r})")


@pytest.mark.contract("CORE-TRAIN-3")
@given(data=st.data())
def test_inference_mode_frozen(row, driver, data):
    """CORE-TRAIN-3: an adapter whose config has `inference_mode=True` has no trainable parameter after
    `get_peft_model`; an adapter loaded with `is_trainable=False` neither (files surface). (`set_adapter` in
    inference mode: CORE-LIFE-4.)"""
    row = fill_row(row, driver, data)
    setup = setup_for(row, driver, data)
    config = setup.configs["default"]
    setup.configs["default"] = {**config, "inference_mode": True}
    scene = build(driver, setup)
    ctx, model = scene.context, scene.model
    flags = driver.get_requires_grad(model, KEY, "default")
    if any(flags.values()):
        fail(ctx, f"after get_peft_model with inference_mode=True, parameters are trainable: {flags}")
    if not offers(driver, row.tuner, "files"):
        return
    setup.configs["default"] = config
    trained = build(driver, setup)
    with tempfile.TemporaryDirectory() as tmp:
        driver.save(trained.model, tmp)
        loaded = driver.load(Holder(build_base(setup.layer, row.dtype, setup.seed)), tmp, trainable=False)
    flags = driver.get_requires_grad(loaded, KEY, "default")
    if not flags or any(flags.values()):
        fail(
            ctx,
            f"after loading with is_trainable=False the adapter's requires_grad flags are {flags}, but should be False",
        )


def draw_bias(record: TunerRecord, data: st.DataObject, allow_all: bool = True) -> str | None:
    """A `bias` value ("none" included) where the tuner has the option, else None."""
    if not has_bias_option(record):
        return None
    return data.draw(st.just("none") | bias_values(allow_all), label="bias")


@pytest.mark.contract("CORE-TRAIN-4")
@given(data=st.data())
def test_grads_only_on_trainables(row, driver, data):
    """CORE-TRAIN-4: after `backward()` of the summed output (eval mode, or train mode with every dropout 0), every
    trainable parameter has a `.grad` and every frozen one has none: adapters active or not, a drawn `bias` option,
    a `modules_to_save` head or none."""
    row = fill_row(row, driver, data)
    record = RECORDS[row.tuner]
    head = data.draw(st.booleans(), label="modules_to_save head")
    setup = setup_for(row, driver, data, ("default", SECOND), twin=data.draw(st.booleans(), label="twin"))
    bias = draw_bias(record, data, allow_all=not head)  # "all" would also train the frozen original head's bias
    if bias is not None:
        setup.configs["default"]["bias"] = bias
    if head:
        setup.configs["default"]["modules_to_save"] = [HEAD]
    scene, _ = build_rig(driver, setup, head=head)
    ctx, model = scene.context, scene.model
    driver.set_active(model, data.draw(st.sampled_from([["default"], [SECOND], [SECOND, "default"]]), label="active"))
    model.train(data.draw(st.booleans(), label="train mode"))
    x = batched_input(scene, data)
    y = model(x).sum()
    if not y.requires_grad:  # backward() cannot run: no trainable parameter can get a .grad
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        fail(ctx, f"the output has no autograd graph, so the trainable parameters {trainable} get no .grad")
    y.backward()
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is None:
            fail(ctx, f"trainable parameter {name!r} has no .grad after backward() (bias={bias!r}, head={head})")
        if not p.requires_grad and p.grad is not None:
            fail(ctx, f"frozen parameter {name!r} has a .grad after backward() (bias={bias!r}, head={head})")


def oracle_moves(scene: Scene, driver: Driver, active: list[str], x: torch.Tensor) -> set[tuple[str, str]]:
    """(adapter, parameter) pairs on which the float64 oracle's gradient of the summed output is not zero: the
    parameters a generic SGD step must change (e.g. HRA's `u` cannot change a 1-wide layer's output: ±1 reflection)."""
    adapters = scene.adapters(driver, active)
    leaves = {
        (n, p): t.requires_grad_(True) for n, a in zip(active, adapters, strict=True) for p, t in a.params.items()
    }
    weights = scene.setup.record.oracle.effective(*scene.tensors(driver), scene.setup.layer, adapters)
    loss = scene.expected_output(x, {KEY: weights}).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    floor = 1e-8 * max(1.0, float(loss.detach().abs()))
    return {pair for pair, g in zip(leaves, grads, strict=True) if g is not None and float(g.abs().max()) > floor}


@pytest.mark.contract("CORE-TRAIN-5")
@given(data=st.data())
def test_training_moves_only_trainables(row, driver, data):
    """CORE-TRAIN-5: 3 SGD steps on the summed output (non-identity adapters, a non-empty generic input) change every
    trainable adapter parameter and leave every frozen parameter — base weights, inactive adapters — bitwise as it
    was."""
    row = fill_row(row, driver, data)
    setup = setup_for(row, driver, data, ("default", SECOND))
    bias = draw_bias(setup.record, data)
    if bias is not None:
        setup.configs["default"]["bias"] = bias
    scene = build(driver, setup)
    ctx, model = scene.context, scene.model
    active = data.draw(st.sampled_from([["default"], [SECOND], [SECOND, "default"]]), label="active")
    driver.set_active(model, active)
    x = batched_input(scene, data)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    moving = oracle_moves(scene, driver, active, x)
    trainable = {}
    for name in scene.names:
        flags = driver.get_requires_grad(model, KEY, name)
        params = driver.get_params(model, KEY, name)
        trainable.update({(name, p): params[p] for p, flag in flags.items() if flag and (name, p) in moving})
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(x).sum()
        if not loss.requires_grad:
            fail(
                ctx, f"the output has no autograd graph: SGD cannot change the trainable parameters {sorted(trainable)}"
            )
        loss.backward()
        optimizer.step()
    live = dict(model.named_parameters())
    for name, value in frozen.items():
        assert_equal(ctx, f"frozen parameter {name!r} after 3 SGD steps", live[name].detach(), value)
    for (name, p), value in trainable.items():
        if torch.equal(driver.get_params(model, KEY, name)[p], value):
            fail(ctx, f"trainable parameter {p} of adapter {name!r} did not change in 3 SGD steps (bias={bias!r})")


# ---------------------------------------------------------------------------------------------------------------
# CORE-BIAS-1…3


@pytest.mark.contract("CORE-BIAS-1")
@given(data=st.data())
def test_bias_option_values(row, driver, data):
    """CORE-BIAS-1: a tuner with a `bias` field accepts "none", "all" and any string ending in "_only", and injection
    with any other value raises NotImplementedError (at construction or at injection); a tuner without the field
    behaves as "none" (no base bias becomes trainable)."""
    row = fill_row(row, driver, data)
    setup = setup_for(row, driver, data)
    record, config = setup.record, setup.configs["default"]
    ctx = Context(
        row.clause, row.tuner, driver.name, setup.configs, {"weight": setup.layer.weight_shape}, row.dtype, setup.seed
    )

    def adapt(value: str | None) -> nn.Module:
        model, _ = fresh_rig(setup)
        extra = {} if value is None else {"bias": value}
        return driver.adapt(model, row.tuner, driver.make_config(row.tuner, {**config, **extra}))

    if not has_bias_option(record):
        model = adapt(None)
        trained = [n for n, p in model.named_parameters() if n.endswith("bias") and p.requires_grad]
        assert_equal(ctx, "trainable biases of a tuner without a bias option (behaves as 'none')", trained, [])
        return
    adapt("none")  # the config itself is accepted: a rejection below is about the bias value
    for value in ("all", data.draw(only_values(), label="an '_only' value")):
        ctx.config = {**config, "bias": value}
        try:
            adapt(value)
        except (NotImplementedError, ValueError, TypeError) as exc:  # the clause decides which values are rejected
            fail(ctx, f"bias={value!r} was rejected ({type(exc).__name__}: {exc}), but should be accepted")
    invalid = data.draw(
        st.sampled_from(["only", "All", "None", "none_", "_onl", "bias", "", "x_only_"])
        | st.text(string.ascii_letters + "_", max_size=8).filter(
            lambda s: s not in ("none", "all") and not s.endswith("_only")
        ),
        label="invalid value",
    )
    ctx.config = {**config, "bias": invalid}
    assert_raises_clause(ctx, (NotImplementedError,), "", lambda: adapt(invalid))


@pytest.mark.contract("CORE-BIAS-2")
@given(data=st.data())
def test_bias_option_semantics(row, driver, data):
    """CORE-BIAS-2: "all" makes every parameter named `bias` trainable (also an unadapted layer's); "…_only" exactly
    the biases of the adapted layers' base layers; "none" (and a tuner without the option) no bias."""
    row = fill_row(row, driver, data)
    record = RECORDS[row.tuner]
    target = data.draw(st.sampled_from([KEY, [KEY]]), label="target_modules")  # `layer` only, or both layers
    setup = setup_for(row, driver, data, twin=True, targets={"default": target})
    bias = draw_bias(record, data)
    if bias is not None:
        setup.configs["default"]["bias"] = bias
    scene = build(driver, setup)
    ctx, model = scene.context, scene.model
    adapted = {id(driver.layer_state(model, k).base_layer.bias) for k in driver.adapted_modules(model)}
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] != "bias":
            continue
        want = bias == "all" or (bias not in (None, "none") and id(p) in adapted)
        if p.requires_grad != want:
            fail(
                ctx,
                f"with bias={bias!r} the parameter {name!r} has requires_grad {p.requires_grad}, but should be {want}",
            )


@pytest.mark.contract("CORE-BIAS-3")
@given(data=st.data())
def test_one_adapter_with_bias(row, driver, data):
    """CORE-BIAS-3: with one adapter having `bias != "none"`, adding another with `bias != "none"` is rejected with
    ValueError, changing nothing; adding one with "none" is accepted. (Tuners without the option: not applicable.)"""
    record = RECORDS[row.tuner]
    if not has_bias_option(record):
        pytest.skip("not applicable: the tuner has no `bias` option (CORE-BIAS-1: it behaves as 'none')")
    row = fill_row(row, driver, data)
    first, second, third = names = draw_names(data, 3)
    setup = setup_for(row, driver, data, (first, second))
    holder = data.draw(st.sampled_from([first, second]), label="adapter with the bias option")
    setup.configs[holder]["bias"] = data.draw(bias_values(), label="its bias")
    scene, _ = build_rig(driver, setup)
    ctx, model = scene.context, scene.model
    before = snapshot(driver, scene, names)
    config = data.draw(record.configs(setup.layer, record.variant(row.variant), row.init), label="third config")
    config = {**config, "target_modules": [KEY], "bias": data.draw(bias_values(), label="third bias")}
    ctx.config = {**setup.configs, third: config}
    cfg = driver.make_config(row.tuner, config)
    assert_raises_clause(ctx, (ValueError,), "", lambda: driver.add_adapter(model, row.tuner, third, cfg))
    assert_same_state(
        ctx,
        f"after the rejected add_adapter({third!r}, bias={config['bias']!r})",
        before,
        snapshot(driver, scene, names),
    )
    driver.add_adapter(model, row.tuner, third, driver.make_config(row.tuner, {**config, "bias": "none"}))
