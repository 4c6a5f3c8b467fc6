"""Every check of the suite goes through these helpers, so that every failure explains itself: clause,
tuner, implementation, config, shapes, dtype, seed, the largest error and where, the tolerance used,
and a repro (STYLE.md §2).

A violated clause raises `ClauseFailure` (the row becomes `fail`); any other exception raised while a
contract runs means the implementation raised where SPEC requires an answer (`error`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .drivers.base import Discrepancy
from .recording import calls_made
from .spec.layer import Layer
from .spec.tolerances import Tolerance, violations


class ClauseFailure(AssertionError):
    """A clause does not hold for the implementation under test; `context` says on what, and `discrepancy` (for a
    failed tensor comparison) the worst element: what was compared, where, the expected and the observed value."""

    def __init__(self, message: str, context: Context | None = None, discrepancy: Discrepancy | None = None) -> None:
        super().__init__(message)
        self.context = context
        self.discrepancy = discrepancy


@dataclass
class Context:
    """What a failure message names besides the values compared."""

    clause: str
    tuner: str
    implementation: str
    config: dict = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtype: str | None = None
    seed: int | None = None
    repro: str | None = None
    layer: Layer | None = None  # the base layer's geometry, for a repro that rebuilds the model
    model_code: str | None = None  # source binding `model`, the first base model, where a test builds its own

    def describe(self) -> str:
        parts = [f"[{self.clause}, tuner {self.tuner}, implementation {self.implementation}"]
        if self.dtype:
            parts.append(f", dtype {self.dtype}")
        if self.seed is not None:
            parts.append(f", seed {self.seed}")
        parts.append("]")
        lines = ["".join(parts), f"config: {self.config}"]
        if self.shapes:
            lines.append("shapes: " + ", ".join(f"{k} {tuple(v)}" for k, v in self.shapes.items()))
        if self.repro:
            lines.append("repro:\n" + self.repro)
        return "\n".join(lines)


def fail(context: Context, message: str, discrepancy: Discrepancy | None = None) -> None:
    __tracebackhide__ = True
    raise ClauseFailure(f"{message} {context.describe()}", context, discrepancy)


def assert_close_to_oracle(
    *,
    context: Context,
    what: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    tol: Tolerance,
    scale: float,
    extra: torch.Tensor | float = 0.0,
    observe: dict[str, Any] | None = None,
) -> None:
    """`actual` equals the oracle's `expected` within §8's `extra + a·S + r·|expected|`. `observe`: `Discrepancy`
    fields saying how a repro reads `actual` again (e.g. a gradient: target, name, mode, weights_seed), where its
    name alone (`target_of`) does not."""
    __tracebackhide__ = True
    if tuple(actual.shape) != tuple(expected.shape):
        shapes = tuple(expected.shape), tuple(actual.shape)
        fail(
            context,
            f"{what} has shape {shapes[1]}, but should have shape {shapes[0]}",
            Discrepancy(what, (), *shapes, 0.0, *target_of(what), kind="shape"),
        )
    bad = violations(actual, expected, tol, scale, extra)
    if bad.any():
        error = (actual.detach().double() - expected.detach().double()).abs()
        error = torch.where(torch.isnan(error), torch.full_like(error, float("inf")), error)
        # the worst element among those outside the bound (the largest error overall may be within its own bound)
        worst = int(torch.where(bad, error, torch.full_like(error, -1.0)).flatten().argmax())
        where = _index(worst, error.shape)
        got, want = actual.detach().flatten()[worst].item(), expected.detach().flatten()[worst].item()
        extra_there = (
            extra.detach().double().broadcast_to(error.shape).flatten()[worst].item()
            if isinstance(extra, torch.Tensor)
            else float(extra)
        )
        allowed = extra_there + tol.atol(scale) + tol.rtol * abs(want)
        bound = f"atol {tol.atol(scale):.3g} + rtol {tol.rtol:.3g}·|ref|"
        fail(
            context,
            f"{what} = {got:.6g} at {where}, but should be {want:.6g}: largest error {error.max().item():.3g} "
            f"({int(bad.sum())} of {bad.numel()} elements outside {bound})",
            replace(Discrepancy(what, where, float(want), float(got), allowed, *target_of(what)), **(observe or {})),
        )


def assert_equal(
    context: Context, what: str, actual: Any, expected: Any, observe: str | dict[str, Any] | None = None
) -> None:
    """⟨S⟩/⟨Z⟩ checks: exact equality (`torch.equal` for tensors). `observe`: the `Discrepancy.target` a repro observes
    `actual` again through, where it is not a tensor: "output" for the output's shape ("shape"), else an exact
    observation ("differs"); for tensors, a dict of `Discrepancy` fields saying how a repro reads `actual` again,
    where its name alone (`target_of`) does not."""
    __tracebackhide__ = True
    same = _identical(actual, expected) if isinstance(actual, torch.Tensor) else actual == expected
    if not same:
        difference = _first_difference(what, actual, expected)
        if isinstance(observe, dict):
            difference = None if difference is None else replace(difference, **observe)
        elif observe is not None:
            kind, admissible = ("shape", expected) if observe == "output" else ("differs", (expected,))
            difference = Discrepancy(what, (), admissible, actual, 0.0, observe, kind=kind)
        fail(context, f"{what} = {_short(actual)}, but should be {_short(expected)}", difference)


def _identical(actual: torch.Tensor, expected: Any) -> bool:
    """Equal values, or the same bits (a NaN output computed twice the same way is the same output)."""
    if torch.equal(actual, expected):
        return True
    comparable = isinstance(expected, torch.Tensor) and (actual.dtype, actual.shape) == (expected.dtype, expected.shape)
    return comparable and torch.equal(_bits(actual), _bits(expected))


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, one uint8 per byte (its bit pattern, for bitwise comparisons)."""
    return tensor.detach().contiguous().view(torch.uint8)


def assert_raises_clause(
    context: Context, exceptions: tuple[type[BaseException], ...], subject: str, call: Callable[[], Any]
) -> BaseException:
    """The call raises one of `exceptions` whose message names `subject` (case-insensitively, SPEC §0.1)."""
    __tracebackhide__ = True
    wanted = " or ".join(e.__name__ for e in exceptions)
    before = calls_made()
    try:
        call()
    except Exception as exc:
        raised = type(exc).__name__
        if not isinstance(exc, exceptions):
            message = f"raised {raised}({exc}), but should raise {wanted}"
            fail(context, message, outcome("raised", wanted, raised, before))
        if not re.search(re.escape(subject), str(exc), re.IGNORECASE):
            message = f"the {raised} raised does not name {subject!r}: {exc}"
            fail(context, message, outcome("unnamed", (subject,), raised, before))
        return exc
    fail(context, f"no {wanted} was raised (subject {subject!r})", outcome("silent", wanted, None, before))
    raise AssertionError  # unreachable: fail() raises


def outcome(kind: str, expected: Any, observed: str | None, before: int) -> Discrepancy:
    """A discrepancy on what a checked operation raised (`Discrepancy.kind` "raised", "unnamed" or "silent"), with
    `before` the `calls_made()` count when it began: a repro re-runs its last driver call where it made any."""
    target = "call" if calls_made() > before else None
    return Discrepancy("the checked operation", (), expected, observed, 0.0, target, kind=kind)


def target_of(what: str) -> tuple[str | None, str]:
    """What a repro recomputes to show a failed comparison named `what`, and on which key: the model's output on `x`
    (eval mode), the live base weight or bias (after a merge or an unmerge; "… of <key>" names another key than
    `layer`), or nothing it can render (probes, gradients, train-mode outputs, derived matrices)."""
    text = what.lower()
    key = re.search(r"\bof ([a-z_][\w.]*)", what)
    key_name = key[1] if key is not None and key[1] in ("layer", "inner.layer") else "layer"
    if re.match(r"(eval-mode |merged |merged model )?output\b", text):
        return "output", key_name
    for part in ("weight", "bias"):
        if re.match(rf"(merged|unmerged|base) {part}\b|{part} after", text) or re.search(
            rf"(: base {part}\b|tensors.*: {part}$)", text
        ):
            return part, key_name
    return None, key_name


def _first_difference(what: str, actual: Any, expected: Any) -> Discrepancy | None:
    """The first differing element of two same-shaped floating tensors (⟨S⟩/⟨Z⟩: no difference allowed)."""
    if not (isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor)):
        return None
    if actual.shape != expected.shape or not (actual.is_floating_point() and expected.is_floating_point()):
        return None
    a, e = actual.detach().double().flatten(), expected.detach().double().flatten()
    differs = ~((a == e) | (torch.isnan(a) & torch.isnan(e)))
    if not differs.any():
        return None  # equal values, different dtypes: nothing an element shows
    first = int(differs.nonzero()[0])
    return Discrepancy(what, _index(first, actual.shape), e[first].item(), a[first].item(), 0.0, *target_of(what))


def _index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), shape)) if len(shape) else ()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def unwarned(subjects: tuple[str, ...], emitted: list[str], category: str = "UserWarning") -> Discrepancy:
    """A discrepancy on the warnings of the checked operation (the last state-changing driver call): none of
    `category` named one of `subjects`; `emitted` says what it emitted."""
    return Discrepancy("the checked operation", (), (category, *subjects), list(emitted), 0.0, "call", kind="unwarned")
