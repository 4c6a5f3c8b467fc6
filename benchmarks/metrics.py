"""Size metrics: trainable parameters, the bytes autograd keeps for backward (deterministic, any device) and, on
CUDA, the peak allocated memory of a call."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .timer import synchronize


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def saved_tensor_bytes(call: Callable[[], object], alive: Iterable[torch.Tensor]) -> int:
    """Σ bytes of the unique storages autograd saves for backward during `call`, leaving out the storages of the
    `alive` tensors (parameters and inputs, which exist anyway): the activation memory a graph adds."""
    excluded = {t.untyped_storage().data_ptr() for t in alive}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        call()
    return sum(saved.values())


def peak_allocated_bytes(call: Callable[[], object], device: torch.device) -> int | None:
    """CUDA only: the peak of allocated memory during `call`, above what was allocated before it; None elsewhere."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    call()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before
