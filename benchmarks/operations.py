"""The timed operations on one subject (the frozen base, or an implementation's adapted model), each as a
`Candidate` prepared in a context that restores the subject's mode and merge state afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .subjects import Subject
from .timer import Candidate

# forward: train mode, grad enabled, x without grad · forward+backward: x.requires_grad, backward of a fixed
# cotangent · eval forward: eval mode, no grad, unmerged · merged forward: the same, adapter merged ·
# merge / unmerge: the weight update alone (no base-layer counterpart)
OPERATIONS = ("forward", "forward+backward", "eval forward", "merged forward", "merge", "unmerge")
UNMERGED_OPERATIONS = OPERATIONS[:3]


def no_grad(call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return call()

    return run


def backward_step(model: nn.Module, x: torch.Tensor, cotangent: torch.Tensor) -> Candidate:
    """`model(x).backward(cotangent)` with x requiring grad; every gradient is reset untimed before each call."""
    x = x.detach().requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def reset() -> None:
        x.grad = None
        for p in trainable:
            p.grad = None

    return Candidate(run=lambda: model(x).backward(cotangent), setup=reset)


@contextmanager
def prepared(operation: str, subject: Subject, x: torch.Tensor, cotangent: torch.Tensor) -> Iterator[Candidate | None]:
    """The candidate for `operation` on `subject` (None: the base layer has no merge/unmerge); the subject is left
    in train mode and unmerged afterwards."""
    model = subject.model
    try:
        if operation == "forward":
            yield Candidate(run=lambda: model(x))
        elif operation == "forward+backward":
            yield backward_step(model, x, cotangent)
        elif operation in ("eval forward", "merged forward"):
            if operation == "merged forward":
                subject.merge()
            model.eval()
            yield Candidate(run=no_grad(lambda: model(x)))
        elif subject.driver is None:
            yield None
        elif operation == "merge":
            yield Candidate(run=lambda: subject.driver.merge(model), setup=subject.unmerge)
        elif operation == "unmerge":
            yield Candidate(run=lambda: subject.driver.unmerge(model), setup=subject.merge)
        else:
            raise ValueError(f"unknown operation {operation!r}")
    finally:
        subject.unmerge()
        model.train()
