"""`conformance.check(...)`: run the contracts against one implementation and return its `Report`
(the entry other projects' CI and `tunerspec check` use), each finding's repro confirmed in a clean subprocess."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import torch

from ._version import __version__
from .drivers.base import REPRODUCED, TUNERS, Driver
from .expectations import apply_expectations, load_expectations
from .plugin import BUILTIN_DRIVERS, load_driver
from .report import Report, Row, strip_numbers
from .runs import DEFAULT_TIMEOUT_S, Progress, run_in_process, run_isolated
from .spec.clauses import spec_sha256
from .spec.families import FAMILIES

CONTRACTS = Path(__file__).resolve().parent / "contracts"
REPRO_TIMEOUT_S = 60
FINDINGS = ("fail", "error", "warn")  # the statuses whose rows carry a repro to verify


def driver_spec(driver: str | Driver) -> str:
    """A driver instance → the `module:Class` that rebuilds it (so that a child process can load it)."""
    if isinstance(driver, str):
        return driver
    cls = type(driver)
    return f"{cls.__module__}:{cls.__qualname__}"


def check(
    driver: str | Driver,
    tuners: list[str] | None = None,
    families: list[str] | None = None,
    profile: str = "ci",
    seed: int = 0,
    stop_on_first_fail: bool = False,
    isolate: bool = True,
    command: str | None = None,
    verify: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    jobs: int | None = None,
    progress: Progress | None = None,
    expectations: str | os.PathLike[str] | None = None,
    shrink: bool = True,
) -> Report:
    """Run the contract families (all, or `families`) for `tuners` (all the driver claims, or these) and
    return the report. `isolate=True` runs each tuner in child processes (`conformance.runs`: a crash or a test
    running past `timeout` seconds becomes that row's `error`, the rest still run), `jobs` tuners at a time (default:
    one per CPU core); `False` runs them in this process. `verify`: run the repros of the `fail` / `error` rows in
    clean subprocesses and set `repro_verified` (`verify_repros`). `progress` receives one-line progress messages
    (default: printed to stderr). `expectations`: a TOML file of known deviations (`conformance.expectations`): the
    rows they match become `xfail` / `xpass`, and each stale or unused entry is warned about (UserWarning).
    `stop_on_first_fail`: end at the first `fail` row (an `error` row does not end the run). `shrink=False`: failing
    examples are not minimised — sooner, but a row's example is the first failing one found, and a test whose
    examples fail in two ways (an exception and a violation) reports only the first (the targeted mutant runs)."""
    expected = load_expectations(expectations) if expectations is not None else []
    spec = driver_spec(driver)
    instance = load_driver(spec)
    tuners = list(tuners or TUNERS)
    unknown = sorted(set(tuners) - set(TUNERS)) + sorted(set(families or []) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown tuner or family: {unknown}")
    files = sorted(str(p) for p in CONTRACTS.glob("test_*.py") if families is None or p.stem[5:] in families)
    args = [
        *files, "-p", "no:cacheprovider", "-p", "no:timeout", "-q", f"--impl={spec}",
        f"--hypothesis-profile=tunerspec-{profile}", f"--tunerspec-seed={seed}", "-W", "ignore",
        *(["--tunerspec-stop-on-fail"] if stop_on_first_fail else []), *([] if shrink else ["--tunerspec-no-shrink"]),
    ]  # fmt: skip
    if isolate:
        report_progress = progress or _print_progress
        rows = run_isolated(
            args, tuners, timeout=timeout, jobs=jobs or os.cpu_count() or 1, env=_child_env(), progress=report_progress
        )
    else:
        rows = run_in_process([*args, *[f"--tuner={t}" for t in tuners]])
    report = _report(instance, spec, profile, seed, tuners, rows, command)
    if verify:
        verify_repros(report.results)
    for message in apply_expectations(report.results, expected):
        warnings.warn(message, UserWarning, stacklevel=2)
    return report


_PRINTING = threading.Lock()


def _print_progress(message: str) -> None:
    with _PRINTING:  # one line per message, whichever tuner's thread reports it
        sys.stderr.write(f"tunerspec: {message}\n")
        sys.stderr.flush()


def _child_env() -> dict[str, str]:
    """The contracts' child process: offline transformers (nothing needs the hub), and one intra-op thread unless
    the caller chose otherwise — the tensors are tiny, and a second thread only spins (the whole reference run:
    90 s with one thread, 5–8 min with two on a busy 2-core machine)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def verify_repros(rows: Iterable[Row], timeout: float = REPRO_TIMEOUT_S) -> None:
    """Set `repro_verified` on the `fail` / `error` / `warn` rows whose repro shows the failure when run alone: one
    row per (tuner, clause, detail without its numbers) group is run, and its verdict holds for the group's rows with
    a repro. Rows without a repro keep False."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        if row.status in FINDINGS and row.repro:
            groups.setdefault((row.tuner, row.clause, strip_numbers(row.detail)), []).append(row)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        verdicts = list(pool.map(lambda group: repro_shows(group[0], timeout), groups.values()))
    for group, verdict in zip(groups.values(), verdicts, strict=True):
        for row in group:
            row.repro_verified = verdict


def repro_shows(row: Row, timeout: float = REPRO_TIMEOUT_S) -> bool:
    """Whether the row's repro, run alone (`run_repro`), shows the row's failure (`shows_failure`). A `fail` / `warn`
    row's repro without the final check (nothing prints `REPRODUCED: …`) is not run."""
    if not row.repro or (row.status != "error" and REPRODUCED not in row.repro):
        return False
    done = run_repro(row.repro, timeout)
    return done is not None and shows_failure(row, done)


def run_repro(snippet: str, timeout: float = REPRO_TIMEOUT_S) -> subprocess.CompletedProcess | None:
    """Run a snippet in a clean interpreter: `python -c`, a temporary working directory, no PYTHONPATH entry holding
    tunerspec's `conformance`, transformers offline. None when it hung past `timeout` or could not start."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    paths = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep) if p and not Path(p, "conformance").is_dir()]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    with tempfile.TemporaryDirectory(prefix="tunerspec-repro-") as tmp:
        try:
            return subprocess.run(
                [sys.executable, "-c", snippet], cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout
            )
        except (OSError, subprocess.SubprocessError):
            return None


def shows_failure(row: Row, done: subprocess.CompletedProcess) -> bool:
    """A `fail` / `warn` row's repro printed a line `REPRODUCED: …` (the observed element differs from SPEC's as the
    suite saw); an `error` row's repro ended with a traceback of the row's exception type."""
    if row.status != "error":
        return done.returncode == 0 and any(line.startswith(REPRODUCED) for line in done.stdout.splitlines())
    name = re.match(r"([A-Za-z_][\w.]*):", row.detail)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    raised = re.match(r"([A-Za-z_][\w.]*)(:|$)", last)
    return bool(done.returncode != 0 and name and raised and raised[1].split(".")[-1] == name[1].split(".")[-1])


def _report(
    driver: Driver, spec: str, profile: str, seed: int, tuners: list[str], rows: list[dict], command: str | None
) -> Report:
    return Report(
        implementation=driver.name,
        driver=driver.name,
        driver_source=BUILTIN_DRIVERS.get(spec, spec),
        version=driver.version(),
        tunerspec=__version__,
        spec_sha256=spec_sha256(),
        torch=torch.__version__,
        python=platform.python_version(),
        packages={name: _version(name) for name in ("transformers", "hypothesis", "peft", "lycoris-lora")},
        platform=platform.platform(),
        device="cpu",
        math_modes={"tf32": False, "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()},
        profile=profile,
        seed=seed,
        tuners=tuners,
        driver_options=dict(getattr(driver, "driver_options", {})),
        api_map=dict(getattr(driver, "api_map", {})),
        command=command or f"conformance.check({spec!r})",
        git_commit=git_commit(),
        results=[Row(**row, repro_verified=False) for row in rows],
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str | None:
    """The commit checked out where this package's contracts live (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=CONTRACTS, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
