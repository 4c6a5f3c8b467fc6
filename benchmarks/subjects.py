"""The subjects of one measurement: the frozen base model and each implementation's adapted copy of it, with the
same (non-identity) adapter weights everywhere, and the check of their outputs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from conformance.drivers.base import Driver
from conformance.harness import KEY

from .implementations import implementation_tuner, rename
from .workloads import BenchTuner

BASE = "base"
WEIGHT_NOISE = 0.02  # std of the seeded noise added to the first implementation's own init before copying it
AGREEMENT = {torch.float32: 1e-4, torch.bfloat16: 1e-2}  # max |y − y_first| / max |y_first| for "agrees"


@dataclass
class Subject:
    """A model called as `model(x)`; `driver` is None for the frozen base."""

    name: str
    model: nn.Module
    driver: Driver | None = None
    tuner: str | None = None  # the implementation's tuner id (peft runs Bone as "miss")

    @property
    def merged(self) -> bool:
        return self.driver is not None and bool(self.driver.layer_state(self.model, KEY).merged_adapters)

    def merge(self) -> None:
        if self.driver is not None and not self.merged:
            self.driver.merge(self.model)

    def unmerge(self) -> None:
        if self.merged:
            self.driver.unmerge(self.model)


Adapt = Callable[[Driver, str, nn.Module, dict], nn.Module]


def adapt_all(
    base: nn.Module, drivers: dict[str, Driver], tuner: BenchTuner, kind: str, adapt: Adapt
) -> tuple[list[Subject], dict[str, str]]:
    """The base subject (wrapping `base` as `adapt` would, adapter-free) and one adapted deep copy of `base` per
    implementation that claims the tuner on `kind` layers; the others → {implementation: reason skipped}."""
    subjects, skipped = [], {}
    for name, driver in drivers.items():
        tuner_id = implementation_tuner(driver, tuner.tuner, kind)
        if tuner_id is None:
            skipped[name] = f"{tuner.tuner} on {kind} not claimed"
            continue
        try:
            model = adapt(driver, tuner_id, copy.deepcopy(base), tuner.config)
        except Exception as exc:  # an implementation refusing the workload is data, not a crash
            skipped[name] = f"adapt raised {type(exc).__name__}: {exc}"
            continue
        subjects.append(Subject(name, model.train(), driver, tuner_id))
    return subjects, skipped


def equalise(subjects: list[Subject], seed: int = 0) -> dict[str, str]:
    """Give every subject the first one's adapter weights plus seeded N(0, WEIGHT_NOISE²) noise (so that no
    implementation runs an identity adapter), through the drivers' canonical names. Returns {name: why not}."""
    first = subjects[0]
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key in first.driver.adapted_modules(first.model):
        params = first.driver.get_params(first.model, key, "default")
        weights[key] = {
            n: p + WEIGHT_NOISE * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            for n, p in params.items()
        }
    failures = {}
    for subject in subjects:
        try:
            for key, params in weights.items():
                subject.driver.set_params(subject.model, key, "default", rename(params, first.tuner, subject.tuner))
        except Exception as exc:
            failures[subject.name] = f"weights not copied: {type(exc).__name__}: {exc}"
    return failures


def check_outputs(
    outputs: dict[str, torch.Tensor], expected_shape: torch.Size, first: str, not_copied: dict[str, str]
) -> dict[str, dict]:
    """Per subject: finite, of the base's output shape, and the largest difference to `first`'s output relative to
    its largest magnitude; `agrees` when that is within AGREEMENT for the dtype (None where the weights differ:
    `not_copied` says why)."""
    reference = outputs[first].float()
    scale = reference.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    checks = {}
    for name, output in outputs.items():
        same_shape = output.shape == expected_shape
        relative = float((output.float() - reference).abs().max() / scale) if same_shape else None
        agrees = relative is not None and relative <= AGREEMENT[output.dtype]
        checks[name] = {
            "compared_to": first,
            "shape_ok": same_shape,
            "finite": bool(torch.isfinite(output).all()),
            "max_rel_diff": relative,
            "agrees": None if name in not_copied else agrees,
            "note": not_copied.get(name),
        }
    return checks
