"""IA3's scaling of a stored weight, as elementwise factors (SPEC IA3-FWD-3, IA3-MERGE-2).

A weight is given as stored: `(out, in)` for torch Linear, `(in, out)` for transformers Conv1D (`transposed`),
`(out, C, k…)` for a convolution with `C = in_channels / groups`.
"""

from __future__ import annotations

import torch

UNMERGE_SHIFT = 1e-8  # IA3-MERGE-2: unmerge divides by l + 1e-8


def output_factor(vector: torch.Tensor, weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """`l_out` along the output axis: `W′[o, …] = l_o W[o, …]`."""
    shape = [1] * weight.dim()
    shape[1 if transposed else 0] = -1
    return vector.reshape(shape)


def input_factor(vector: torch.Tensor, weight: torch.Tensor, transposed: bool, groups: int) -> torch.Tensor:
    """`l_in` along the input axis: `W′[o, c, …] = W[o, c, …] · l[g(o)·C + c]`, `g(o) = ⌊o / (out/groups)⌋`
    (a Linear is one group); for a Conv1D the stored input axis is 0."""
    if transposed:
        return vector.reshape(-1, 1)
    out, per_group = weight.shape[0], weight.shape[1]
    rows = vector.reshape(groups, per_group).repeat_interleave(out // groups, dim=0)
    return rows.reshape(out, per_group, *([1] * (weight.dim() - 2)))


def product(vectors: list[torch.Tensor]) -> torch.Tensor | None:
    """The elementwise product of flattened vectors (IA3-MULTI-1), None for none."""
    result = None
    for vector in vectors:
        result = vector.flatten() if result is None else result * vector.flatten()
    return result


def compute_dtype(vector: torch.Tensor) -> torch.dtype:
    """IA3-MERGE-2: the unmerge division runs in float32 for a half-precision vector, else in its own dtype."""
    return torch.float32 if vector.dtype in (torch.float16, torch.bfloat16) else vector.dtype
