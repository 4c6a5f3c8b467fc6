"""SPEC §8's tolerance table, keyed by (class, dtype, scope), and the comparison rule it defines.

A comparison passes iff, elementwise, |actual − reference| ≤ atol + rtol·|reference| with atol = a·S,
S = max(1, max|reference|) — or, for round trips, also over the tensors written during the trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# (rtol, a) per (class, dtype) at layer scope; ⟨N⟩ at model scope uses one number for both.
_N_LAYER = {"float64": (1e-10, 1e-10), "float32": (1e-5, 1e-5), "bfloat16": (1.6e-2, 3e-2), "float16": (2e-3, 2e-3)}
_N_MODEL = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-3}
_A_INV = {"float64": (1e-6, 1e-6), "float32": (1e-4, 1e-4), "bfloat16": (1e-1, 1e-1), "float16": (1e-2, 1e-2)}
# ⟨G⟩: torch.autograd.gradcheck settings (float64 only); against the oracle's autograd: ⟨N⟩ float64.
GRADCHECK = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    a: float  # atol = a·S

    def atol(self, scale: float) -> float:
        return self.a * scale


def tolerance(cls: str, dtype: str, scope: str = "layer") -> Tolerance:
    """§8's cell for a tolerance class ("Z", "N", "A-INV", "G"), dtype name and scope ("layer"/"model").
    ⟨A⟩ IA3 unmerge is ⟨N⟩ plus the bound of `ia3_unmerge_bound`-style rules, added by the caller."""
    if cls == "Z":
        return Tolerance(0.0, 0.0)
    if cls in ("N", "A-IA3"):
        if scope == "model":
            v = _N_MODEL[dtype]
            return Tolerance(v, v)
        return Tolerance(*_N_LAYER[dtype])
    if cls == "A-INV":
        return Tolerance(*_A_INV[dtype])
    if cls == "G":
        return Tolerance(*_N_LAYER["float64"])
    raise ValueError(f"No §8 tolerance for class {cls!r}")


def scale(reference: torch.Tensor, *written: torch.Tensor) -> float:
    """S = max(1, max|reference|, max|T| over the tensors written during a round trip)."""
    values = [1.0] + [float(t.detach().abs().max()) for t in (reference, *written) if t.numel()]
    return max(values)


def violations(
    actual: torch.Tensor, reference: torch.Tensor, tol: Tolerance, s: float, extra: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Boolean mask of elements outside `extra + atol + rtol·|reference|` (compared in float64)."""
    actual, reference = actual.detach().double(), reference.detach().double()
    bound = extra + tol.atol(s) + tol.rtol * reference.abs()
    return ~((actual - reference).abs() <= bound)
