"""A whole benchmark run: every layer workload × tuner, then the end-to-end tiny Llama per tuner; the record
written as JSON with its tables and plot beside it."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

from . import report
from .implementations import load_driver
from .layer_bench import bench_layer
from .model_bench import bench_model
from .operations import OPERATIONS
from .record import Measurement, header, write_json
from .settings import Progress, Settings
from .workloads import TUNERS, Size


def plan(size: Size, tuners: list[str]) -> list[tuple]:
    """(bench function, workload, tuner) in run order: layers (Conv2d for the tuners measured on it), then model."""
    steps = [
        (bench_layer, workload, TUNERS[t])
        for workload in size.layers
        for t in tuners
        if workload.kind == "linear" or TUNERS[t].conv2d
    ]
    if size.model is not None:
        steps += [(bench_model, size.model, TUNERS[t]) for t in tuners]
    return steps


def set_math_modes() -> None:
    """TF32 off: float32 tables measure float32 arithmetic (recorded in the JSON's math_modes)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def run(settings: Settings, size: Size, out_dir: Path, command: str) -> dict:
    """Measure, write `<out_dir>/<label>.{json,md,png}` and return the record."""
    set_math_modes()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    drivers = {name: load_driver(name) for name in settings.implementations}
    tuners = list(settings.tuners or TUNERS)
    steps = plan(size, tuners)
    per_step = {bench_layer: len(OPERATIONS), bench_model: 1}
    progress = Progress(total=sum(per_step[bench] for bench, _, _ in steps))
    versions = {name: driver.version() for name, driver in drivers.items()}
    record = header(dataclasses.asdict(settings), command, settings.torch_device, versions)
    started = time.perf_counter()
    measurement = Measurement()
    for bench, workload, tuner in steps:
        measurement.extend(bench(workload, tuner, drivers, settings, progress))
    record.update(dataclasses.asdict(measurement))
    record["wall_s"] = round(time.perf_counter() - started, 1)
    record["machine_info"]["load_average_after"] = list(os.getloadavg())
    json_path = out_dir / f"{settings.label}.json"
    write_json(record, json_path)
    for path in report.write(json_path):
        print(f"wrote {path}", file=sys.stderr)
    return record
