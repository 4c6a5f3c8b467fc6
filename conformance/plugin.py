"""The pytest plugin: `pytest --pyargs conformance --impl NAME` (also what `tunerspec check` runs).

- registers the project's hypothesis profiles (`tunerspec-dev`, `tunerspec-ci`, `tunerspec-thorough`);
- builds the driver named by `--impl` (a built-in name or `package.module:Class`);
- parametrizes every `@pytest.mark.contract(clause, axes=…)` test with one `RowSpec` per report row;
- hands the contract tests a `RecordingDriver` around the driver, whose log restarts with every hypothesis example
  (the test's `inner_test` is wrapped), so that the log of a failing example is the calls of that example only
  (hypothesis replays the minimal failing example last);
- turns each row's outcome into a status: `pass`; `fail` for a `ClauseFailure` (a violated clause, or a
  MUST capability the driver lacks); `error` for any other exception (the implementation raised where
  SPEC requires an answer); `warn` for a violated `.should` row (a SHOULD part; the test passes); `skip` with
  the reason decided in `conformance.rows`;
- gives each `fail` / `error` / `warn` row a repro: a `Case` built from the failure's `Context`, its `Discrepancy`
  and the recorded calls, rendered by `driver.repro(case)`;
- appends each row to the `--tunerspec-rows` row log as it is judged (`conformance.rowlog`), runs each row's test
  under a watchdog (`--tunerspec-timeout`), and with `--tunerspec-resume` runs only the rows the log lacks.
"""

from __future__ import annotations

import faulthandler
import functools
import importlib
import os
import sys
import threading
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import hypothesis
import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from torch import nn

from . import rowlog
from .assertions import ClauseFailure, Context
from .drivers.base import READ_ONLY, Call, Case, Discrepancy, Driver, Ref
from .harness import seed_torch
from .recording import CallRecord, RecordingDriver, input_code, module_code, unwrap
from .rows import SHOULD, RowSpec, expand
from .spec.records import RECORDS
from .strategies import base_code

_COMMON = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=False)
_COMMON["phases"] = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]  # no "explain"
settings.register_profile("tunerspec-dev", max_examples=5, **_COMMON)
settings.register_profile("tunerspec-ci", max_examples=10, derandomize=True, **_COMMON)
settings.register_profile("tunerspec-thorough", max_examples=200, **_COMMON)

BUILTIN_DRIVERS = {
    "reference": "conformance.drivers.reference:ReferenceDriver",
    "peft": "conformance.drivers.peft:PeftDriver",
    "lycoris": "conformance.drivers.lycoris:LycorisDriver",
}
HUNG_EXIT = 70  # the exit status of a process the watchdog stopped
RESULTS = pytest.StashKey[list]()
# the calls of the example that raised each exception of the current test (id → (exception, calls))
_EXAMPLE_CALLS: dict[int, tuple[BaseException, list[CallRecord]]] = {}
_KEPT_EXAMPLES = 16  # the latest failing examples (hypothesis replays each distinct failure once, at the end)


def load_driver(spec: str) -> Driver:
    """A built-in driver name or `package.module:Class`; the class is instantiated without arguments."""
    target = BUILTIN_DRIVERS.get(spec, spec)
    module_name, _, class_name = target.partition(":")
    if not class_name:
        raise pytest.UsageError(f"--impl {spec!r}: use a built-in name {sorted(BUILTIN_DRIVERS)} or module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise pytest.UsageError(f"--impl {spec!r}: cannot load the driver: {exc}") from exc
    return cls()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tunerspec", "tunerspec conformance suite")
    group.addoption(
        "--impl", default=None, help="implementation: built-in driver name or module:Class (default: reference)"
    )
    group.addoption("--tuner", action="append", default=None, help="check only this tuner (repeatable)")
    group.addoption(
        "--tunerspec-rows", default=None,
        help="append each row to this row log (JSON lines, `conformance.rowlog`) as soon as it is judged",
    )  # fmt: skip
    group.addoption(
        "--tunerspec-resume", action="store_true",
        help="run only the rows the --tunerspec-rows log has no result for (after a crashed process)",
    )  # fmt: skip
    group.addoption(
        "--tunerspec-timeout", type=float, default=None,
        help="seconds a row's test may run; past it the row is logged as hung and the process exits",
    )  # fmt: skip
    group.addoption(
        "--tunerspec-seed", type=int, default=None,
        help="seed every contract test's hypothesis run with this (same seed and profile: same rows)",
    )  # fmt: skip
    group.addoption(
        "--tunerspec-stop-on-fail", action="store_true",
        help="end the session after the first `fail` row (an `error` row does not end it)",
    )  # fmt: skip
    group.addoption(
        "--tunerspec-no-shrink", action="store_true",
        help="do not shrink failing examples: a `fail` row keeps the first failing example found (mutant runs)",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "contract(*clauses, axes=(), dtypes=…, inits=…, scope='layer', kinds=None, variants=None, peer=None): "
        "a contract test producing one report row per clause and combination of the axes",
    )
    config.stash[RESULTS] = []


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The run's identity at the top of pytest's output: implementation and version, torch, device, profile, seed
    (for runs of the contracts: `--impl` given; other pytest sessions in the environment are left alone)."""
    if config.getoption("--impl") is None:
        return []
    driver = unwrap(_driver(config))
    profile = config.getoption("hypothesis_profile", None) or settings.get_current_profile_name()
    seed = config.getoption("--tunerspec-seed")
    seed_text = "hypothesis's own" if seed is None else str(seed)
    return [
        f"tunerspec: implementation {driver.name} {driver.version()} (--impl {config.getoption('--impl')}), "
        f"torch {torch.__version__}, device cpu, profile {profile}, seed {seed_text}"
    ]


@pytest.fixture(scope="session")
def driver(pytestconfig: pytest.Config) -> Driver:
    """The `--impl` driver behind a `RecordingDriver` (a pass-through that logs the calls of each example)."""
    return _driver(pytestconfig)


def _driver(config: pytest.Config) -> RecordingDriver:
    cached = getattr(config, "_tunerspec_driver", None)
    if cached is None:
        cached = RecordingDriver(load_driver(config.getoption("--impl") or "reference"))
        config._tunerspec_driver = cached
    return cached


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("contract")
    if marker is None or "row" not in metafunc.fixturenames:
        return
    driver = _driver(metafunc.config)
    tuners = metafunc.config.getoption("--tuner") or list(RECORDS)
    options = {
        k: v for k, v in marker.kwargs.items() if k in ("axes", "dtypes", "inits", "scope", "kinds", "variants", "peer")
    }
    rows = []
    for clause in marker.args:
        rows += expand(clause, records=RECORDS, capabilities=driver.capabilities(), tuners=tuners, **options)
    metafunc.parametrize("row", rows, ids=[r.id for r in rows])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every contract test's examples restart the driver's call log (`_per_example`). `--tunerspec-seed`:
    hypothesis's own `seed` decorator on every contract test (it takes precedence over the profile's `derandomize`,
    which otherwise fixes the examples per test function). `--tunerspec-resume`: the rows the log already holds are
    deselected. `--tunerspec-no-shrink`: the profile's settings without the shrink phase (a failing row's verdict is
    the same; its example is not minimised)."""
    log = config.getoption("--tunerspec-rows")
    if log and config.getoption("--tunerspec-resume"):
        done = rowlog.read(log).done
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in done])
        items[:] = [item for item in items if item.nodeid not in done]
    value, no_shrink = config.getoption("--tunerspec-seed"), config.getoption("--tunerspec-no-shrink")
    for function in {id(item.obj): item.obj for item in items if _row(item) is not None}.values():
        if not getattr(function, "is_hypothesis_test", False):  # a test running @given inside keeps derandomize
            continue
        handle = function.hypothesis
        if not getattr(handle.inner_test, "_tunerspec_per_example", False):
            handle.inner_test = _per_example(handle.inner_test)
        if value is not None:
            hypothesis.seed(value)(function)
        _set_shrinking(function, not no_shrink)


def _set_shrinking(function: Callable[..., Any], shrink: bool) -> None:
    """The test's own settings (kept from its first run in this process), without the shrink phase unless `shrink`:
    in-process runs share the imported test functions, so every run sets the phases it wants."""
    if not hasattr(function, "_tunerspec_settings"):
        function._tunerspec_settings = function._hypothesis_internal_use_settings
    own = function._tunerspec_settings
    phases = own.phases if shrink else tuple(phase for phase in own.phases if phase is not Phase.shrink)
    function._hypothesis_internal_use_settings = settings(own, phases=phases)


def _per_example(inner: Callable[..., Any]) -> Callable[..., Any]:
    """Hypothesis's `inner_test` (one call per example, the replay of a failing one included), preceded by a restart
    of the driver's call log; an exception it raises passes through untouched, its example's calls noted aside."""

    @functools.wraps(inner)
    def example(*args: Any, **kwargs: Any) -> Any:
        recorder = kwargs.get("driver")
        if type(recorder) is not RecordingDriver:
            return inner(*args, **kwargs)
        recorder.restart()
        try:
            return inner(*args, **kwargs)
        except BaseException as exc:
            _EXAMPLE_CALLS[id(exc)] = (exc, list(recorder.calls))
            while len(_EXAMPLE_CALLS) > _KEPT_EXAMPLES:  # shrinking raises many times; the replays come last
                del _EXAMPLE_CALLS[next(iter(_EXAMPLE_CALLS))]
            raise

    example._tunerspec_per_example = True  # type: ignore[attr-defined]
    return example


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """A row's test is logged as started (`rowlog`), and runs under the watchdog when `--tunerspec-timeout` is set."""
    row, log = _row(item), item.config.getoption("--tunerspec-rows")
    if row is None or not log:
        yield
        return
    rowlog.append(log, rowlog.START, item.nodeid, row=_row_fields(row))
    seconds = item.config.getoption("--tunerspec-timeout")
    watchdog = threading.Timer(seconds, _hung, (log, item.nodeid, seconds)) if seconds else None
    if watchdog is not None:
        watchdog.daemon = True
        watchdog.start()
    try:
        yield
    finally:
        if watchdog is not None:
            watchdog.cancel()


def _hung(log: str, nodeid: str, seconds: float) -> None:
    """The watchdog fired: log the row as hung, dump every thread's stack to stderr, end the process at once
    (the parent records the row as `error` and runs the remaining rows in a fresh process)."""
    rowlog.append(log, rowlog.HUNG, nodeid, seconds=seconds)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(HUNG_EXIT)


def pytest_runtest_setup(item: pytest.Item) -> None:
    row = _row(item)
    if row is not None and row.skip:
        pytest.skip(row.skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    row = _row(pyfuncitem)
    _EXAMPLE_CALLS.clear()
    if row is not None:
        _driver(pyfuncitem.config).restart()  # a test without examples: its one run's calls
        # torch's global generator starts each row from the run's seed (torch seeds itself at random on import):
        # a row's draws do not depend on the rows run before it in this process, nor on the process
        seed_torch(pyfuncitem.config.getoption("--tunerspec-seed") or 0)
    if row is not None and row.unsupported:
        missing = Discrepancy(row.unsupported, (), None, None, 0.0, kind="unsupported")
        raise ClauseFailure(f"unsupported, required by {row.clause}: {row.unsupported}", None, missing)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    row = _row(item)
    if row is None or (report.when != "call" and not (report.failed or report.skipped)):
        return
    status, detail = _status(report, call)
    repro = None
    if status in ("fail", "error") and report.when == "call" and call.excinfo is not None:
        exc = call.excinfo.value
        failure = _violation(exc) if status == "fail" else _error_of(exc)
        repro = _repro(_driver(item.config), row, failure, error=status == "error")
    if status == "fail" and row.clause.endswith(SHOULD):
        status = "warn"  # a SHOULD part not met: reported, not a test failure
        report.outcome, report.longrepr = "passed", None
    if status == "fail" and item.config.getoption("--tunerspec-stop-on-fail"):
        item.session.shouldstop = f"first fail row: {row.clause}"
    result = {**_row_fields(row), "status": status, "detail": detail, "repro": repro}
    item.config.stash[RESULTS].append(result)
    item.user_properties += [("tunerspec_clause", row.clause), ("tunerspec_status", status)]  # for --junitxml
    log = item.config.getoption("--tunerspec-rows")
    if log:
        rowlog.append(log, rowlog.DONE, item.nodeid, row=result)


def _row(item: pytest.Item) -> RowSpec | None:
    callspec = getattr(item, "callspec", None)
    row = callspec.params.get("row") if callspec is not None else None
    return row if isinstance(row, RowSpec) else None  # an empty parametrization gives pytest's NOTSET


def _row_fields(row: RowSpec) -> dict:
    fields = asdict(row)
    fields.pop("skip")
    fields.pop("unsupported")
    return fields


def _status(report: pytest.TestReport, call: pytest.CallInfo) -> tuple[str, str]:
    if report.skipped:
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else "skipped"
        return "skip", _one_line(reason.removeprefix("Skipped: "))  # the reason as `rows` (or the test) gave it
    if report.passed:
        return "pass", "held on every drawn case"
    exc = call.excinfo.value if call.excinfo is not None else None
    if report.when == "call" and _is_violation(exc):
        return "fail", _one_line(str(_violation(exc)))  # of a hypothesis group: its first violation
    if exc is None:
        return "error", _one_line(str(report.longrepr))
    first = _error_of(exc)  # hypothesis groups distinct failures: the first names the row
    others = len(exc.exceptions) - 1 if isinstance(exc, BaseExceptionGroup) else 0
    more = f" (and {others} other distinct failure{'s' if others > 1 else ''})" if others else ""
    return "error", _one_line(f"{type(first).__name__}: {first}{more}")


def _is_violation(exc: BaseException | None) -> bool:
    return _violation(exc) is not None


def _violation(exc: BaseException | None) -> ClauseFailure | None:
    """The ClauseFailure `exc` is or holds (hypothesis may group several failures)."""
    if isinstance(exc, ClauseFailure):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        return next((v for v in map(_violation, exc.exceptions) if v is not None), None)
    return None


def _error_of(exc: BaseException) -> BaseException:
    """The exception an `error` row reports (the first of a hypothesis group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _repro(recorder: RecordingDriver, row: RowSpec, failure: BaseException | None, *, error: bool) -> str | None:
    """The failing example as a snippet in the implementation's own API (`driver.repro`): its base model and input,
    the driver calls it made, then the check that failed (`fail`) or the call that raised (`error`). None where no
    failing example is known, the base model cannot be written as source or the driver renders no repro."""
    if failure is None:
        return None
    missing = getattr(failure, "discrepancy", None)
    if missing is not None and missing.kind == "unsupported":  # the row never ran: the capability is shown absent
        return _render(recorder, Case(row.tuner, row.clause, {}, "import torch", discrepancy=missing))
    context = failure.context if isinstance(failure, ClauseFailure) else _context_in(failure)
    records = _EXAMPLE_CALLS.get(id(failure), (None, recorder.calls))[1]
    if all(r.method in READ_ONLY for r in records):
        return _old_style_repro(recorder, row, failure, context)
    seed = context.seed if context is not None else None
    # the seeds `build_base` is given (a Twin's second: seed + 7; a Rig's head: seed + 5)
    seeds = () if seed is None else (seed, seed + 7, seed + 5)
    calls, primary = _case_calls(records, seeds)
    model_code = _model_code(primary, context, seeds) if primary is not None else "import torch, transformers"
    if model_code is None and context is not None:
        model_code = context.model_code  # a test's own model, written by the test
    if model_code is None:
        return context.repro if context is not None else None
    shape = context.shapes.get("x") if context is not None else None
    case = Case(
        tuner=row.tuner,
        clause=row.clause,
        configs={},
        model_code=model_code,
        input_shapes=[tuple(shape)] if shape is not None else [],
        seed=(context.seed or 0) if context is not None else 0,
        calls=calls,
        observed=str(failure).split("\n", 1)[0],
        discrepancy=getattr(failure, "discrepancy", None),
        error=type(failure).__name__ if error else None,
    )
    return _render(recorder, case)


def _old_style_repro(
    recorder: RecordingDriver, row: RowSpec, failure: BaseException, context: Context | None
) -> str | None:
    """No model was adapted through the driver: the base layer of the context adapted with its config (a `fail` row),
    or the context's own repro."""
    if context is None or context.layer is None or not isinstance(failure, ClauseFailure):
        return context.repro if context is not None else None  # a model-scope check may render its own
    values = context.config.values()
    nested = bool(context.config) and all(isinstance(v, dict) and "target_modules" in v for v in values)
    configs = context.config if nested else {"default": {**context.config, "target_modules": ["layer"]}}
    shape = context.shapes.get("x")
    case = Case(
        tuner=row.tuner,
        clause=row.clause,
        configs=configs,
        model_code=base_code(context.layer, context.dtype or "float64", context.seed or 0, shape),
        input_shapes=[tuple(shape)] if shape is not None else [],
        seed=context.seed or 0,
        observed=str(failure).split("\n", 1)[0],
    )
    return _render(recorder, case)


def _render(recorder: RecordingDriver, case: Case) -> str | None:
    driver = unwrap(recorder)
    try:
        return driver.repro(case)
    except Exception as exc:  # a driver's broken repro must not lose the row
        return f"# {driver.name}.repro raised {type(exc).__name__}: {exc}"


def _context_in(exc: BaseException) -> Context | None:
    """The failure context of the test an exception went through: the innermost frame of its traceback holding a
    `Context`, or an object with one (an adapted layer, a scene)."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            found = value if isinstance(value, Context) else getattr(value, "context", None)
            if isinstance(found, Context):
                return found
    return None


def _case_calls(
    records: list[CallRecord], seeds: tuple[int, ...]
) -> tuple[list[Call], tuple[nn.Module, dict[str, torch.Tensor]] | None]:
    """The recorded calls with every object replaced by a `Ref`: the first base model is `model` (the case's model
    code builds it), other base models carry their source, results are named where they are models or configs.
    Also returns the first base model and its tensors as they were passed."""
    refs: dict[int, Ref] = {}
    counts: Counter[str] = Counter()
    primary: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []

    def fresh(stem: str) -> str:
        counts[stem] += 1
        return stem if stem == "model" and counts[stem] == 1 else f"{stem}_{counts[stem]}"

    def convert(value: Any, record: CallRecord, base_arg: bool) -> Any:
        if value is None or isinstance(value, (str, int, float, bool, torch.Tensor, torch.dtype, torch.device)):
            return value
        if isinstance(value, dict):
            return {k: convert(v, record, False) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return type(value)(convert(v, record, False) for v in value)
        if hasattr(value, "__fspath__"):
            return str(value)
        if id(value) in refs:
            return refs[id(value)]
        if isinstance(value, nn.Module):
            state = record.base_state if base_arg and record.base_state is not None else value.state_dict()
            if not primary:
                primary.append((value, state))
                ref = Ref(fresh("model"))
            else:
                var = fresh("base")
                ref = Ref(var, code=module_code(var, value, state, seeds))
        else:
            ref = Ref(fresh("config" if _is_config(value) else "value"), value=value)
        refs[id(value)] = ref
        return ref

    calls = []
    for record in records:
        base_name = {"adapt": "model", "load": "base_model"}.get(record.method)
        arguments = {k: convert(v, record, k == base_name) for k, v in record.arguments.items()}
        result = None
        if record.returned and (isinstance(record.result, nn.Module) or _is_config(record.result)):
            wrapped = arguments.get("model") if record.method == "adapt" else None
            if isinstance(wrapped, Ref):  # `model = get_peft_model(model, …)`: the base lives on inside the result
                result = Ref(wrapped.var)
            else:
                result = Ref(fresh("model" if isinstance(record.result, nn.Module) else "config"))
            refs[id(record.result)] = result
        calls.append(Call(record.method, arguments, result, not record.returned, record.torch_seed, record.files))
    return calls, (primary[0] if primary else None)


def _is_config(value: Any) -> bool:
    return hasattr(value, "to_dict") and not isinstance(value, (nn.Module, types.ModuleType, type))


def _model_code(
    primary: tuple[nn.Module, dict[str, torch.Tensor]], context: Context | None, seeds: tuple[int, ...]
) -> str | None:
    """Source binding `model` (the first base model, with its tensors as they were passed: `module_code`) and `x`
    (the input, `strategies.random_tensor(shape, dtype, seed + 1)`, where the context names its shape)."""
    module, state = primary
    code = module_code("model", module, state, seeds)
    shape = context.shapes.get("x") if context is not None else None
    if code is None or shape is None or not seeds:
        return code
    dtype = next(iter(state.values())).dtype if state else torch.float64
    return code + "\n" + input_code(shape, dtype, seeds[0] + 1)


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS, [])
    if not results:
        return
    counts = Counter((r["tuner"], r["family"], r["status"]) for r in results)
    terminalreporter.section("tunerspec rows (tuner × family)")
    for tuner, family in sorted({(t, f) for t, f, _ in counts}):
        by_status = {s: n for (t, f, s), n in counts.items() if (t, f) == (tuner, family)}
        terminalreporter.write_line(
            f"{tuner:8} {family:12} " + " ".join(f"{s}={n}" for s, n in sorted(by_status.items()))
        )
