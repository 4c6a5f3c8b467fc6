"""Repros that reproduce: the recording proxy is a pure pass-through, a failing example's calls are exactly its own,
and a `fail` row's repro, run alone in a clean interpreter, prints the discrepancy (`repro_verified`)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import types
import warnings
from contextlib import nullcontext, redirect_stdout
from typing import Any

import pytest
import torch
from mutant_drivers import LoHaScaleBugDriver

from conformance import plugin
from conformance.assertions import assert_close_to_oracle, assert_equal, assert_raises_clause, fail, unwarned
from conformance.check import check, shows_failure
from conformance.contracts import test_config, test_forward, test_matching
from conformance.drivers.base import REPRODUCED, Call, Case, Discrepancy, Ref
from conformance.drivers.lycoris import LycorisDriver
from conformance.drivers.peft import PeftDriver
from conformance.drivers.reference import ReferenceDriver
from conformance.harness import Holder, Rig, seed_torch
from conformance.recording import RecordingDriver, module_code, unwrap
from conformance.report import Row
from conformance.spec.layer import Layer
from conformance.spec.tolerances import tolerance
from conformance.strategies import build_base, random_tensor

LOHA = {"r": 2, "alpha": 3.0, "target_modules": ["layer"]}


class Odd(Exception):
    """An exception only the stub raises."""


class StubDriver(ReferenceDriver):
    """A driver whose operations raise, warn, or return odd values, to show the proxy passes each through."""

    name = "stub"
    marker = "stub attribute"
    context = nullcontext("entered")

    def adapt(self, model, tuner, config, adapter="default", *, autocast_adapter_dtype=True):
        raise Odd("adapt refused")

    def merge(self, model, adapters=None, safe=False):
        warnings.warn("merging warns", UserWarning, stacklevel=2)
        return "merge returned a value"

    def get_params(self, model, key, adapter):
        return NotImplemented

    def set_params(self, model, key, adapter, params):
        self.received = params
        params["w"].add_(1.0)  # the driver may do anything with what it is given

    def disabled(self, model):
        return self.context

    def unload(self, model):
        raise KeyboardInterrupt  # not even a BaseException that is no Exception is touched

    def _private(self) -> str:
        return "private"


def test_proxy_is_transparent():
    stub = StubDriver()
    proxy = RecordingDriver(stub)
    assert isinstance(proxy, StubDriver) and isinstance(proxy, ReferenceDriver) and unwrap(proxy) is stub
    assert proxy.name == "stub" and proxy.marker == "stub attribute" and proxy.api_map is stub.api_map
    assert proxy._private() == "private" and proxy.capabilities() == stub.capabilities()
    proxy.extra = 3  # attribute writes go to the driver
    assert stub.extra == 3

    with pytest.raises(Odd, match="adapt refused") as raised:
        proxy.adapt(torch.nn.Linear(2, 2), "loha", {"r": 1})
    assert raised.value.__traceback__ is not None
    with pytest.warns(UserWarning, match="merging warns"):
        assert proxy.merge("model", adapters=["a"]) == "merge returned a value"
    assert proxy.get_params("model", "layer", "default") is NotImplemented
    assert proxy.disabled("model") is stub.context
    with pytest.raises(KeyboardInterrupt):
        proxy.unload("model")

    params = {"w": torch.zeros(2)}
    proxy.set_params("model", "layer", "default", params)
    assert stub.received is params and torch.equal(params["w"], torch.ones(2))  # the very object, changed by the driver
    log = {record.method: record for record in proxy.calls}
    assert [record.method for record in proxy.calls][:2] == ["capabilities", "adapt"]
    assert not log["adapt"].returned and log["adapt"].base_state is not None  # raised; base tensors copied before
    assert log["merge"].arguments == {"model": "model", "adapters": ["a"], "safe": False}
    assert log["merge"].returned and log["merge"].result == "merge returned a value"
    assert torch.equal(log["set_params"].arguments["params"]["w"], torch.zeros(2))  # recorded by value, before the call
    assert not log["unload"].returned
    proxy.restart()
    assert proxy.calls == []


def test_log_is_the_failing_example():
    """`_per_example` restarts the log for each example and keeps the calls of the one that raised."""
    proxy = RecordingDriver(ReferenceDriver())

    def inner(row, driver, data):
        driver.make_config("loha", {"r": data})
        if data == 3:
            raise AssertionError("example 3 fails")

    example = plugin._per_example(inner)
    plugin._EXAMPLE_CALLS.clear()
    for data in (1, 2):
        example(row=None, driver=proxy, data=data)
    with pytest.raises(AssertionError) as raised:
        example(row=None, driver=proxy, data=3)
    _, calls = plugin._EXAMPLE_CALLS[id(raised.value)]
    assert [(c.method, c.arguments["config"]) for c in calls] == [("make_config", {"r": 3})]
    example(row=None, driver=proxy, data=4)  # a later passing example starts a new log
    assert [c.arguments["config"] for c in proxy.calls] == [{"r": 4}]


def test_set_params_renders_as_library_assignment():
    tensor = torch.tensor([[1.5, -0.25]], dtype=torch.float64)
    case = Case(
        tuner="loha", clause="CORE-FWD-1", configs={}, model_code="import torch",
        calls=[Call("set_params", {"model": Ref("model"), "key": "layer", "adapter": "default",
                                   "params": {"hada_w1_a": tensor}})],
    )  # fmt: skip
    snippet = ReferenceDriver().repro(case)
    line = "model.base_model.model.get_submodule('layer').hada_w1_a['default'].data.copy_("
    assert line + "torch.tensor([[1.5, -0.25]], dtype=torch.float64))" in snippet


class RenderedLoHaScaleBugDriver(LoHaScaleBugDriver):
    """The mutant, with its bug written into its repros (a driver that does more than translate must render it)."""

    def render_call(self, call: Call, snippet: Any) -> list[str]:
        lines = super().render_call(call, snippet)
        if call.method == "adapt" and call.result is not None:
            model = call.result.var
            lines += [
                f"for _, layer in {model}.base_model.model.named_modules():",
                "    if isinstance(layer, rt.TunerLayer):",
                "        for name, settings in layer.settings.items():",
                "            layer.scaling[name] *= settings.r",
            ]
        return lines


def _first_fail(driver: str, verify: bool) -> Row:
    report = check(driver, tuners=["loha"], families=["forward"], isolate=False, stop_on_first_fail=True, verify=verify)
    failed = [row for row in report.results if row.status == "fail"]
    assert failed and failed[0].repro, report.results
    return failed[0]


def _run(snippet: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60, cwd="/")


def test_a_fail_row_repro_reproduces():
    row = _first_fail("test_repro:RenderedLoHaScaleBugDriver", verify=True)
    assert row.repro_verified
    assert row.repro.count("get_peft_model(") == 1  # one example's calls: a single adaptation
    imported = {m for line in row.repro.splitlines() for m in re.findall(r"^\s*(?:import|from) (\w+)", line)}
    assert imported <= {"torch", "transformers", "reference_tuners", "math"}, imported  # never tunerspec
    done = _run(row.repro)
    assert done.returncode == 0, done.stderr
    assert any(line.startswith(REPRODUCED) for line in done.stdout.splitlines()), done.stdout


def test_a_repro_that_misses_the_bug_is_not_verified():
    """The plain mutant's bug lives in its driver, not in the library: the snippet cannot show it, and says so."""
    row = _first_fail("mutant_drivers:LoHaScaleBugDriver", verify=False)
    done = _run(row.repro)
    assert "NOT REPRODUCED" in done.stdout and REPRODUCED not in done.stdout.replace("NOT REPRODUCED", "")
    assert not shows_failure(row, done)


def test_passing_rows_have_no_repro():
    report = check("reference", tuners=["loha"], families=["multi"], isolate=False, verify=False)
    assert report.results and all(r.status == "pass" and r.repro is None for r in report.results)


def _replayed(recorder: RecordingDriver, model: torch.nn.Module, x: torch.Tensor, seed: int) -> str:
    """Render the recorded calls as `plugin._repro` does, with a made-up discrepancy on the output's first element
    (expected = observed + 1e-6: the "same failure" check allows 1e-8), run the snippet in-process and return what
    it printed."""
    y = model(x).detach()
    context = plugin.Context("CORE-FWD-1", "loha", "reference", shapes={"x": tuple(x.shape)}, seed=seed)
    calls, primary = plugin._case_calls(recorder.calls, (seed,))
    first = (0,) * y.dim()
    discrepancy = Discrepancy("output", first, y[first].item() + 1e-6, y[first].item(), 1e-9, "output")
    case = Case("loha", "CORE-FWD-1", {}, plugin._model_code(primary, context, (seed,)), [tuple(x.shape)], seed, calls,
                discrepancy=discrepancy)  # fmt: skip
    snippet = ReferenceDriver().repro(case)
    printed = io.StringIO()
    with redirect_stdout(printed):
        exec(compile(snippet, "<repro>", "exec"), {})
    return printed.getvalue()


def test_lifecycle_and_files_calls_replay(tmp_path):
    """Two adapters, new values, an active list, a save and a load into a fresh base: the snippet rebuilds the loaded
    model's output exactly."""
    recorder, seed = RecordingDriver(ReferenceDriver()), 11
    layer = Layer("linear", 4, 3)
    model = recorder.adapt(Holder(build_base(layer, "float64", seed)), "loha", recorder.make_config("loha", LOHA))
    recorder.add_adapter(model, "loha", "zeta", recorder.make_config("loha", {**LOHA, "r": 1}))
    for name in ("default", "zeta"):
        shapes = {k: v.shape for k, v in recorder.get_params(model, "layer", name).items()}
        recorder.set_params(model, "layer", name, {k: torch.rand(s, dtype=torch.float64) for k, s in shapes.items()})
    recorder.set_active(model, ["zeta", "default"])
    recorder.save(model, str(tmp_path))
    loaded = recorder.load(Holder(build_base(layer, "float64", seed)), str(tmp_path / "zeta"), adapter="zeta")
    x = random_tensor((2, 4), "float64", seed + 1)
    assert REPRODUCED in _replayed(recorder, loaded.eval(), x, seed)


def test_merge_and_disable_replay():
    """A merge, then a forward inside `disable_adapter()` (the last call): the snippet's forward is inside it too."""
    recorder, seed = RecordingDriver(ReferenceDriver()), 3
    layer = Layer("conv2d", 2, 4, (3, 3), (1, 1), (1, 1), (1, 1), 2, "zeros")
    model = recorder.adapt(Holder(build_base(layer, "float32", seed)), "loha", recorder.make_config("loha", LOHA))
    shapes = {k: v.shape for k, v in recorder.get_params(model, "layer", "default").items()}
    recorder.set_params(model, "layer", "default", {k: torch.rand(s) for k, s in shapes.items()})
    recorder.merge(model)
    x = random_tensor((1, 2, 5, 5), "float32", seed + 1)
    with recorder.disabled(model):
        printed = _replayed(recorder, model.eval(), x, seed)
    assert REPRODUCED in printed


# ---- final checks beyond one element: an output's shape, and what an operation raised ---------------------------

_RUNNER = """
import contextlib, io, json, sys
printed = []
for snippet in json.load(sys.stdin):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, '<repro>', 'exec'), {'__name__': '__main__'})
    printed.append(out.getvalue())
print(json.dumps(printed))
"""


def _run_each(snippets: list[str]) -> list[str]:
    """What each snippet printed, each run in a fresh namespace of one clean interpreter (one start for all)."""
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(snippets),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _reproduced(printed: str) -> bool:
    return any(line.startswith(REPRODUCED) for line in printed.splitlines())


class SetActiveLiesDriver(ReferenceDriver):
    """Reports the library's `set_active` outcome backwards: ValueError("refused") where the library succeeds,
    nothing where it raises (a driver bug that no snippet in the library's API can show)."""

    def set_active(self, model, names):
        try:
            super().set_active(model, names)
        except ValueError:
            return
        raise ValueError("refused")


def _rendered(recorder: RecordingDriver, check: Any) -> tuple[str, Discrepancy]:
    """The repro `plugin._repro` renders for the ClauseFailure `check()` raises, and that failure's discrepancy."""
    with pytest.raises(plugin.ClauseFailure) as raised:
        check()
    row = types.SimpleNamespace(tuner=raised.value.context.tuner, clause=raised.value.context.clause)
    snippet = plugin._repro(recorder, row, raised.value, error=False)
    assert snippet is not None and REPRODUCED in snippet
    return snippet, raised.value.discrepancy


def _adapted(driver: ReferenceDriver, seed: int) -> tuple[RecordingDriver, torch.nn.Module]:
    recorder = RecordingDriver(driver)
    base = Holder(build_base(Layer("linear", 4, 3), "float64", seed))
    return recorder, recorder.adapt(base, "loha", recorder.make_config("loha", LOHA))


# (exceptions required, subject, the names the library's outcome is judged on, those the lying driver's is)
OUTCOMES = {
    "silent": ((ValueError,), "", ["default"], ["nonexistent"]),
    "raised": ((KeyError,), "", ["nonexistent"], ["default"]),
    "unnamed": ((ValueError,), "zeta", ["nonexistent"], ["default"]),
}


def _outcome_snippet(kind: str, lying: bool) -> str:
    """`set_active` judged by `assert_raises_clause`: the repro of the library's own violation, or (`lying`) of the
    one the lying driver reports."""
    exceptions, subject, honest, lied = OUTCOMES[kind]
    recorder, model = _adapted(SetActiveLiesDriver() if lying else ReferenceDriver(), 5)
    context = plugin.Context("CORE-LIFE-3", "loha", "reference", seed=5)
    names = lied if lying else honest
    snippet, discrepancy = _rendered(
        recorder, lambda: assert_raises_clause(context, exceptions, subject, lambda: recorder.set_active(model, names))
    )
    assert (discrepancy.kind, discrepancy.target) == (kind, "call")
    return snippet


def _shape_snippet(reshaped: bool) -> str:
    """`assert_close_to_oracle` against an oracle of another shape: the library's output as it is, or (`reshaped`)
    one a driver unsqueezed on its way to the suite."""
    recorder, model = _adapted(ReferenceDriver(), 9)
    x = random_tensor((2, 4), "float64", 10)
    context = plugin.Context("CORE-FWD-1", "loha", "reference", shapes={"x": (2, 4)}, seed=9)
    y = model.eval()(x).detach()
    actual, expected = (y.unsqueeze(0), y) if reshaped else (y, y.reshape(3, 2))
    tol = tolerance("N", "float64")
    snippet, discrepancy = _rendered(
        recorder,
        lambda: assert_close_to_oracle(
            context=context, what="output", actual=actual, expected=expected, tol=tol, scale=1
        ),
    )
    assert discrepancy.kind == "shape"
    return snippet


class Refuses(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("refused")


def _refused_forward_snippet(wrapped: bool) -> str:
    """`test_forward._accepted` on an input the library refuses (one feature too many), or (`wrapped`) on a good
    input a wrapper refuses on the library's behalf."""
    recorder, model = _adapted(ReferenceDriver(), 2)
    context = plugin.Context("CORE-FWD-2", "loha", "reference", seed=2)
    x = random_tensor((2, 4 if wrapped else 5), "float64", 3)
    forward = Refuses() if wrapped else model
    snippet, discrepancy = _rendered(recorder, lambda: test_forward._accepted(context, forward, x, "x"))
    assert (discrepancy.kind, discrepancy.target) == ("raised", "output")
    return snippet


def test_outcome_and_shape_repros_reproduce_only_the_library():
    """Each new final check, run in a clean interpreter: the library's own violation prints `REPRODUCED`, the same
    failure misreported by a driver prints `NOT REPRODUCED` (so the check observes; it does not echo the suite)."""
    snippets = [_outcome_snippet(kind, lying) for kind in OUTCOMES for lying in (False, True)]
    snippets += [make(bent) for make in (_shape_snippet, _refused_forward_snippet) for bent in (False, True)]
    printed = _run_each(snippets)
    assert [_reproduced(p) for p in printed] == [True, False] * 5, printed
    assert all(("NOT REPRODUCED" in p) != _reproduced(p) for p in printed), printed


def test_bundle_model_code_rebuilds_the_tensors():
    """The config contracts' two-layer `Bundle` is written as source that rebuilds it exactly (seeded layers)."""
    model = test_config.bundle({"layer": Layer("linear", 3, 2), "blk.other": Layer("linear", 3, 4)}, 4)
    code = module_code("model", model, model.state_dict(), (4, 11))
    assert code is not None and "torch.tensor(" not in code  # each layer rebuilt from its seed, no literals
    scope: dict = {}
    exec(compile(code, "<model>", "exec"), scope)
    rebuilt = scope["model"].state_dict()
    assert rebuilt.keys() == model.state_dict().keys()
    assert all(torch.equal(rebuilt[k], v) for k, v in model.state_dict().items())
    x = random_tensor((2, 3), "float32", 1)
    assert torch.equal(scope["model"](x), model(x))


# ---- observations beyond the output: seeded parameters, gradients, module sets, warnings ------------------------


class ScaledReadsDriver(ReferenceDriver):
    """Reads every adapter parameter and gradient back doubled (a driver bug no library snippet can show)."""

    def get_params(self, model, key, adapter):
        return {name: 2 * value for name, value in super().get_params(model, key, adapter).items()}

    def get_grads(self, model, key, adapter):
        return {name: None if g is None else 2 * g for name, g in super().get_grads(model, key, adapter).items()}


class MisreportingDriver(ReferenceDriver):
    """Reports one adapted module and one active adapter too many, and hides the warnings `adapt` emits."""

    def adapted_modules(self, model):
        return [*super().adapted_modules(model), "phantom"]

    def layer_state(self, model, key):
        state = super().layer_state(model, key)
        state.active_adapters = [*state.active_adapters, "phantom"]
        return state

    def adapt(self, model, tuner, config, adapter="default", *, autocast_adapter_dtype=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return super().adapt(model, tuner, config, adapter, autocast_adapter_dtype=autocast_adapter_dtype)


def _seeded_param_snippet(driver: ReferenceDriver) -> str:
    """An adapter initialised right after `torch.manual_seed(21)`, a sample of it judged against a bound half its
    size (the init contracts' bound check): the repro must seed torch the same way to read the same sample."""
    recorder, seed = RecordingDriver(driver), 4
    base = Holder(build_base(Layer("linear", 4, 3), "float64", seed))
    with torch.random.fork_rng(devices=[]):
        seed_torch(21)
        model = recorder.adapt(base, "loha", recorder.make_config("loha", {**LOHA, "init_weights": False}))
    value = recorder.get_params(model, "layer", "default")["hada_w1_a"]
    where = (0, 1)
    context = plugin.Context("LOHA-INIT-2", "loha", "reference", seed=seed)
    discrepancy = Discrepancy("hada_w1_a sample", where, 0.0, value[where].item(), abs(value[where].item()) / 2,
                              "param", name="hada_w1_a")  # fmt: skip
    snippet, _ = _rendered(recorder, lambda: fail(context, "sample out of bound", discrepancy))
    assert "torch.manual_seed(21)" in snippet
    return snippet


def _grad_snippet(driver: ReferenceDriver) -> str:
    """A backward of `(y * weights).sum()` in train mode, the parameter gradients compared (`observe`) with a made-up
    oracle 1 away: the repro redoes the same backward and reads the same gradient."""
    recorder, seed = RecordingDriver(driver), 6
    model = recorder.adapt(Holder(build_base(Layer("linear", 4, 3), "float64", seed)), "loha",
                           recorder.make_config("loha", LOHA))  # fmt: skip
    shapes = {k: v.shape for k, v in recorder.get_params(model, "layer", "default").items()}
    generator = torch.Generator().manual_seed(seed + 2)
    recorder.set_params(model, "layer", "default", {k: torch.rand(s, generator=generator, dtype=torch.float64)
                                                     for k, s in shapes.items()})  # fmt: skip
    x = random_tensor((2, 4), "float64", seed + 1)
    y = model.train()(x)
    (y * random_tensor(tuple(y.shape), "float64", seed + 3)).sum().backward()
    grad = recorder.get_grads(model, "layer", "default")["hada_w2_b"]
    context = plugin.Context("CORE-GRAD-1", "loha", "reference", shapes={"x": (2, 4)}, seed=seed)
    tol = tolerance("G", "float64")
    observe = {"target": "grad", "name": "hada_w2_b", "mode": "train", "weights_seed": seed + 3}
    snippet, _ = _rendered(recorder, lambda: assert_close_to_oracle(
        context=context, what="d loss / d hada_w2_b", actual=grad, expected=grad + 1, tol=tol, scale=1, observe=observe
    ))  # fmt: skip
    return snippet


def _adapted_set_snippet(driver: ReferenceDriver) -> str:
    """`test_matching.assert_adapted` against a made-up selection: the repro lists the adapted modules itself."""
    recorder, model = _adapted(driver, 8)
    context = plugin.Context("CORE-MATCH-1", "loha", "reference", seed=8)
    adapted = recorder.adapted_modules(model)
    snippet, _ = _rendered(recorder, lambda: test_matching.assert_adapted(context, "made up", adapted, ["other"]))
    return snippet


def _active_snippet(driver: ReferenceDriver) -> str:
    """The active adapters of `layer` judged against a made-up requirement (an exact observation, "active")."""
    recorder, model = _adapted(driver, 12)
    context = plugin.Context("CORE-LIFE-10", "loha", "reference", seed=12)
    active = {"layer": recorder.layer_state(model, "layer").active_adapters}
    discrepancy = Discrepancy("active adapters", (), ({"layer": ["zeta"]},), active, 0.0, "active", kind="differs")
    snippet, _ = _rendered(recorder, lambda: fail(context, "made up", discrepancy))
    return snippet


def _shapes_snippet(driver: ReferenceDriver) -> str:
    """`assert_equal(..., observe="shapes")` of the parameter shapes against made-up ones, judged after a second
    model (of another rank) was adapted: the repro reads the model the shapes were read from."""
    recorder, model = _adapted(driver, 13)
    context = plugin.Context("LOHA-PARAM-1", "loha", "reference", seed=13)
    shapes = {k: tuple(v.shape) for k, v in recorder.get_params(model, "layer", "default").items()}
    other = recorder.make_config("loha", {**LOHA, "r": 1})
    recorder.adapt(Holder(build_base(Layer("linear", 4, 3), "float64", 13)), "loha", other)
    if isinstance(driver, ScaledReadsDriver):  # this driver's bug for this observation: transposed reads
        shapes = {k: s[::-1] for k, s in shapes.items()}
    expected = {k: (*s, 1) for k, s in shapes.items()}
    snippet, _ = _rendered(recorder, lambda: assert_equal(context, "shapes", shapes, expected, "shapes"))
    return snippet


def _warning_snippet(driver: ReferenceDriver) -> str:
    """An unmatched `rank_pattern` key must be warned about by name (LOHA-CFG-4): the library does; a driver that
    hides the warning makes the suite fail, and the repro (which sees the library warn) must not claim it."""
    recorder = RecordingDriver(driver)
    base = Holder(build_base(Layer("linear", 4, 3), "float64", 14))
    config = recorder.make_config("loha", {**LOHA, "rank_pattern": {"nomatch": 1}})
    subject = "nomatch" if isinstance(driver, MisreportingDriver) else "zeta"  # "zeta": named by no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recorder.adapt(base, "loha", config)
    emitted = [f"{w.category.__name__}: {w.message}" for w in caught]
    context = plugin.Context("LOHA-CFG-4", "loha", "reference", seed=14)
    named = [line for line in emitted if subject in line]
    assert not named
    snippet, _ = _rendered(recorder, lambda: fail(context, "no warning", unwarned((subject,), emitted)))
    return snippet


class FlippedFlagsDriver(ReferenceDriver):
    """Reads every `requires_grad` flag back negated."""

    def get_requires_grad(self, model, key, adapter):
        return {name: not flag for name, flag in super().get_requires_grad(model, key, adapter).items()}


def _requires_grad_snippet(driver: ReferenceDriver) -> str:
    """The flags of the adapter's parameters against made-up required ones (all the opposite of the first)."""
    recorder, model = _adapted(driver, 16)
    context = plugin.Context("CORE-LIFE-4", "loha", "reference", seed=16)
    flags = recorder.get_requires_grad(model, "layer", "default")
    required = {name: not flags["hada_w1_a"] for name in flags}
    discrepancy = Discrepancy("flags", (), (required,), flags, 0.0, "requires_grad", kind="differs")
    snippet, _ = _rendered(recorder, lambda: fail(context, "made up", discrepancy))
    return snippet


class ScaledLoadDriver(ReferenceDriver):
    """Loads an adapter, then doubles its parameters (a driver bug no library snippet can show)."""

    def load(self, base_model, directory, adapter="default", trainable=False, convert=True):
        model = super().load(base_model, directory, adapter, trainable, convert)
        for key in self.adapted_modules(model):
            live = self._tensors(model, key, adapter)
            with torch.no_grad():
                for tensor in live.values():
                    tensor.mul_(2)
        return model


def _loaded_files_snippet(driver: ReferenceDriver, directory: str) -> str:
    """An adapter directory written outside the recorded calls (as the golden files are), loaded through the driver,
    its output compared with a made-up oracle 1 away: the repro must write the same files before loading them."""
    seed, layer = 17, Layer("linear", 4, 3)
    writer = ReferenceDriver()
    saved = writer.adapt(Holder(build_base(layer, "float64", seed)), "loha", writer.make_config("loha", LOHA))
    shapes = {k: v.shape for k, v in writer.get_params(saved, "layer", "default").items()}
    generator = torch.Generator().manual_seed(seed)
    writer.set_params(saved, "layer", "default", {k: torch.rand(s, generator=generator, dtype=torch.float64)
                                                   for k, s in shapes.items()})  # fmt: skip
    writer.save(saved, directory)
    recorder = RecordingDriver(driver)
    loaded = recorder.load(Holder(build_base(layer, "float64", seed)), directory)
    x = random_tensor((2, 4), "float64", seed + 1)
    with torch.no_grad():
        y = loaded.eval()(x)
    context = plugin.Context("CORE-SAVE-10", "loha", "reference", shapes={"x": (2, 4)}, seed=seed)
    tol = tolerance("N", "float64")
    snippet, _ = _rendered(recorder, lambda: assert_close_to_oracle(
        context=context, what="output of the loaded adapter", actual=y, expected=y + 1, tol=tol, scale=1
    ))  # fmt: skip
    assert "safetensors.torch.save_file(" in snippet
    return snippet


def test_observation_repros_reproduce_only_the_library(tmp_path):
    """Each observation a repro repeats (a parameter after torch was seeded, a gradient after the same backward, the
    adapted modules, the active adapters, the parameter shapes and flags, the warnings of a call, the output of an
    adapter loaded from files the test wrote itself), run in a clean interpreter: the library's own value prints
    `REPRODUCED`; the value a misreading driver reported prints `NOT REPRODUCED`."""
    makers = [_seeded_param_snippet, _grad_snippet, _adapted_set_snippet, _active_snippet, _shapes_snippet,
              _requires_grad_snippet, _warning_snippet]  # fmt: skip
    broken = {_adapted_set_snippet: MisreportingDriver, _active_snippet: MisreportingDriver,
              _requires_grad_snippet: FlippedFlagsDriver, _warning_snippet: MisreportingDriver}  # fmt: skip
    snippets = [make(kind()) for make in makers for kind in (ReferenceDriver, broken.get(make, ScaledReadsDriver))]
    snippets += [
        _loaded_files_snippet(kind(), str(tmp_path / kind.__name__)) for kind in (ReferenceDriver, ScaledLoadDriver)
    ]
    printed = _run_each(snippets)
    assert [_reproduced(p) for p in printed] == [True, False] * (len(makers) + 1), printed
    assert all(("NOT REPRODUCED" in p) != _reproduced(p) for p in printed), printed


def test_second_base_model_reuses_the_header():
    """A repro with two base models defines `Holder` (and imports torch) once."""
    recorder, seed = RecordingDriver(ReferenceDriver()), 15
    for _ in range(2):
        model = recorder.adapt(Holder(build_base(Layer("linear", 4, 3), "float64", seed)), "loha",
                               recorder.make_config("loha", LOHA))  # fmt: skip
    context = plugin.Context("CORE-MATCH-1", "loha", "reference", seed=seed)
    adapted = recorder.adapted_modules(model)
    snippet, _ = _rendered(recorder, lambda: test_matching.assert_adapted(context, "made up", adapted, ["other"]))
    assert snippet.count("class Holder(") == 1 and snippet.count("import torch, transformers") == 1, snippet
    scope: dict = {}
    with redirect_stdout(io.StringIO()) as printed:
        exec(compile(snippet, "<repro>", "exec"), scope)
    assert _reproduced(printed.getvalue()), printed.getvalue()


def test_rig_model_code_rebuilds_the_tensors():
    """The lifecycle contracts' `Rig` (two layers and a head) is written as source that rebuilds it exactly."""
    layer, head = Layer("linear", 3, 2), Layer("linear", 2, 2)
    rig = Rig(build_base(layer, "float64", 4), build_base(layer, "float64", 11), build_base(head, "float64", 9))
    code = module_code("model", rig, rig.state_dict(), (4, 11, 9))
    assert code is not None and "torch.tensor(" not in code
    scope: dict = {}
    exec(compile(code, "<model>", "exec"), scope)
    x = random_tensor((2, 3), "float64", 1)
    assert torch.equal(scope["model"](x), rig(x))


def test_an_embedding_base_is_written_as_source():
    """CORE-INJ-2 offers an Embedding: its model is written out (no `Layer` geometry), weights included."""
    from conformance.recording import module_code

    model = Holder(torch.nn.Embedding(3, 2).double())
    namespace: dict[str, Any] = {}
    exec(module_code("model", model, model.state_dict()), namespace)
    rebuilt = namespace["model"].layer
    assert type(rebuilt) is torch.nn.Embedding and torch.equal(rebuilt.weight, model.layer.weight)


# ---- derived observations: the applied weight, non-finite outputs, replayed train-mode forwards -----------------


class ScaledWritesDriver(ReferenceDriver):
    """Writes every adapter parameter scaled by `factor` (a driver bug: the library holds other values than the suite
    set, so no snippet that sets the suite's values can show what the suite then saw)."""

    factor = 1e-30

    def set_params(self, model, key, adapter, params):
        super().set_params(model, key, adapter, {name: value * self.factor for name, value in params.items()})


class InflatedWritesDriver(ScaledWritesDriver):
    factor = 1e30


def _loha_with(driver: ReferenceDriver, seed: int, value: float, config: dict | None = None, dtype: str = "float64"):
    """A LoHa-adapted Linear(4 → 3) whose parameters are drawn in [-1, 1] and multiplied by `value`."""
    recorder = RecordingDriver(driver)
    base = Holder(build_base(Layer("linear", 4, 3), dtype, seed))
    model = recorder.adapt(base, "loha", recorder.make_config("loha", {**LOHA, **(config or {})}))
    shapes = {k: v.shape for k, v in recorder.get_params(model, "layer", "default").items()}
    values = {k: random_tensor(tuple(s), dtype, seed + 2) * value for k, s in shapes.items()}
    recorder.set_params(model, "layer", "default", values)
    return recorder, model.eval()


def _applied_snippet(driver: ReferenceDriver) -> str:
    """The applied delta W − B (read through forward on one-hot inputs) judged against a made-up oracle 1 away: the
    repro reads the applied weight with the same `applied_weight`."""
    recorder, model = _loha_with(driver, 13, 1.0)
    context = plugin.Context("LOHA-DELTA-1", "loha", "reference", seed=13)
    delta = test_forward.probe_weight(recorder, model) - model.base_model.model.layer.base_layer.weight.double()
    snippet, discrepancy = _rendered(recorder, lambda: test_forward._close(context, "delta", delta, delta + 1,
                                                                         derive="W - B"))  # fmt: skip
    assert discrepancy.target == "applied" and "def applied_weight(" in snippet
    return snippet


def _nonfinite_snippet(driver: ReferenceDriver) -> str:
    """A non-finite output ("nonfinite"): parameters of 1e20 in float32 overflow the delta; or (a driver that
    inflates what it writes) ordinary parameters the driver made 1e30."""
    value = 1.0 if isinstance(driver, InflatedWritesDriver) else 1e20
    recorder, model = _loha_with(driver, 14, value, dtype="float32")
    x = random_tensor((2, 4), "float32", 15)
    context = plugin.Context("CORE-FWD-1", "loha", "reference", shapes={"x": (2, 4)}, seed=14)
    assert not torch.isfinite(model(x)).all()
    shown = Discrepancy("the output", (), None, None, 0.0, "output", kind="nonfinite")
    snippet, _ = _rendered(recorder, lambda: fail(context, "non-finite output", shown))
    return snippet


def _train_replay_snippet(driver: ReferenceDriver) -> str:
    """The third of three seeded train-mode forwards with rank dropout, judged bitwise against a made-up output: the
    repro replays the forwards from the same seed and reads the same third one."""
    recorder, model = _loha_with(driver, 16, 1.0, {"rank_dropout": 0.5})
    x = random_tensor((2, 4), "float64", 17)
    model.train()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        seed_torch(16)
        outputs = [model(x) for _ in range(3)]
    context = plugin.Context("LOHA-DROP-1", "loha", "reference", shapes={"x": (2, 4)}, seed=16)
    observe = {"target": "output", "mode": "train", "forwards": 3, "train_seed": 16}
    what = "train-mode output 2"
    snippet, _ = _rendered(recorder, lambda: assert_equal(context, what, outputs[2], outputs[2] + 1, observe=observe))
    return snippet


def test_derived_repros_reproduce_only_the_library():
    """The applied weight, a non-finite output and a replayed train-mode forward, run in a clean interpreter: the
    library's own values print `REPRODUCED`; the values a driver wrote wrongly print `NOT REPRODUCED`."""
    makers = [_applied_snippet, _nonfinite_snippet, _train_replay_snippet]
    broken = {_nonfinite_snippet: InflatedWritesDriver}
    printed = _run_each(
        [make(kind()) for make in makers for kind in (ReferenceDriver, broken.get(make, ScaledWritesDriver))]
    )
    assert [_reproduced(p) for p in printed] == [True, False] * len(makers), printed
    assert all(("NOT REPRODUCED" in p) != _reproduced(p) for p in printed), printed


# ---- counts, saved files, silent non-finite unmerges, and a capability shown absent ----------------------------


class FrozenOneDriver(ReferenceDriver):
    """Freezes one adapter parameter after adapting (the library trains it): the suite counts fewer trainable ones."""

    def adapt(self, model, tuner, config, adapter="default", *, autocast_adapter_dtype=True):
        adapted = super().adapt(model, tuner, config, adapter, autocast_adapter_dtype=autocast_adapter_dtype)
        next(p for p in adapted.parameters() if p.requires_grad).requires_grad_(False)
        return adapted


def _trainable_snippet(driver: ReferenceDriver) -> str:
    """The trainable parameter count outside the base layer against a made-up one (HRA-COUNT-1's observation)."""
    from conformance.contracts.test_structure import trainable_count

    recorder, model = _adapted(driver, 18)
    context = plugin.Context("LOHA-COUNT-1", "loha", "reference", seed=18)
    count = trainable_count(model, recorder.layer_state(model, "layer").base_layer)
    snippet, _ = _rendered(recorder, lambda: assert_equal(context, "trainable", count, count + 1, "trainable"))
    return snippet


class SavesUnsqueezedDriver(ReferenceDriver):
    """Rewrites every saved tensor with a leading unit axis (the library saves them as they are)."""

    def save(self, model, directory, adapters=None, safetensors=True):
        import safetensors.torch as st

        super().save(model, directory, adapters, safetensors)
        path = f"{directory}/adapter_model.safetensors"
        st.save_file({k: v.unsqueeze(0) for k, v in st.load_file(path).items()}, path, metadata={"format": "pt"})


def _saved_snippet(driver: ReferenceDriver, directory: str) -> str:
    """The shape of a saved tensor against a made-up one (the SAVE clauses' observation, "saved")."""
    import safetensors.torch

    recorder, model = _adapted(driver, 19)
    recorder.save(model, directory)
    key, value = next(iter(safetensors.torch.load_file(f"{directory}/adapter_model.safetensors").items()))
    context = plugin.Context("LOHA-SAVE-1", "loha", "reference", seed=19)
    got, wrong = {key: tuple(value.shape)}, {key: (*value.shape, 1)}
    snippet, _ = _rendered(recorder, lambda: assert_equal(context, "saved shape", got, wrong, "saved"))
    return snippet


class WritesTinyDriver(PeftDriver):
    """Writes l = −1e-8 wherever the suite writes IA3 vectors (so the unmerge it then judges divides by zero)."""

    def set_params(self, model, key, adapter, params):
        super().set_params(model, key, adapter, {k: torch.full_like(v, -1e-8) for k, v in params.items()})


def _silent_nonfinite_snippet(driver: PeftDriver) -> str:
    """IA3-MERGE-5: peft's unmerge of an l = −1e-8 entry writes non-finite values with only a general warning; with
    ordinary values written (a driver that writes −1e-8 itself), the library's unmerge stays finite."""
    recorder = RecordingDriver(driver)
    base = Holder(build_base(Layer("linear", 3, 2), "float64", 20))
    model = recorder.adapt(base, "ia3", recorder.make_config("ia3", {"target_modules": ["layer"],
                                                                      "feedforward_modules": []}))  # fmt: skip
    l_value = torch.full((2, 1), 0.5, dtype=torch.float64)
    l_value[0, 0] = 0.5 if isinstance(driver, WritesTinyDriver) else -1e-8
    recorder.set_params(model, "layer", "default", {"ia3_l": l_value})
    recorder.merge(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recorder.unmerge(model)
    assert not torch.isfinite(recorder.layer_state(model, "layer").base_layer.weight).all()
    emitted = [f"{w.category.__name__}: {w.message}" for w in caught]
    context = plugin.Context("IA3-MERGE-5", "ia3", "peft", seed=20)
    shown = Discrepancy("the checked operation", (), ("UserWarning", "default"), emitted, 0.0, "call",
                        kind="silent_nonfinite", wording="non-?finite")  # fmt: skip
    snippet, _ = _rendered(recorder, lambda: fail(context, "unmerge wrote non-finite values silently", shown))
    return snippet


def _absence_snippets() -> list[str]:
    """peft's MISS-CONV-1 repro as rendered, and the same run where peft had a public name mentioning Bone."""
    missing = Discrepancy("operation miss.from_bone", (), None, None, 0.0, kind="unsupported")
    snippet = PeftDriver().repro(Case("miss", "MISS-CONV-1", {}, "import torch", discrepancy=missing))
    added = "import peft, peft.tuners, peft.utils\npeft.tuners.convert_bone_to_miss = print"
    return [snippet, snippet.replace("import peft, peft.tuners, peft.utils", added)]


def test_count_file_warning_and_absence_repros_reproduce_only_the_library(tmp_path):
    """The trainable count, a saved file's shapes, a silently non-finite unmerge and an absent capability, run in a
    clean interpreter: the library's own state prints `REPRODUCED`; a driver's doing, or a library that has the
    capability, prints `NOT REPRODUCED`."""
    snippets = [_trainable_snippet(kind()) for kind in (ReferenceDriver, FrozenOneDriver)]
    snippets += [
        _saved_snippet(kind(), str(tmp_path / kind.__name__)) for kind in (ReferenceDriver, SavesUnsqueezedDriver)
    ]
    snippets += [_silent_nonfinite_snippet(kind()) for kind in (PeftDriver, WritesTinyDriver)]
    snippets += _absence_snippets()
    printed = _run_each(snippets)
    assert [_reproduced(p) for p in printed] == [True, False] * 4, printed
    assert all(("NOT REPRODUCED" in p) != _reproduced(p) for p in printed), printed


# ---- a port whose parameters live elsewhere: lycoris's parameter and gradient reads ------------------------------


class ScaledLycorisReadsDriver(LycorisDriver):
    """lycoris, with every parameter and gradient read back doubled."""

    def get_params(self, model, key, adapter):
        return {name: 2 * value for name, value in super().get_params(model, key, adapter).items()}

    def get_grads(self, model, key, adapter):
        return {name: None if g is None else 2 * g for name, g in super().get_grads(model, key, adapter).items()}


def _lycoris_read_snippet(driver: LycorisDriver, target: str) -> str:
    """IA3's vector (stored by lycoris as an offset, shaped `(out,)`) or its gradient after a weighted backward,
    against a made-up oracle 1 away: the repro reads lycoris's own tensor in the canonical value and layout."""
    recorder, seed = RecordingDriver(driver), 22
    base = Holder(build_base(Layer("linear", 4, 3), "float64", seed))
    config = recorder.make_config("ia3", {"target_modules": ["layer"], "feedforward_modules": []})
    model = recorder.adapt(base, "ia3", config)
    recorder.set_params(model, "layer", "default", {"ia3_l": random_tensor((3, 1), "float64", 30) + 1.5})
    context = plugin.Context("IA3-GRAD-1", "ia3", "lycoris", shapes={"x": (2, 4)}, seed=seed)
    observe = {"target": target, "name": "ia3_l"}
    if target == "grad":
        y = model.eval()(random_tensor((2, 4), "float64", seed + 1))
        (y * random_tensor(tuple(y.shape), "float64", 31)).sum().backward()
        value, observe = recorder.get_grads(model, "layer", "default")["ia3_l"], {**observe, "weights_seed": 31}
    else:
        value = recorder.get_params(model, "layer", "default")["ia3_l"]
    tol = tolerance("N", "float64")
    snippet, _ = _rendered(recorder, lambda: assert_close_to_oracle(
        context=context, what=f"ia3_l {target}", actual=value, expected=value + 1, tol=tol, scale=1, observe=observe
    ))  # fmt: skip
    assert "_network.get_submodule(" in snippet
    return snippet


def test_lycoris_parameter_and_gradient_repros_reproduce_only_the_library():
    """lycoris renders its own parameter reads (`param_lines`): the library's values print `REPRODUCED`; values a
    driver misread print `NOT REPRODUCED`."""
    snippets = [_lycoris_read_snippet(kind(), target) for target in ("param", "grad")
                for kind in (LycorisDriver, ScaledLycorisReadsDriver)]  # fmt: skip
    printed = _run_each(snippets)
    assert [_reproduced(p) for p in printed] == [True, False] * 2, printed
    assert all(("NOT REPRODUCED" in p) != _reproduced(p) for p in printed), printed
