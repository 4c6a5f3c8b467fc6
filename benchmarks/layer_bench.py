"""Per-layer measurements: one base layer, one tuner, every implementation, every operation, interleaved; then
memory and parameter counts, and the output check."""

from __future__ import annotations

from contextlib import ExitStack

import torch

from conformance.drivers.base import Driver
from conformance.harness import Holder, adapt_module

from .metrics import peak_allocated_bytes, saved_tensor_bytes, trainable_parameters
from .operations import OPERATIONS, UNMERGED_OPERATIONS, backward_step, prepared
from .prepare import prepare
from .record import Measurement, timing_entry
from .settings import Progress, Settings
from .subjects import BASE, Subject, check_outputs, equalise
from .timer import failures, round_robin
from .workloads import BenchTuner, LayerWorkload


def memory_facts(subject: Subject, x: torch.Tensor, cotangent: torch.Tensor, device: torch.device) -> dict:
    """Trainable parameters, bytes saved for backward by one train-mode forward (x requiring grad), and on CUDA
    the peak allocated memory of one forward+backward."""
    model = subject.model
    x_grad = x.detach().requires_grad_(True)
    saved = saved_tensor_bytes(lambda: model(x_grad), [*model.parameters(), x_grad])
    step = backward_step(model, x, cotangent)
    step.setup()
    return {
        "trainable_parameters": trainable_parameters(model),
        "saved_bytes": saved,
        "peak_bytes": peak_allocated_bytes(step.run, device),
    }


def bench_layer(
    workload: LayerWorkload, tuner: BenchTuner, drivers: dict[str, Driver], settings: Settings, progress: Progress
) -> Measurement:
    device, dtype = settings.torch_device, settings.torch_dtype
    base, adapted, measurement = prepare(workload, tuner, drivers, settings, workload.kind, adapt_module)
    if not adapted:
        return measurement
    not_copied = equalise(adapted)
    subjects = [Subject(BASE, Holder(base)), *adapted]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(workload.input_shape(settings.tokens), generator=generator).to(device=device, dtype=dtype)
    with torch.no_grad():
        expected = base(x)
    cotangent = torch.randn(expected.shape, generator=generator).to(device=device, dtype=dtype)
    checks: dict[str, dict] = {}
    for operation in OPERATIONS:
        with ExitStack() as stack:
            candidates = {s.name: stack.enter_context(prepared(operation, s, x, cotangent)) for s in subjects}
            candidates = {name: c for name, c in candidates.items() if c is not None}
            for name, reason in failures(candidates).items():
                del candidates[name]
                measurement.skip(workload.name, tuner.name, name, f"{operation} raised {reason}")
            stats = round_robin(candidates, rounds=settings.rounds, warmup=settings.warmup, device=device)
        progress.report(workload.name, tuner.name, operation, stats)
        for s in subjects:
            if s.name in stats:
                measurement.benchmarks.append(timing_entry(workload, tuner, operation, s, stats[s.name]))
        if operation == UNMERGED_OPERATIONS[-1]:  # the unmerged outputs, checked after their timing
            with torch.no_grad():
                outputs = {s.name: s.model.eval()(x) for s in adapted}
            checks = check_outputs(outputs, expected.shape, adapted[0].name, not_copied)
            for s in adapted:
                s.model.train()
    for s in subjects:
        facts = {"workload": workload.name, "kind": workload.kind, "tuner": tuner.name,
                 "implementation": s.name, "implementation_tuner": s.tuner}  # fmt: skip
        facts.update(memory_facts(s, x, cotangent, device))
        if s.name in checks:
            facts["check"] = checks[s.name]
        measurement.subjects.append(facts)
    return measurement
