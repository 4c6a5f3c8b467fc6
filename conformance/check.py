"""`conformance.check(...)`: run the contracts against one implementation and return its `Report`
(the entry other projects' CI and `tunerspec check` use)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pytest
import torch

from ._version import __version__
from .drivers.base import TUNERS, Driver
from .plugin import BUILTIN_DRIVERS, load_driver
from .report import Report, Row
from .spec.clauses import spec_sha256
from .spec.families import FAMILIES

CONTRACTS = Path(__file__).resolve().parent / "contracts"


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
) -> Report:
    """Run the contract families (all, or `families`) for `tuners` (all the driver claims, or these) and
    return the report. `isolate=True` runs pytest in a child process; `False` runs it in this one."""
    spec = driver_spec(driver)
    instance = load_driver(spec)
    tuners = list(tuners or TUNERS)
    unknown = sorted(set(tuners) - set(TUNERS)) + sorted(set(families or []) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown tuner or family: {unknown}")
    files = sorted(str(p) for p in CONTRACTS.glob("test_*.py") if families is None or p.stem[5:] in families)
    with tempfile.TemporaryDirectory() as tmp:
        rows_path = os.path.join(tmp, "rows.json")
        args = [
            *files, "-p", "no:cacheprovider", "-q", f"--impl={spec}", f"--hypothesis-profile=tunerspec-{profile}",
            f"--tunerspec-seed={seed}", f"--tunerspec-rows={rows_path}", "-W", "ignore",
            *[f"--tuner={t}" for t in tuners], *(["-x"] if stop_on_first_fail else []),
        ]  # fmt: skip
        if isolate:
            subprocess.run([sys.executable, "-m", "pytest", *args], check=False)
        else:
            pytest.main(args)
        rows = json.loads(Path(rows_path).read_text()) if os.path.exists(rows_path) else []
    return _report(instance, spec, profile, seed, tuners, rows, command)


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
        git_commit=_git_commit(),
        results=[Row(**row, repro_verified=False) for row in rows],
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=CONTRACTS, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
