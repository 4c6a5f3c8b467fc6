"""The pytest plugin: `pytest --pyargs conformance --impl NAME` (also what `tunerspec check` runs).

- registers the project's hypothesis profiles (`tunerspec-dev`, `tunerspec-ci`, `tunerspec-thorough`);
- builds the driver named by `--impl` (a built-in name or `package.module:Class`);
- parametrizes every `@pytest.mark.contract(clause, axes=…)` test with one `RowSpec` per report row;
- turns each row's outcome into a status: `pass`; `fail` for a `ClauseFailure` (a violated clause, or a
  MUST capability the driver lacks); `error` for any other exception (the implementation raised where
  SPEC requires an answer); `warn` for a violated `.should` row (a SHOULD part; the test passes); `skip` with
  the reason decided in `conformance.rows`.
"""

from __future__ import annotations

import importlib
import json
from collections import Counter
from dataclasses import asdict

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase, settings

from .assertions import ClauseFailure
from .drivers.base import Case, Driver
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
}
RESULTS = pytest.StashKey[list]()


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
    group.addoption("--impl", default="reference", help="implementation: built-in driver name or module:Class")
    group.addoption("--tuner", action="append", default=None, help="check only this tuner (repeatable)")
    group.addoption("--tunerspec-rows", default=None, help="write the result rows as JSON to this file")
    group.addoption(
        "--tunerspec-seed", type=int, default=None,
        help="seed every contract test's hypothesis run with this (same seed and profile: same rows)",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "contract(*clauses, axes=(), dtypes=…, inits=…, scope='layer', kinds=None, variants=None, peer=None): "
        "a contract test producing one report row per clause and combination of the axes",
    )
    config.stash[RESULTS] = []


@pytest.fixture(scope="session")
def driver(pytestconfig: pytest.Config) -> Driver:
    return _driver(pytestconfig)


def _driver(config: pytest.Config) -> Driver:
    cached = getattr(config, "_tunerspec_driver", None)
    if cached is None:
        cached = load_driver(config.getoption("--impl"))
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
    """`--tunerspec-seed`: hypothesis's own `seed` decorator on every contract test (it takes precedence over the
    profile's `derandomize`, which otherwise fixes the examples per test function)."""
    value = config.getoption("--tunerspec-seed")
    if value is None:
        return
    for function in {id(item.obj): item.obj for item in items if _row(item) is not None}.values():
        if getattr(function, "is_hypothesis_test", False):  # a test running @given inside keeps derandomize
            hypothesis.seed(value)(function)


def pytest_runtest_setup(item: pytest.Item) -> None:
    row = _row(item)
    if row is not None and row.skip:
        pytest.skip(row.skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    row = _row(pyfuncitem)
    if row is not None and row.unsupported:
        raise ClauseFailure(f"unsupported, required by {row.clause}: {row.unsupported}")
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
    if status == "fail":
        repro = _repro(_driver(item.config), row, _violation(call.excinfo.value))
    if status == "fail" and row.clause.endswith(SHOULD):
        status = "warn"  # a SHOULD part not met: reported, not a test failure
        report.outcome, report.longrepr = "passed", None
    item.config.stash[RESULTS].append({**_row_fields(row), "status": status, "detail": detail, "repro": repro})


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
        return "skip", _one_line(str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else "skipped")
    if report.passed:
        return "pass", "held on every drawn case"
    exc = call.excinfo.value if call.excinfo is not None else None
    if report.when == "call" and _is_violation(exc):
        return "fail", _one_line(str(exc))
    return "error", _one_line(f"{type(exc).__name__}: {exc}" if exc is not None else str(report.longrepr))


def _is_violation(exc: BaseException | None) -> bool:
    return _violation(exc) is not None


def _violation(exc: BaseException | None) -> ClauseFailure | None:
    """The ClauseFailure `exc` is or holds (hypothesis may group several failures)."""
    if isinstance(exc, ClauseFailure):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        return next((v for v in map(_violation, exc.exceptions) if v is not None), None)
    return None


def _repro(driver: Driver, row: RowSpec, failure: ClauseFailure | None) -> str | None:
    """The failing case as a snippet in the implementation's own API (`driver.repro`), or None where the failure
    does not name a base layer or the driver renders no repro."""
    context = failure.context if failure is not None else None
    if context is None or context.layer is None:
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
    try:
        return driver.repro(case)
    except Exception as exc:  # a driver's broken repro must not lose the row
        return f"# {driver.name}.repro raised {type(exc).__name__}: {exc}"


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--tunerspec-rows")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(session.config.stash.get(RESULTS, []), fh)


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
