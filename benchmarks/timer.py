"""A small round-robin timer: candidates are interleaved call by call, in an order that rotates every round, so
that machine noise falls on all of them alike (pytest-benchmark times one candidate at a time). Statistics are
pytest-benchmark's own `Stats` block (seconds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pytest_benchmark.stats import Stats


@dataclass(frozen=True)
class Candidate:
    """`run` is timed; `setup`, if any, runs untimed just before each call (e.g. to undo the previous merge)."""

    run: Callable[[], object]
    setup: Callable[[], object] | None = None


def failures(candidates: dict[str, Candidate]) -> dict[str, str]:
    """Call each candidate once (untimed); {name: the exception it raised} for those that cannot run."""
    failed = {}
    for name, candidate in candidates.items():
        try:
            if candidate.setup is not None:
                candidate.setup()
            candidate.run()
        except Exception as exc:  # an implementation failing an operation is data, not a crash
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU, whose work is done when the call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rotation(names: list[str], round_index: int) -> list[str]:
    """The call order of round `round_index`: `names` rotated left by `round_index` places."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def round_robin(
    candidates: dict[str, Candidate], *, rounds: int, warmup: int = 2, device: torch.device | str = "cpu"
) -> dict[str, dict[str, float]]:
    """Time each candidate `rounds` times after `warmup` untimed rounds; each timed region ends with the device's
    synchronisation. Returns pytest-benchmark's stats dict per candidate (min, max, mean, stddev, median, iqr, q1,
    q3, rounds, outliers, ops, …)."""
    device = torch.device(device)
    names = list(candidates)
    stats = {name: Stats() for name in names}
    for round_index in range(-warmup, rounds):
        for name in rotation(names, round_index):
            candidate = candidates[name]
            if candidate.setup is not None:
                candidate.setup()
            synchronize(device)
            start = time.perf_counter()
            candidate.run()
            synchronize(device)
            elapsed = time.perf_counter() - start
            if round_index >= 0:
                stats[name].update(elapsed)
    return {name: s.as_dict() for name, s in stats.items()}
