"""End to end: training steps of a tiny Llama per tuner and implementation, interleaved with the frozen model's
step (same forward and backward, input embeddings requiring grad, no optimizer)."""

from __future__ import annotations

import torch
from torch import nn

from conformance.drivers.base import Driver

from .metrics import trainable_parameters
from .prepare import prepare
from .record import Measurement, timing_entry
from .settings import Progress, Settings
from .subjects import BASE, Subject, equalise
from .timer import Candidate, failures, round_robin
from .workloads import LLAMA_TARGETS, BenchTuner, ModelWorkload

OPERATION = "train step"
LEARNING_RATE = 1e-4


def adapt_projections(driver: Driver, tuner: str, model: nn.Module, config: dict) -> nn.Module:
    """Every attention and MLP projection of every block, by the implementation's own `get_peft_model`."""
    return driver.adapt(model, tuner, driver.make_config(tuner, {**config, "target_modules": list(LLAMA_TARGETS)}))


def train_step(model: nn.Module, embeddings: torch.Tensor, labels: torch.Tensor) -> Candidate:
    """Causal-LM loss on `embeddings`, backward, AdamW step on the trainable parameters (none for the base)."""
    x = embeddings.detach().requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE) if trainable else None

    def step() -> None:
        model(inputs_embeds=x, labels=labels).loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def reset() -> None:
        x.grad = None

    return Candidate(run=step, setup=reset)


def bench_model(
    workload: ModelWorkload, tuner: BenchTuner, drivers: dict[str, Driver], settings: Settings, progress: Progress
) -> Measurement:
    device = settings.torch_device
    base, adapted, measurement = prepare(workload, tuner, drivers, settings, "linear", adapt_projections)
    if not adapted:
        return measurement
    not_copied = equalise(adapted)
    subjects = [Subject(BASE, base), *adapted]
    labels = workload.input_ids(settings.tokens, device)
    with torch.no_grad():
        embeddings = base.get_input_embeddings()(labels)
    candidates = {s.name: train_step(s.model.train(), embeddings, labels) for s in subjects}
    for name, reason in failures(candidates).items():
        del candidates[name]
        measurement.skip(workload.name, tuner.name, name, f"{OPERATION} raised {reason}")
    subjects = [s for s in subjects if s.name in candidates]
    stats = round_robin(candidates, rounds=settings.rounds, warmup=settings.warmup, device=device)
    progress.report(workload.name, tuner.name, OPERATION, stats)
    for s in subjects:
        measurement.benchmarks.append(timing_entry(workload, tuner, OPERATION, s, stats[s.name]))
        with torch.no_grad():
            loss = s.model.eval()(inputs_embeds=embeddings, labels=labels).loss
        facts = {"workload": workload.name, "kind": workload.kind, "tuner": tuner.name, "implementation": s.name,
                 "implementation_tuner": s.tuner, "trainable_parameters": trainable_parameters(s.model)}  # fmt: skip
        if s.driver is not None:  # after training: finite, not equal (each trained its own copy)
            facts["check"] = {"finite": bool(torch.isfinite(loss)), "loss": float(loss), "note": not_copied.get(s.name)}
        measurement.subjects.append(facts)
    return measurement
