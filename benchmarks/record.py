"""The JSON record: pytest-benchmark's layout where it fits (`machine_info`, `commit_info`, `datetime`, `version`,
and `benchmarks` entries of `group`, `name`, `params`, `stats`), plus per-subject facts (memory, parameter
counts, output checks) and the skipped combinations."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from conformance._version import __version__
from conformance.check import git_commit

from .subjects import Subject
from .workloads import BenchTuner, LayerWorkload, ModelWorkload

SCHEMA = "tunerspec-bench/1"
PACKAGES = ("peft", "lycoris-lora", "transformers", "pytest-benchmark")


@dataclass
class Measurement:
    benchmarks: list[dict] = field(default_factory=list)
    subjects: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def skip(self, workload: str, tuner: str, implementation: str, reason: str) -> None:
        self.skipped.append({"workload": workload, "tuner": tuner, "implementation": implementation, "reason": reason})

    def extend(self, other: Measurement) -> None:
        self.benchmarks += other.benchmarks
        self.subjects += other.subjects
        self.skipped += other.skipped


def timing_entry(
    workload: LayerWorkload | ModelWorkload, tuner: BenchTuner, operation: str, subject: Subject, stats: dict
) -> dict:
    params = {"workload": workload.name, "kind": workload.kind, "tuner": tuner.name, "operation": operation,
              "implementation": subject.name, "implementation_tuner": subject.tuner}  # fmt: skip
    return {
        "group": f"{workload.name} · {tuner.name} · {operation}",
        "name": subject.name,
        "params": params,
        "stats": stats,
    }


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info(device: torch.device) -> dict:
    """Where the run happened: platform, Python, torch, CPUs, torch's intra-op threads, the load average, GPU."""
    info = {
        "node": platform.node(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "packages": {name: _package_version(name) for name in PACKAGES},
    }
    if device.type == "cuda":
        info["cuda"] = {"device": torch.cuda.get_device_name(device), "cuda_version": torch.version.cuda}
    return info


def header(settings_dict: dict, command: str, device: torch.device, implementations: dict[str, str]) -> dict:
    return {
        "schema": SCHEMA,
        "version": __version__,
        "datetime": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings_dict.items()},
        "math_modes": {
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        },
        "machine_info": machine_info(device),
        "commit_info": {"id": git_commit()},
        "implementations": implementations,
    }


def write_json(record: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def is_bench_record(data: object) -> bool:
    return isinstance(data, dict) and data.get("schema") == SCHEMA
