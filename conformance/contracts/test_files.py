"""Family `files`: PEFT-format save and load (SPEC §1.12 CORE-SAVE-1…9 and each tuner's SAVE clause, §7.4).

What an implementation saves is read back with the judge's own reader (`conformance.spec.checkpoint`, written from
SPEC alone) and compared with the parameters read back through the driver; files the suite alters (a key left out,
a tensor of the wrong shape) are written with the judge's own writer.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from conformance.assertions import Context, assert_equal, assert_raises_clause, fail
from conformance.drivers.base import Driver
from conformance.harness import KEY, Holder, require_base_runs, seed_torch
from conformance.rows import RowSpec
from conformance.scenes import (
    ALL_DTYPES,
    SECOND,
    Scene,
    Setup,
    Twin,
    build,
    caught_warnings,
    draw_setup,
    fill_row,
    offers,
    require_lifecycle,
    scene_for,
    user_warnings,
)
from conformance.spec import checkpoint as ckpt
from conformance.spec.record import TunerRecord
from conformance.spec.records import RECORDS
from conformance.strategies import DTYPES, build_base, input_shapes, random_tensor

# ---------------------------------------------------------------------------------------------------------------
# shared steps


def save_and_read(
    driver: Driver, model: nn.Module, directory: str, adapters: list[str] | None = None, safetensors: bool = True
) -> Callable[[str], ckpt.Checkpoint]:
    """`driver.save` into `directory`; returns a reader of one adapter's directory (CORE-SAVE-1's layout)."""
    driver.save(model, directory, adapters, safetensors=safetensors)
    return lambda name: ckpt.read(ckpt.adapter_directory(directory, name))


def tensor_names(setup: Setup, name: str, key: str) -> dict[str, tuple[int, ...]]:
    """The oracle's canonical tensors (name → shape) of adapter `name` on `key` (SPEC §0.6: the saved names)."""
    record = setup.record
    return record.oracle.param_shapes(record.resolve(setup.configs[name], key), setup.layer)


def adapter_keys(checkpoint: ckpt.Checkpoint) -> dict[str, tuple[str, str]]:
    """The file's §7.4 tensor keys → (module key, canonical name)."""
    return {key: parts for key in checkpoint.tensors if (parts := ckpt.split_key(key)) is not None}


def assert_tensors_equal(context: Context, what: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """⟨Z⟩ between tensors that may differ in dtype only through an exact widening: shape, then values in float64."""
    __tracebackhide__ = True
    assert_equal(context, f"{what}: shape", tuple(actual.shape), tuple(expected.shape))
    assert_equal(context, f"{what}: values", actual.detach().double(), expected.detach().double())


def assert_file_holds(
    context: Context, checkpoint: ckpt.Checkpoint, expected: dict[str, torch.Tensor], what: str
) -> None:
    """The file's keys are exactly `expected`'s and every tensor equals it bitwise (⟨Z⟩, shapes included)."""
    __tracebackhide__ = True
    assert_equal(context, f"{what}: keys", sorted(checkpoint.tensors), sorted(expected))
    for key, value in expected.items():
        assert_tensors_equal(context, f"{what}: {key}", checkpoint.tensors[key], value)


def live_tensors(driver: Driver, scene: Scene, name: str, keys: tuple[str, ...] | None = None) -> dict:
    """Adapter `name`'s parameters read back through the driver, under their saved keys."""
    out = {}
    for key in scene.setup.keys if keys is None else keys:
        out.update({ckpt.saved_key(key, n): t for n, t in driver.get_params(scene.model, key, name).items()})
    return out


def fresh_base(setup: Setup, seed_offset: int = 0) -> nn.Module:
    """A freshly built copy of the scene's base model (same weights), the torch RNG in another state."""
    row, layer = setup.row, setup.layer
    seed_torch(setup.seed + 1000 + seed_offset)  # CORE-SAVE-5: "any RNG state"
    bases = [build_base(layer, row.dtype, setup.seed + 7 * i) for i in range(len(setup.keys))]
    return Twin(*bases) if setup.twin else Holder(*bases)


def has_field(record: TunerRecord, name: str) -> bool:
    return name in record.defaults


def bias_options(record: TunerRecord) -> list[str]:
    """CORE-BIAS-1's values for a tuner whose table has `bias` (`"<prefix>only"` ends in `_only`); else `none`."""
    if not has_field(record, "bias"):
        return ["none"]
    return ["none", "all", ckpt.SAVED[record.peft_type].prefix + "only"]


def key_pattern(module_key: str, name: str) -> re.Pattern[str]:
    """A message naming the saved key of `name` on `module_key`: the key as saved (`base_model.model.…`) or as held in
    memory (PEFT adds the adapter name after the parameter's first segment); `layer.x` must not match inside
    `inner.layer.x`."""
    subject = re.escape(f"{module_key}.{name.split('.')[0]}")
    return re.compile(rf"(?:(?<![\w.])|(?<=base_model\.model\.)){subject}(?!\w)", re.IGNORECASE)


def shape_pattern(shape: tuple[int, ...]) -> re.Pattern[str]:
    """A shape written as `(2, 3)`, `[2, 3]` or `torch.Size([2, 3])`."""
    numbers = r"\s*,\s*".join(str(s) for s in shape)
    return re.compile(rf"[\(\[]\s*{numbers}\s*,?\s*[\)\]]")


def nonempty_input(data: st.DataObject, scene: Scene, requires_grad: bool = False) -> torch.Tensor:
    """An ordinary input (never empty: gradients then reach every parameter)."""
    shape = data.draw(input_shapes(scene.setup.layer), label="input_shape")
    scene.context.shapes["x"] = shape
    x = random_tensor(shape, scene.setup.row.dtype, scene.setup.seed + 1)
    return x.requires_grad_(requires_grad)


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ---------------------------------------------------------------------------------------------------------------
# CORE-SAVE-1: files and sub-folders


@pytest.mark.contract("CORE-SAVE-1")
@given(data=st.data())
def test_saved_files(row, driver, data):
    """CORE-SAVE-1: `save` writes `adapter_config.json` and `adapter_model.safetensors` of `default` into the
    directory and of every other selected adapter into `dir/<name>/` (each holding its own adapter's tensors); with
    `selected_adapters` only those; (optional `files.bin`) `safe_serialization=False` writes `adapter_model.bin`."""
    lifecycle = offers(driver, row.tuner, "lifecycle")
    scene = scene_for(row, driver, data, ("default", SECOND) if lifecycle else ("default",))
    ctx, model = scene.context, scene.model
    expected_files = sorted([ckpt.CONFIG_NAME, ckpt.SAFETENSORS_NAME])
    with tempfile.TemporaryDirectory() as tmp:
        read = save_and_read(driver, model, tmp)
        for name in scene.names:
            where = ckpt.adapter_directory(tmp, name)
            got = ckpt.files_in(where) if os.path.isdir(where) else []
            assert_equal(
                ctx, f"adapter files written for {name!r} in {os.path.relpath(where, tmp)!r}", got, expected_files
            )
            assert_file_holds(ctx, read(name), live_tensors(driver, scene, name), f"the file of {name!r}")
    if lifecycle:
        with tempfile.TemporaryDirectory() as tmp:
            driver.save(model, tmp, [SECOND])
            assert_equal(ctx, f"adapter files in the directory itself after save(adapters=[{SECOND!r}])",
                         ckpt.files_in(tmp), [])  # fmt: skip
            got = ckpt.files_in(os.path.join(tmp, SECOND)) if os.path.isdir(os.path.join(tmp, SECOND)) else []
            assert_equal(ctx, f"adapter files in {SECOND}/ after save(adapters=[{SECOND!r}])", got, expected_files)
    if "files.bin" in driver.capabilities().tuners[row.tuner].optional:
        with tempfile.TemporaryDirectory() as tmp:
            read = save_and_read(driver, model, tmp, ["default"], safetensors=False)
            got = ckpt.files_in(tmp)
            assert_equal(
                ctx,
                "adapter files after save(safe_serialization=False)",
                got,
                sorted([ckpt.BIN_NAME, ckpt.CONFIG_NAME]),
            )
            assert_file_holds(ctx, read("default"), live_tensors(driver, scene, "default"), "adapter_model.bin")


# ---------------------------------------------------------------------------------------------------------------
# CORE-SAVE-2: key naming


@pytest.mark.contract("CORE-SAVE-2")
@given(data=st.data())
def test_saved_key_names(row, driver, data):
    """CORE-SAVE-2: every saved key is `"base_model.model." + key + "." + canonical name` (a dotted module key,
    a sub-module parameter's own `.weight`), and no key contains the adapter name (an adapter named `zeta`)."""
    row = fill_row(row, driver, data)
    scene = build(driver, draw_setup(driver, row, data, (SECOND,), twin=True))
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_and_read(driver, scene.model, tmp, [SECOND])(SECOND)
    expected = sorted(
        ckpt.saved_key(key, name) for key in scene.setup.keys for name in tensor_names(scene.setup, SECOND, key)
    )
    assert_equal(scene.context, "saved keys", sorted(saved.tensors), expected)
    named = [key for key in saved.tensors if SECOND in key]
    if named:
        fail(scene.context, f"saved keys contain the adapter name {SECOND!r}: {named}")


# ---------------------------------------------------------------------------------------------------------------
# CORE-SAVE-3: exactly this adapter's tensors


class Bench(Twin):
    """A `Twin` (keys `layer`, `inner.layer`) plus `head` (a module to save, without bias) and `other` (a module
    with a bias that no adapter targets): every kind of tensor CORE-SAVE-3 lists has a place."""

    def __init__(self, first: nn.Module, second: nn.Module, dtype: torch.dtype, seed: int) -> None:
        super().__init__(first, second)
        self.head = nn.Linear(3, 2, bias=False)
        self.other = nn.Linear(2, 3)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in (self.head, self.other):
                for param in module.parameters():
                    param.copy_(torch.rand(param.shape, generator=generator, dtype=torch.float64) * 2 - 1)
        self.head.to(dtype)
        self.other.to(dtype)


# Names that are substrings of each other (the clause's list), each with its own `target_modules` (`default`, the one
# that may train biases, is injected in both keys).
SUBSTRING_ADAPTERS: dict[str, Any] = {
    "default": ["layer"],
    "default2": r"inner\.layer",
    "other_default": ["layer"],
    "foodefault_bar": "layer",
    "efaul": r".*layer",
}


@pytest.mark.contract("CORE-SAVE-3")
@given(data=st.data())
def test_saved_tensors_exactly(row, driver, data):
    """CORE-SAVE-3: the file of adapter `a` holds exactly `a`'s tensors on the layers it is injected in, the biases
    its `bias` option trains (`<key>.base_layer.bias` on adapted modules, `<key>.bias` elsewhere) and its
    `modules_to_save` copies (`head.weight`) — never another adapter's, with names `default`, `default2`,
    `other_default`, `foodefault_bar`, `efaul` (values compared bitwise with the tensors read back)."""
    require_lifecycle(driver, row)
    row = fill_row(row, driver, data)
    record = RECORDS[row.tuner]
    setup = draw_setup(driver, row, data, tuple(SUBSTRING_ADAPTERS), twin=True, targets=SUBSTRING_ADAPTERS)
    bias = data.draw(st.sampled_from(bias_options(record)), label="bias of default")
    head_owners = ["efaul"] + (["default"] if data.draw(st.booleans(), label="default saves head") else [])
    for name in setup.configs:
        if has_field(record, "bias"):
            setup.configs[name]["bias"] = bias if name == "default" else "none"
        if name in head_owners:
            setup.configs[name]["modules_to_save"] = ["head"]
    dtype = DTYPES[row.dtype]
    bench = Bench(*(build_base(setup.layer, row.dtype, setup.seed + 7 * i) for i in range(2)), dtype, setup.seed + 5)
    head_weight = bench.head.weight.detach().clone()
    scene = adapt_all(driver, setup, bench)

    def base_biases(keys: list[str]) -> dict[str, torch.Tensor]:
        return {saved_bias(key): driver.layer_state(scene.model, key).base_layer.bias for key in keys}

    with tempfile.TemporaryDirectory() as tmp:
        read = save_and_read(driver, scene.model, tmp)
        for name in SUBSTRING_ADAPTERS:
            injected = [key for key in setup.keys if scene.injected(driver, name, key)]
            expected = live_tensors(driver, scene, name, tuple(injected))
            wanted = "none" if name != "default" else bias
            if wanted == "all":  # every bias of the model: the adapted modules' base layers and `other`
                expected.update(base_biases(driver.adapted_modules(scene.model)))
                expected[ckpt.KEY_PREFIX + "other.bias"] = bench.other.bias
            elif wanted.endswith("_only"):  # the base layers of the layers `default` is injected in
                expected.update(base_biases(injected))
            if name in head_owners:
                expected[ckpt.KEY_PREFIX + "head.weight"] = head_weight
            what = (
                f"the file of {name!r} (bias {wanted!r}, modules_to_save {['head'] if name in head_owners else None})"
            )
            assert_file_holds(scene.context, read(name), expected, what)


def saved_bias(module_key: str) -> str:
    """CORE-SAVE-3: the saved key of an adapted module's base-layer bias."""
    return f"{ckpt.KEY_PREFIX}{module_key}.base_layer.bias"


def adapt_all(driver: Driver, setup: Setup, model: nn.Module) -> Scene:
    """`scenes.build` on a given base model: the first adapter by `adapt`, the others by `add_adapter`, every
    adapter's parameters set to the record's `perturb` values on the keys it is injected in; eval mode."""
    record, layer = setup.record, setup.layer
    generator = torch.Generator().manual_seed(setup.seed + 2)
    for i, (name, config) in enumerate(setup.configs.items()):
        cfg = driver.make_config(setup.row.tuner, config)
        if i == 0:
            model = driver.adapt(model, setup.row.tuner, cfg, name)
        else:
            driver.add_adapter(model, setup.row.tuner, name, cfg)
        for key in setup.keys:
            shapes = {n: tuple(t.shape) for n, t in driver.get_params(model, key, name).items()}
            if shapes:
                driver.set_params(
                    model, key, name, record.perturb(record.resolve(config, key), layer, shapes, generator)
                )
    shapes = {"weight": layer.weight_shape}
    row = setup.row
    return Scene(setup, model.eval(), Context(row.clause, row.tuner, driver.name, setup.configs, shapes, row.dtype,
                                              setup.seed))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# CORE-SAVE-4: adapter_config.json


def check_config_json(context: Context, saved: dict, record: TunerRecord, config: dict, base_class: type) -> None:
    """CORE-SAVE-4: the config's JSON — every field of the tuner's table (the value given, else its default; sets
    written as lists) and the base fields — with `"inference_mode": true`, the tuner's `peft_type` and, `task_type`
    being None, `auto_mapping` naming the base model's class and module."""
    __tracebackhide__ = True
    missing = sorted((set(record.defaults) | set(ckpt.BASE_FIELDS)) - set(saved))
    if missing:
        fail(context, f"adapter_config.json lacks the fields {missing} (it holds {sorted(saved)})")
    for name, default in record.defaults.items():
        expected = config.get(name, default)
        value = saved[name]
        if name in ckpt.SET_FIELDS and isinstance(expected, (list, set, tuple, frozenset)):
            if not isinstance(value, list):
                fail(context, f"adapter_config.json: {name} = {value!r}, but a set should be written as a list")
            value, expected = set(value), set(expected)
        assert_equal(context, f"adapter_config.json: {name}", value, expected)
    assert_equal(context, "adapter_config.json: peft_type", saved["peft_type"], record.peft_type)
    assert_equal(context, "adapter_config.json: inference_mode", saved["inference_mode"], True)
    assert_equal(context, "adapter_config.json: task_type", saved["task_type"], None)
    mapping = {"base_model_class": base_class.__name__, "parent_library": base_class.__module__}
    assert_equal(context, "adapter_config.json: auto_mapping (task_type None)", saved["auto_mapping"], mapping)


@pytest.mark.contract("CORE-SAVE-4")
@given(data=st.data())
def test_saved_config(row, driver, data):
    """CORE-SAVE-4: `adapter_config.json` is the config's JSON with `"inference_mode": true` (the model itself is
    not in inference mode), the tuner's `peft_type`, sets as lists and `auto_mapping` = {base_model_class,
    parent_library} of the base model."""
    scene = scene_for(row, driver, data)
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_and_read(driver, scene.model, tmp)("default").config
    check_config_json(scene.context, saved, scene.setup.record, scene.setup.configs["default"], Holder)


# ---------------------------------------------------------------------------------------------------------------
# CORE-SAVE-5: round trip


@pytest.mark.contract("CORE-SAVE-5", axes=("variant",))
@given(data=st.data())
def test_save_load_round_trip(row, driver, data):
    """CORE-SAVE-5: saving and loading into a freshly built base model (another RNG state) gives bitwise-equal
    adapter parameters on every layer, the trained biases its `bias` option saved, and bitwise-equal outputs; any
    dtype (half-precision bases: float32 adapters by autocast, on both sides)."""
    row = fill_row(row, driver, data, dtypes=ALL_DTYPES)
    setup = draw_setup(driver, row, data, twin=True)
    bias = data.draw(st.sampled_from(bias_options(setup.record)), label="bias")
    if has_field(setup.record, "bias"):
        setup.configs["default"]["bias"] = bias
    scene = build(driver, setup)
    if bias != "none":  # "trained" biases: the values the file must bring back
        generator = torch.Generator().manual_seed(setup.seed + 3)
        with torch.no_grad():
            for key in setup.keys:
                live = driver.layer_state(scene.model, key).base_layer.bias
                live.copy_(torch.rand(live.shape, generator=generator, dtype=torch.float64) * 2 - 1)
    x = scene.input(data)
    before = output(scene.model, x)
    with tempfile.TemporaryDirectory() as tmp:
        save_and_read(driver, scene.model, tmp)
        loaded = driver.load(fresh_base(setup), tmp)
    ctx = scene.context
    for key in setup.keys:
        params = driver.get_params(loaded, key, "default")
        original = driver.get_params(scene.model, key, "default")
        assert_equal(ctx, f"loaded parameter names on {key}", sorted(params), sorted(original))
        for name, value in original.items():
            assert_tensors_equal(ctx, f"loaded {name} on {key}", params[name], value)
        if bias != "none":
            trained = driver.layer_state(scene.model, key).base_layer.bias
            got = driver.layer_state(loaded, key).base_layer.bias
            assert_tensors_equal(ctx, f"loaded base bias of {key} (bias {bias!r})", got, trained)
    assert_equal(ctx, "output after save and load vs before", output(loaded, x), before)


# ---------------------------------------------------------------------------------------------------------------
# CORE-SAVE-6: every tensor used; missing keys warn; wrong shapes are clear errors


@pytest.mark.contract("CORE-SAVE-6")
@given(data=st.data())
def test_load_missing_and_mismatched_keys(row, driver, data):
    """CORE-SAVE-6: loading uses every tensor of the file; a file lacking one adapter key loads with a UserWarning
    listing it (and still uses the others); a tensor of another shape than the canonical one is an error of any type
    whose message names the key and both shapes."""
    row = fill_row(row, driver, data)
    setup = draw_setup(driver, row, data, twin=True)
    scene = build(driver, setup)
    ctx = scene.context
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_and_read(driver, scene.model, tmp)("default")
        loaded = driver.load(fresh_base(setup), tmp)
        check_loaded(ctx, driver, loaded, saved.tensors, "loading the saved directory")

        keys = adapter_keys(saved)
        dropped = data.draw(st.sampled_from(sorted(keys)), label="key left out")
        module_key, name = keys[dropped]
        partial = {k: v for k, v in saved.tensors.items() if k != dropped}
        ckpt.write(os.path.join(tmp, "partial"), saved.config, partial)
        holder: list[nn.Module] = []
        caught = caught_warnings(lambda: holder.append(driver.load(fresh_base(setup, 1), os.path.join(tmp, "partial"))))
        pattern = key_pattern(module_key, name)
        if not any(pattern.search(str(w.message)) for w in user_warnings(caught)):
            seen = [f"{w.category.__name__}: {w.message}" for w in caught]
            fail(ctx, f"loading a file without {dropped!r} emitted no UserWarning listing it (warnings: {seen})")
        check_loaded(ctx, driver, holder[0], partial, f"loading the file without {dropped!r}")

        resized = data.draw(st.sampled_from(sorted(keys)), label="key of another shape")
        module_key, name = keys[resized]
        value = saved.tensors[resized]
        wrong = torch.cat([value, value[:1]], dim=0)
        ckpt.write(os.path.join(tmp, "wrong"), saved.config, {**saved.tensors, resized: wrong})
        exc = assert_raises_clause(
            ctx, (Exception,), "", lambda: driver.load(fresh_base(setup, 2), os.path.join(tmp, "wrong"))
        )
    message = str(exc)
    for what, pattern in (
        (f"the key {resized!r}", key_pattern(module_key, name)),
        (f"the file's shape {tuple(wrong.shape)}", shape_pattern(tuple(wrong.shape))),
        (f"the canonical shape {tuple(value.shape)}", shape_pattern(tuple(value.shape))),
    ):
        if not pattern.search(message):
            fail(ctx, f"loading {resized!r} with shape {tuple(wrong.shape)}: the {type(exc).__name__} raised does "
                      f"not name {what}: {message}")  # fmt: skip


def check_loaded(context: Context, driver: Driver, model: nn.Module, tensors: dict, what: str) -> None:
    """Every adapter tensor of `tensors` is the loaded model's parameter, bitwise."""
    __tracebackhide__ = True
    for key, value in tensors.items():
        parts = ckpt.split_key(key)
        if parts is None:
            continue
        params = driver.get_params(model, parts[0], "default")
        if parts[1] not in params:
            fail(context, f"{what}: the loaded model has no {parts[1]} on {parts[0]} (it has {sorted(params)})")
        assert_tensors_equal(context, f"{what}: {key} as loaded", params[parts[1]], value)


# ---------------------------------------------------------------------------------------------------------------
# CORE-SAVE-7: is_trainable


@pytest.mark.contract("CORE-SAVE-7")
@given(data=st.data())
def test_load_trainability(row, driver, data):
    """CORE-SAVE-7: loading with `is_trainable=False` (the default) leaves every adapter parameter frozen (no
    `.grad` after a backward pass), `is_trainable=True` makes every one trainable (each gets a `.grad`)."""
    scene = scene_for(row, driver, data)
    ctx = scene.context
    with tempfile.TemporaryDirectory() as tmp:
        save_and_read(driver, scene.model, tmp)
        for trainable in (False, True):
            loaded = driver.load(fresh_base(scene.setup, int(trainable)), tmp, trainable=trainable).eval()
            x = nonempty_input(data, scene, requires_grad=True)
            loaded(x).sum().backward()
            grads = driver.get_grads(loaded, KEY, "default")
            if not grads:
                fail(ctx, f"the model loaded with is_trainable={trainable} has no parameters of 'default'")
            for name, grad in grads.items():
                if trainable and grad is None:
                    fail(ctx, f"loaded with is_trainable=True, {name} got no .grad: it is not trainable")
                if not trainable and grad is not None:
                    fail(ctx, f"loaded with is_trainable=False (default), {name} got a .grad: it is trainable")


# ---------------------------------------------------------------------------------------------------------------
# CORE-SAVE-8: load_adapter


@pytest.mark.contract("CORE-SAVE-8")
@given(data=st.data())
def test_load_adapter(row, driver, data):
    """CORE-SAVE-8: `load_adapter(dir, name)` adds the saved adapter under `name` without activating it (active list
    and outputs unchanged, bitwise); its parameters equal the saved ones and, once active, its outputs equal the
    saved adapter's bitwise."""
    require_lifecycle(driver, row)
    row = fill_row(row, driver, data, dtypes=("float64", "float32"))
    setup = draw_setup(driver, row, data)
    saved = build(driver, setup)
    x = saved.input(data)
    expected = output(saved.model, x)
    variant = setup.record.variant(row.variant)
    config = data.draw(setup.record.configs(setup.layer, variant, row.init), label="config of the loading model")
    other = Setup(row, setup.layer, {"default": {**config, "target_modules": [KEY]}}, setup.seed)
    target = build(driver, other, perturb=lambda name, key, params: {k: -v for k, v in params.items()})
    ctx, model = saved.context, target.model
    before = output(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        driver.save(saved.model, tmp)
        driver.load_adapter(model, tmp, SECOND)
    assert_equal(ctx, f"active adapters after load_adapter(dir, {SECOND!r})",
                 driver.layer_state(model, KEY).active_adapters, ["default"])  # fmt: skip
    assert_equal(ctx, f"output after load_adapter(dir, {SECOND!r}) (not active)", output(model, x), before)
    params, original = driver.get_params(model, KEY, SECOND), driver.get_params(saved.model, KEY, "default")
    assert_equal(ctx, f"parameter names of {SECOND!r}", sorted(params), sorted(original))
    for name, value in original.items():
        assert_tensors_equal(ctx, f"{name} of the loaded adapter {SECOND!r}", params[name], value)
    driver.set_active(model, [SECOND])
    assert_equal(ctx, f"output with the loaded {SECOND!r} active vs the saved adapter's", output(model, x), expected)


# ---------------------------------------------------------------------------------------------------------------
# CORE-SAVE-9: dtype, contiguous, unshared


@pytest.mark.contract("CORE-SAVE-9", axes=("dtype",))
@given(data=st.data())
def test_saved_tensor_layout(row, driver, data):
    """CORE-SAVE-9: every saved tensor has the adapter's dtype (as the driver reads it back; half-precision bases with
    and without autocast) and is contiguous and unshared (safetensors byte ranges exact and disjoint; in a `.bin`,
    where the optional `files.bin` is declared, no views and no shared storage)."""
    row = fill_row(row, driver, data)
    setup = draw_setup(driver, row, data)
    autocast = data.draw(st.booleans(), label="autocast_adapter_dtype")
    base = build_base(setup.layer, row.dtype, setup.seed)
    require_base_runs(base, setup.layer, row.dtype)
    config = setup.configs["default"]
    model = driver.adapt(
        Holder(base), row.tuner, driver.make_config(row.tuner, config), autocast_adapter_dtype=autocast
    )
    shapes = {n: tuple(t.shape) for n, t in driver.get_params(model, KEY, "default").items()}
    generator = torch.Generator().manual_seed(setup.seed + 2)
    params = setup.record.perturb(setup.record.resolve(config, KEY), setup.layer, shapes, generator)
    driver.set_params(model, KEY, "default", params)
    ctx = Context(row.clause, row.tuner, driver.name, setup.configs, {"weight": setup.layer.weight_shape}, row.dtype,
                  setup.seed)  # fmt: skip
    formats = [True] + ([False] if "files.bin" in driver.capabilities().tuners[row.tuner].optional else [])
    safetensors = data.draw(st.sampled_from(formats), label="safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_and_read(driver, model, tmp, safetensors=safetensors)("default")
    for name, value in driver.get_params(model, KEY, "default").items():
        saved_key = ckpt.saved_key(KEY, name)
        if saved_key not in saved.tensors:
            fail(ctx, f"the file lacks {saved_key!r}")
        got = ckpt.file_dtype(saved, saved_key)
        assert_equal(ctx, f"dtype of {saved_key!r} in {saved.format} (autocast {autocast})", got, value.dtype)
    problems = ckpt.layout_problems(saved)
    if problems:
        fail(ctx, f"saved tensors not contiguous and unshared in {saved.format}: {problems}")


# ---------------------------------------------------------------------------------------------------------------
# The tuners' SAVE clauses: keys, shapes and peft_type (§7.4)


def check_tuner_files(row: RowSpec, driver: Driver, data: st.DataObject, *, exact_json: bool) -> None:
    """A tuner's SAVE clause: the saved keys are `<key>.<name>` for exactly the tensors of §7.4 its mode has (the
    oracle's canonical names and shapes, all with the tuner's key prefix), and `"peft_type"` is the tuner's;
    `exact_json`: the JSON keys are exactly the tuner's table plus the base fields."""
    home = RECORDS.get(row.clause.split("-", 1)[0].lower())
    if home is not None and home.tuner != row.tuner:
        pytest.skip(f"{row.clause} is {home.tuner}'s file format; {row.tuner}'s has its own SAVE clause")
    scene = scene_for(row, driver, data)
    record, ctx = scene.setup.record, scene.context
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_and_read(driver, scene.model, tmp)("default")
    shapes = tensor_names(scene.setup, "default", KEY)
    table = ckpt.SAVED[record.peft_type]
    unlisted = sorted(set(shapes) - set(table.names))
    if unlisted:  # the judge's own consistency: the oracle's canonical names are §7.4's
        raise AssertionError(f"oracle names {unlisted} are not in §7.4's table for {record.peft_type}")
    expected = sorted(ckpt.saved_key(KEY, name) for name in shapes)
    assert_equal(ctx, f"saved keys ({record.peft_type}, prefix {table.prefix!r})", sorted(saved.tensors), expected)
    for name, shape in shapes.items():
        key = ckpt.saved_key(KEY, name)
        got = {key: tuple(saved.tensors[key].shape)}
        assert_equal(ctx, f"shape of the saved {name}", got, {key: tuple(shape)}, observe="saved")
    assert_equal(ctx, "adapter_config.json: peft_type", saved.config.get("peft_type"), record.peft_type)
    if exact_json:
        assert_equal(
            ctx, "adapter_config.json keys", sorted(saved.config), sorted(set(record.defaults) | set(ckpt.BASE_FIELDS))
        )


@pytest.mark.contract("BONE-SAVE-1", axes=("variant",), variants=("plain", "bat"))
@given(data=st.data())
def test_bone_files(row, driver, data):
    """BONE-SAVE-1: `<key>.bone_block` with its canonical shape per mode, `"peft_type": "BONE"`, and JSON keys exactly
    §2.1's table plus the base fields (MiSS rows skip: MISS-MATH-1 does not carry SAVE clauses; MISS-SAVE-1 is its
    format)."""
    check_tuner_files(row, driver, data, exact_json=True)


@pytest.mark.contract("MISS-SAVE-1", axes=("variant",))
@given(data=st.data())
def test_miss_files(row, driver, data):
    """MISS-SAVE-1: `<key>.miss_block` with its canonical shape per mode (`"mini"` included), `"peft_type": "MISS"`,
    and JSON keys exactly §2.9's table plus the base fields."""
    check_tuner_files(row, driver, data, exact_json=True)


@pytest.mark.contract("GRALORA-SAVE-1", "HRA-SAVE-1", "IA3-SAVE-1", "LOHA-SAVE-1", axes=("variant",))
@given(data=st.data())
def test_tuner_files(row, driver, data):
    """GRALORA-SAVE-1 (`gralora_A`, `gralora_B`, with `hybrid_r > 0` the two `…_general.weight`), HRA-SAVE-1
    (`hra_u`), IA3-SAVE-1 (`ia3_l`), LOHA-SAVE-1 (four `hada_w…`, `hada_t1/t2` in effective mode, no alpha tensor):
    exactly these keys with their canonical shapes, and the tuner's `peft_type`."""
    check_tuner_files(row, driver, data, exact_json=False)
