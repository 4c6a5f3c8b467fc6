"""The start of every benchmark: the workload's base model and one adapted copy per implementation."""

from __future__ import annotations

import torch
from torch import nn

from conformance.drivers.base import Driver

from .record import Measurement
from .settings import Settings
from .subjects import Adapt, Subject, adapt_all
from .workloads import BenchTuner, LayerWorkload, ModelWorkload


def prepare(
    workload: LayerWorkload | ModelWorkload,
    tuner: BenchTuner,
    drivers: dict[str, Driver],
    settings: Settings,
    kind: str,
    adapt: Adapt,
) -> tuple[nn.Module, list[Subject], Measurement]:
    """The base model (torch seeded 0), the adapted subjects, and a measurement that already records every
    implementation skipped (tuner not claimed on `kind`, or `adapt` raised)."""
    torch.manual_seed(0)
    base = workload.build(settings.torch_dtype, settings.torch_device)
    adapted, skipped = adapt_all(base, drivers, tuner, kind, adapt)
    measurement = Measurement()
    for name, reason in skipped.items():
        measurement.skip(workload.name, tuner.name, name, reason)
    return base, adapted, measurement
