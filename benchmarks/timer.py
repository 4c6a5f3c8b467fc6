"""A small round-robin timer: candidates are interleaved call by call so that machine noise falls on
all of them alike (pytest-benchmark times one candidate at a time)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median: float
    q1: float
    q3: float
    samples: int


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int = 30,
    warmup: int = 3,
    device: torch.device | str = "cpu",
) -> dict[str, Timing]:
    """Time each candidate `rounds` times, rotating the order every round; synchronisation happens
    inside the timed region on CUDA. Returns the median and quartiles in seconds."""
    device = torch.device(device)
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    _synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            start = time.perf_counter()
            candidates[name]()
            _synchronize(device)
            samples[name].append(time.perf_counter() - start)
    result = {}
    for name, values in samples.items():
        q1, _, q3 = statistics.quantiles(values, n=4)
        result[name] = Timing(statistics.median(values), q1, q3, len(values))
    return result
