"""Running the contract tests for `conformance.check`: in this process, or one child process per (implementation,
tuner) that survives the implementation.

Each child appends its rows to a row log (`conformance.rowlog`) as they are judged. A child that crashes (a
segfault, `os._exit`, an out-of-memory kill) or hangs past the per-test timeout (the plugin's watchdog ends it)
leaves one row started and never finished: that row is recorded as `error`, naming what happened, and the tuner's
remaining rows run in a fresh child. The rows of a run do not depend on how many children it took (each contract
test seeds its own examples), so the same profile and seed give the same rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from . import rowlog
from .plugin import HUNG_EXIT

DEFAULT_TIMEOUT_S = 300.0
PYTEST_FINISHED = (0, 1, 5)  # all passed, some failed, nothing collected: pytest ran to its end
POLL_S = 1.0

Progress = Callable[[str], None]


def run_in_process(args: list[str]) -> list[dict]:
    """All rows of one pytest run in this process (no protection against crashes or hangs)."""
    with tempfile.TemporaryDirectory(prefix="tunerspec-rows-") as tmp:
        log = os.path.join(tmp, "rows.jsonl")
        pytest.main([*args, f"--tunerspec-rows={log}"])
        return rowlog.read(log).rows


def run_isolated(
    args: list[str], tuners: list[str], *, timeout: float | None, jobs: int, env: dict[str, str], progress: Progress
) -> list[dict]:
    """The rows of every tuner, each tuner in its own child process(es), `jobs` tuners at a time."""
    with tempfile.TemporaryDirectory(prefix="tunerspec-rows-") as tmp:
        runs = [TunerRun(tuner, args, Path(tmp), timeout, env, progress) for tuner in tuners]
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = list(pool.map(TunerRun.run, runs))
    return [row for rows in results for row in rows]


class TunerRun:
    """One tuner's rows: children are started until one runs to its end; each crash or hang adds an `error` row
    for the row that was running, and the next child resumes after it."""

    def __init__(
        self, tuner: str, args: list[str], tmp: Path, timeout: float | None, env: dict[str, str], progress: Progress
    ) -> None:
        self.tuner, self.timeout, self.env, self.progress = tuner, timeout, env, progress
        self.log = tmp / f"{tuner}.jsonl"
        self.output = tmp / f"{tuner}.out"
        self.args = [*args, f"--tuner={tuner}", f"--tunerspec-rows={self.log}"]
        if timeout:
            self.args.append(f"--tunerspec-timeout={timeout}")

    def run(self) -> list[dict]:
        started, resume = time.monotonic(), False
        while True:  # each pass finishes at least one row (a dead child's running row becomes `error`)
            returncode = self._child(resume=resume)
            resume = True
            state = rowlog.read(self.log)
            if state.running is None:
                if returncode not in PYTEST_FINISHED:
                    raise RuntimeError(
                        f"the contract run for {self.tuner} stopped with exit status {returncode} outside any row "
                        f"(a collection or plugin error):\n{self._tail()}"
                    )
                counts = _tally(state.rows)
                self.progress(f"[{self.tuner}] done: {len(state.rows)} rows ({counts}) in {_seconds(started)}")
                return state.rows
            nodeid, fields = state.running
            detail = _died(returncode, state.hung_after or self.timeout)
            row = {**fields, "status": "error", "detail": detail, "repro": None}
            rowlog.append(self.log, rowlog.DONE, nodeid, row=row)
            self.progress(f"[{self.tuner}] {fields['clause']} ({nodeid.split('::')[-1]}): {detail}; "
                          "the remaining rows run in a fresh process")  # fmt: skip

    def _child(self, *, resume: bool) -> int:
        """One child pytest; progress is reported as it enters each contract family."""
        command = [sys.executable, "-m", "pytest", *self.args, *(["--tunerspec-resume"] if resume else [])]
        with open(self.output, "a", encoding="utf-8") as out:
            child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env)
            watcher = threading.Thread(target=self._watch, args=(child,), daemon=True)
            watcher.start()
            returncode = child.wait()
            watcher.join()
        return returncode

    def _watch(self, child: subprocess.Popen) -> None:
        family = None
        while child.poll() is None:
            running = rowlog.read(self.log).running
            if running is not None and running[1]["family"] != family:
                family = running[1]["family"]
                self.progress(f"[{self.tuner}] {family}")
            time.sleep(POLL_S)

    def _tail(self, lines: int = 40) -> str:
        text = self.output.read_text(encoding="utf-8", errors="replace") if self.output.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _died(returncode: int, hung_after: float | None) -> str:
    """The `error` detail of the row a child was running when it ended (`hung_after`: the timeout it ran past)."""
    if returncode == HUNG_EXIT and hung_after is not None:
        return f"hung: no answer within the per-test timeout of {hung_after:g} s (the process was stopped)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"crashed the process ({name}) while this row ran"
    return f"crashed the process (exit status {returncode}) while this row ran"


def _tally(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _seconds(started: float) -> str:
    return f"{time.monotonic() - started:.0f} s"
