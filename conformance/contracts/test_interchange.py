"""Family `interchange`: checkpoint directories across implementations (SPEC §1.12 CORE-SAVE-10) and Bone ↔ MiSS
conversion (§2.9 MISS-CONV-1…3).

The peer of every row here is `golden`: a directory the judge writes itself from SPEC (`conformance.spec.checkpoint`:
the tuner's table and base fields, the keys of §7.4, parameters drawn in §8's input domain by the record's
`perturb`), which the implementation must load bitwise and reproduce when it saves (DESIGN "Interchange rows for the
reference use golden checkpoint directories written from the oracle").
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from conformance.assertions import Context, assert_close_to_oracle, assert_equal, assert_raises_clause, fail, outcome
from conformance.drivers.base import Driver
from conformance.harness import KEY, Holder, require_base_runs
from conformance.recording import calls_made
from conformance.rows import RowSpec
from conformance.scenes import assert_warned, caught_warnings, fill_row
from conformance.spec import checkpoint as ckpt
from conformance.spec.layer import Adapter, Layer, op
from conformance.spec.record import TunerRecord
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import scale, tolerance
from conformance.strategies import DTYPES, build_base, input_shapes, layers, logical_weight, random_tensor, seeds

PEER = "golden"
GOLDEN_DTYPES = ("float64", "float32")  # adapter dtype = base dtype (no autocast involved): files hold it as is
# `peft_version` of golden files (CORE-CFG-1: a string, or None filled in when read): a release of the PEFT 0.18 line,
# the last to ship Bone (SPEC's header), so a loader that checks the version sees a plausible writer.
GOLDEN_PEFT_VERSION = "0.18.0"
# SPEC §0.1 "deprecation": these categories (or subclasses) are accepted.
DEPRECATION = (DeprecationWarning, FutureWarning, UserWarning)


def record_of(peft_type: str) -> TunerRecord:
    """The record of the tuner whose files carry `peft_type` (a conversion clause names file formats, not tuners)."""
    return next(record for record in RECORDS.values() if record.peft_type == peft_type)


@dataclass
class Golden:
    """A golden adapter directory for one layer: the canonical config it was written from, the JSON and tensors it
    holds, and what is needed to rebuild the base model it belongs to."""

    record: TunerRecord
    layer: Layer
    config: dict  # canonical, with target_modules
    json: dict
    tensors: dict[str, torch.Tensor]  # saved key → tensor
    dtype: str
    seed: int

    def params(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors on `layer` by canonical name."""
        return {name: self.tensors[ckpt.saved_key(KEY, name)] for name in self.shapes()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.record.oracle.param_shapes(self.record.resolve(self.config, KEY), self.layer)

    def base(self) -> nn.Module:
        """A freshly built base model (the same weights every time)."""
        module = build_base(self.layer, self.dtype, self.seed)
        require_base_runs(module, self.layer, self.dtype)
        return Holder(module)

    def write(self, directory: str) -> str:
        ckpt.write(directory, self.json, self.tensors)
        return directory


def draw_golden(
    data: st.DataObject, record: TunerRecord, variant: str, kind: str, dtype: str, extra: dict | None = None
) -> Golden:
    """A golden directory's content for `record`'s `variant` on a drawn layer of `kind`: a config from the record's
    strategy (plus `extra` fields), the JSON of CORE-SAVE-4 and the tuner's SAVE clause, and parameters in §8's input
    domain by the record's `perturb`, in `dtype`, under the keys of CORE-SAVE-2."""
    layer = data.draw(layers(kind), label="layer")
    config = data.draw(record.configs(layer, record.variant(variant), None), label=f"{record.tuner} config")
    config = {**config, **(extra or {}), "target_modules": [KEY]}
    seed = data.draw(seeds, label="seed")
    shapes = record.oracle.param_shapes(record.resolve(config, KEY), layer)
    generator = torch.Generator().manual_seed(seed + 2)
    params = record.perturb(record.resolve(config, KEY), layer, shapes, generator)
    tensors = {ckpt.saved_key(KEY, name): value.to(DTYPES[dtype]) for name, value in params.items()}
    json = ckpt.config_json(record.peft_type, record.defaults, config, base_class=Holder)
    json["peft_version"] = GOLDEN_PEFT_VERSION
    return Golden(record, layer, config, json, tensors, dtype, seed)


def context_for(row: RowSpec, driver: Driver, golden: Golden) -> Context:
    shapes = {"weight": golden.layer.weight_shape, **{n: tuple(s) for n, s in golden.shapes().items()}}
    return Context(row.clause, row.tuner, driver.name, golden.config, shapes, golden.dtype, golden.seed)


def golden_input(data: st.DataObject, golden: Golden, context: Context) -> torch.Tensor:
    shape = data.draw(input_shapes(golden.layer), label="input_shape")
    context.shapes["x"] = shape
    return random_tensor(shape, golden.dtype, golden.seed + 1)


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def assert_params_bitwise(
    context: Context, what: str, actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """⟨Z⟩: the same canonical names, shapes and values (compared in float64: every dtype widens exactly)."""
    __tracebackhide__ = True
    assert_equal(context, f"{what}: parameter names", sorted(actual), sorted(expected))
    for name, value in expected.items():
        assert_equal(context, f"{what}: shape of {name}", tuple(actual[name].shape), tuple(value.shape))
        assert_equal(context, f"{what}: {name}", actual[name].detach().double(), value.detach().double())


def assert_output_is_oracle(
    context: Context,
    what: str,
    driver: Driver,
    model: nn.Module,
    record: TunerRecord,
    config: dict,
    golden: Golden,
    x: torch.Tensor,
) -> None:
    """⟨N⟩: the loaded model's output is `record`'s oracle for `config`, evaluated on the live base tensors and the
    parameters read back through the driver."""
    __tracebackhide__ = True
    base = driver.layer_state(model, KEY).base_layer
    bias = None if base.bias is None else base.bias.detach().double()
    params = {k: v.double() for k, v in driver.get_params(model, KEY, "default").items()}
    adapter = Adapter(record.resolve(config, KEY), params)
    weight, bias = record.oracle.effective(logical_weight(base, golden.layer), bias, golden.layer, [adapter])
    expected = op(x.double(), weight, bias, golden.layer)
    assert_close_to_oracle(
        context=context,
        what=what,
        actual=output(model, x),
        expected=expected,
        tol=tolerance("N", golden.dtype),
        scale=scale(expected),
    )


def assert_file_tensors(context: Context, what: str, actual: dict, expected: dict) -> None:
    """⟨Z⟩ on files: the same keys, and every tensor of the same dtype and bitwise equal."""
    __tracebackhide__ = True
    assert_equal(context, f"{what}: keys", sorted(actual), sorted(expected))
    for key, value in expected.items():
        assert_equal(context, f"{what}: dtype of {key}", actual[key].dtype, value.dtype)
        assert_equal(context, f"{what}: {key}", actual[key], value)


def by_name(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Saved keys of the module `layer` → canonical names."""
    return {parts[1]: value for key, value in tensors.items() if (parts := ckpt.split_key(key)) and parts[0] == KEY}


def supports(driver: Driver, record: TunerRecord, kind: str, surface: str = "files") -> bool:
    """The driver claims `record`'s tuner, offers `surface` for it and supports the layer kind."""
    claims = driver.capabilities().tuners.get(record.tuner)
    if claims is None or surface not in claims.surfaces:
        return False
    if kind in record.optional_kinds:
        return record.optional_kinds[kind] in claims.optional
    return kind in claims.layer_kinds


# ---------------------------------------------------------------------------------------------------------------
# CORE-SAVE-10: golden directories, both directions


@pytest.mark.contract("CORE-SAVE-10", axes=("variant",), peer=PEER)
@given(data=st.data())
def test_golden_interchange(row, driver, data):
    """CORE-SAVE-10: a golden directory (written by the judge from SPEC) loads with bitwise-equal parameters and an
    output equal to the oracle's within ⟨N⟩; saved back by the implementation, it has the same keys, dtypes and
    bitwise-equal tensors, and the same config: the tuner's table, `peft_type`, `task_type`, `"inference_mode": true`
    and `auto_mapping` (base fields an implementation fills itself, such as `peft_version`, aside)."""
    row = fill_row(row, driver, data, dtypes=GOLDEN_DTYPES)
    record = RECORDS[row.tuner]
    golden = draw_golden(data, record, row.variant, row.layer_kind, row.dtype)
    ctx = context_for(row, driver, golden)
    with tempfile.TemporaryDirectory() as tmp:
        model = driver.load(golden.base(), golden.write(os.path.join(tmp, "golden")))
        loaded = driver.get_params(model, KEY, "default")
        assert_params_bitwise(ctx, "loaded from the golden directory", loaded, golden.params())
        x = golden_input(data, golden, ctx)
        assert_output_is_oracle(ctx, "output of the loaded golden adapter", driver, model, record, golden.config,
                                golden, x)  # fmt: skip
        driver.save(model, os.path.join(tmp, "saved"))
        saved = ckpt.read(os.path.join(tmp, "saved"))
    assert_file_tensors(ctx, "the golden adapter saved back", saved.tensors, golden.tensors)
    for name in (*record.defaults, "peft_type", "task_type", "inference_mode", "auto_mapping"):
        value, expected = saved.config.get(name, "<absent>"), golden.json[name]
        if name in ckpt.SET_FIELDS and isinstance(value, list) and isinstance(expected, list):
            value, expected = sorted(value), sorted(expected)
        assert_equal(ctx, f"adapter_config.json saved back: {name}", value, expected)


# ---------------------------------------------------------------------------------------------------------------
# MISS-CONV-1..3: Bone ↔ MiSS


@pytest.mark.contract("MISS-CONV-1", axes=("variant",), variants=("plain", "bat"), peer=PEER)
@given(data=st.data())
def test_bone_to_miss(row, driver, data):
    """MISS-CONV-1: `convert_checkpoint(src, dst, to="MISS")` of a golden Bone directory renames `.bone_` to
    `.miss_` in every key (tensors bitwise, dtype kept), sets `peft_type` "MISS", keeps every other field and adds
    `miss_dropout: 0.0`, `mini_r: 1`; loaded as MiSS it has bitwise-equal parameters and the oracle's output, and —
    where the implementation loads Bone directories too — bitwise the Bone adapter's output."""
    source, target = (record_of(t) for t in ckpt.CONVERSIONS[row.clause])
    row = fill_row(row, driver, data, dtypes=GOLDEN_DTYPES)
    golden = draw_golden(data, source, row.variant, row.layer_kind, row.dtype)
    ctx = context_for(row, driver, golden)
    tensors, json = target.oracle.convert_bone_to_miss(golden.tensors, golden.json)
    config = {**golden.config, "miss_dropout": 0.0, "mini_r": 1}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = golden.write(os.path.join(tmp, "bone")), os.path.join(tmp, "miss")
        driver.convert_checkpoint(src, dst, "MISS")
        converted = ckpt.read(dst)
        assert_file_tensors(ctx, "the converted directory", converted.tensors, tensors)
        assert_equal(ctx, "the converted adapter_config.json", converted.config, json)
        model = driver.load(golden.base(), dst)
        bone = driver.load(golden.base(), src) if supports(driver, source, row.layer_kind) else None
    assert_params_bitwise(ctx, "loaded as MiSS", driver.get_params(model, KEY, "default"), by_name(tensors))
    x = golden_input(data, golden, ctx)
    assert_output_is_oracle(ctx, "output of the converted adapter", driver, model, target, config, golden, x)
    if bone is not None:
        assert_equal(ctx, "output of the converted MiSS adapter vs the Bone adapter's", output(model, x),
                     output(bone, x))  # fmt: skip


@pytest.mark.contract("MISS-CONV-2", axes=("variant",), peer=PEER)
@given(data=st.data())
def test_miss_to_bone(row, driver, data):
    """MISS-CONV-2 (optional `miss.to_bone`): `convert_checkpoint(src, dst, to="BONE")` of a golden MiSS directory
    renames `.miss_` to `.bone_` (tensors bitwise), sets `peft_type` "BONE" and drops `mini_r` and `miss_dropout`,
    warning when `miss_dropout > 0`; `"mini"` is rejected with ValueError naming `init_weights`, writing nothing.
    Where the implementation loads Bone directories, the result loads with bitwise-equal parameters."""
    source, target = (record_of(t) for t in ckpt.CONVERSIONS[row.clause])
    row = fill_row(row, driver, data, dtypes=GOLDEN_DTYPES)
    dropout = data.draw(st.sampled_from([0.0, 0.25]), label="miss_dropout")
    golden = draw_golden(data, source, row.variant, row.layer_kind, row.dtype, {"miss_dropout": dropout})
    ctx = context_for(row, driver, golden)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the oracle's own dropout warning
        try:
            expected = source.oracle.convert_miss_to_bone(golden.tensors, golden.json)
        except ValueError:
            expected = None  # init_weights="mini": no Bone form
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = golden.write(os.path.join(tmp, "miss")), os.path.join(tmp, "bone")
        if expected is None:
            assert_raises_clause(
                ctx, (ValueError,), "init_weights", lambda: driver.convert_checkpoint(src, dst, "BONE")
            )
            written = ckpt.files_in(dst) if os.path.isdir(dst) else []
            if written:
                fail(ctx, f"the rejected conversion of a 'mini' adapter wrote {written}")
            return
        caught = caught_warnings(lambda: driver.convert_checkpoint(src, dst, "BONE"))
        if dropout > 0:
            assert_warned(ctx, f"converting an adapter with miss_dropout={dropout} to Bone", caught, "dropout")
        converted = ckpt.read(dst)
        assert_file_tensors(ctx, "the converted directory", converted.tensors, expected[0])
        assert_equal(ctx, "the converted adapter_config.json", converted.config, expected[1])
        if supports(driver, target, row.layer_kind):
            model = driver.load(golden.base(), dst)
            assert_params_bitwise(ctx, "loaded as Bone", driver.get_params(model, KEY, "default"), by_name(expected[0]))


@pytest.mark.contract("MISS-CONV-3", axes=("variant",), variants=("plain", "bat"), peer=PEER)
@given(data=st.data())
def test_bone_checkpoint_without_bone(row, driver, data):
    """MISS-CONV-3: an implementation without a native Bone tuner, given a golden Bone directory (its own loader,
    `convert=False`), either rejects it with an error naming the conversion, or converts it per MISS-CONV-1 with a
    deprecation warning naming Bone: MiSS parameters bitwise equal to the Bone block and the oracle's output."""
    source, target = record_of("BONE"), RECORDS[row.tuner]
    claims = driver.capabilities().tuners.get(source.tuner)
    if claims is not None and claims.native:
        pytest.skip(f"the implementation has a native {source.tuner} tuner; MISS-CONV-3 applies only without one")
    row = fill_row(row, driver, data, dtypes=GOLDEN_DTYPES)
    golden = draw_golden(data, source, row.variant, row.layer_kind, row.dtype)
    ctx = context_for(row, driver, golden)
    holder: list[nn.Module] = []
    with tempfile.TemporaryDirectory() as tmp:
        src = golden.write(os.path.join(tmp, "bone"))
        before = calls_made()
        try:
            caught = caught_warnings(lambda: holder.append(driver.load(golden.base(), src, convert=False)))
        except Exception as exc:  # rejected: the message must name the conversion
            if not re.search("convert", str(exc), re.IGNORECASE):
                unnamed = outcome("unnamed", ("convert",), type(exc).__name__, before)
                fail(ctx, f"loading a BONE directory raised {type(exc).__name__}({exc}), which does not name the "
                          "conversion to MiSS", unnamed)  # fmt: skip
            return
    noted = [w for w in caught if issubclass(w.category, DEPRECATION) and re.search("bone", str(w.message), re.I)]
    if not noted:
        seen = [f"{w.category.__name__}: {w.message}" for w in caught]
        fail(ctx, f"a BONE directory was loaded without a deprecation warning naming Bone (warnings: {seen})")
    config = {**golden.config, "miss_dropout": 0.0, "mini_r": 1}
    expected = by_name(target.oracle.convert_bone_to_miss(golden.tensors, golden.json)[0])
    model = holder[0]
    assert_params_bitwise(ctx, "the BONE directory as loaded (converted per MISS-CONV-1)",
                          driver.get_params(model, KEY, "default"), expected)  # fmt: skip
    x = golden_input(data, golden, ctx)
    assert_output_is_oracle(ctx, "output of the converted adapter", driver, model, target, config, golden, x)
