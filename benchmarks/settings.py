"""One benchmark run's settings, and the progress line printed as each measurement finishes."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Settings:
    device: str = "cpu"
    dtype: str = "float32"
    size: str = "small"
    tokens: int = 512
    rounds: int = 12
    warmup: int = 2
    implementations: tuple[str, ...] = ("reference", "peft")
    tuners: tuple[str, ...] = ()
    label: str = "cpu-float32-small"
    threads: int | None = None  # torch intra-op threads (None: torch's default)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass
class Progress:
    """One line per finished measurement on stderr: `[i/n] workload · tuner · operation: name median (× base)`."""

    total: int
    done: int = 0
    stream: object = field(default=sys.stderr)

    def report(self, group: str, tuner: str, operation: str, stats: dict[str, dict]) -> None:
        self.done += 1
        base = stats.get("base", {}).get("median")
        parts = []
        for name, s in stats.items():
            ratio = f" ({s['median'] / base:.2f}×)" if base and name != "base" else ""
            parts.append(f"{name} {s['median'] * 1e3:.2f} ms{ratio}")
        print(f"[{self.done}/{self.total}] {group} · {tuner} · {operation}: " + " · ".join(parts), file=self.stream)
