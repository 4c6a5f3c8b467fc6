"""What a repro is made of: the recorded driver calls of a failing example, what its failed check saw, and the
case a driver renders as a snippet in the library's own API (`Driver.repro`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ref:
    """An object of the failing example that a repro names `var` (a model, a config). `code`, where set, is source
    that binds `var` (a base model the snippet builds); else a rendered call's result binds it. `value` is the object
    itself, for a renderer that has to describe one no call produced (a config built outside the driver)."""

    var: str
    code: str | None = None
    value: Any = field(default=None, compare=False, repr=False)


@dataclass
class Call:
    """One driver call of the failing example: the protocol method, its arguments by the protocol's parameter names
    (defaults applied; tensors as values, models and configs as `Ref`s), the `Ref` its result is bound to (models
    and configs only), whether it raised, the seed torch's generator was freshly seeded with when it began, and the
    files (relative path → bytes) of the directory it reads, as they were then (`load`, `load_adapter`)."""

    method: str
    arguments: dict[str, Any] = field(default_factory=dict)
    result: Ref | None = None
    raised: bool = False
    torch_seed: int | None = None
    files: dict[str, bytes] | None = None


@dataclass(frozen=True)
class Discrepancy:
    """What a failed check saw, for a repro's final check to observe again. By `kind`:

    - "value": the worst element of a failed comparison: `what` at index `where`, the oracle's `expected` value,
      the implementation's `observed` one, `bound` the |difference| allowed there (0: equality);
    - "shape": `observed` is the shape of `what`, `expected` the shape SPEC requires (`where` is empty);
    - "raised": the checked operation raised an exception of type name `observed`, where `expected` names the types
      SPEC requires ("": none, the input must be accepted);
    - "unnamed": it raised `observed` as required, but the message names none of the subjects `expected` (a tuple);
    - "silent": it returned (`observed` None), where `expected` names the exception types SPEC requires;
    - "differs": an exact observation (a list, dict, shape, count) is `observed`, where SPEC admits only the values
      in the tuple `expected`;
    - "unwarned": the checked operation emitted no warning of category `expected[0]` naming one of the subjects
      `expected[1:]` (`observed`: the warnings it emitted, as "Category: message" lines);
    - "nonfinite": `what` (an output) has a non-finite entry, where SPEC requires every entry finite;
    - "unsupported": the row never ran: the implementation lacks the capability `what` names (`RowSpec.unsupported`),
      which the clause requires (a repro shows it absent from the library's API: `PeftLikeDriver.absence_repro`);
    - "silent_nonfinite": the checked operation returned, left a non-finite element in the base weight or bias at
      `key`, and emitted no warning of category `expected[0]` naming one of `expected[1:]` with a message matching
      the regular expression `wording` (`observed`: the warnings it emitted).

    `target` says what a repro recomputes to show it: "output" (the model on `x`; in `mode` "train", the last of
    `forwards` train-mode forwards after seeding torch with `train_seed`, or all of them stacked for "nonfinite"),
    "weight" or "bias" (the live base layer under `key`, logical orientation), "applied" (the expression `derive`
    over W, the weight the model applies at `key` as `conformance.probes.applied_weight` reads it, and B, the base
    weight, logical orientation, both float64), "param" (the adapter parameter `name` of `adapter` on `key`), "grad"
    (its `.grad` after a backward of `(y * weights).sum()` in `mode`, the weights `random_tensor(y.shape, float64,
    weights_seed)`), "call" (the last recorded state-changing driver call, the checked operation), an observation of
    the adapted model ("adapted": its adapted module keys, sorted; "active": {key: active adapters} for the keys of
    `observed`; "shapes" / "requires_grad": {name: shape / flag} of `adapter`'s parameters named in `observed` on
    `key`; "trainable": the number of trainable parameters outside the base layer at `key`; "saved": {file key:
    shape} of the tensors named in `observed` in the `adapter_model.safetensors` of `adapter`'s directory (CORE-SAVE-1)
    that the last recorded `save` wrote), or None (not rendered). A parameter, gradient or observation is read on the
    model (and key, adapter) of the last recorded read-only call that made it (`OBSERVED_BY`)."""

    what: str
    where: tuple[int, ...]
    expected: Any
    observed: Any
    bound: float
    target: str | None = None
    key: str = "layer"
    kind: str = "value"
    adapter: str = "default"
    name: str = ""
    mode: str = "eval"
    weights_seed: int | None = None
    derive: str = ""
    wording: str = ""
    forwards: int = 1
    train_seed: int | None = None


@dataclass
class Case:
    """What a standalone repro needs (DESIGN.md)."""

    tuner: str
    clause: str
    configs: dict[str, dict]  # adapter name → canonical config dict
    model_code: str  # Python that binds `model` (the base model) and `x` (the input)
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)
    seed: int = 0
    # the driver calls made, in order (a `str` is rendered as a comment); when there are none, the snippet adapts
    # `model` with `configs`
    calls: list[Call | str] = field(default_factory=list)
    expected: str | None = None
    observed: str | None = None
    formula: str | None = None
    discrepancy: Discrepancy | None = None  # for the snippet's final check
    error: str | None = None  # the exception type the failing example raised (an `error` row)


REPRODUCED = "REPRODUCED:"  # the line a repro prints when it shows the failure (`conformance.check` looks for it)
NOT_REPRODUCED = "NOT REPRODUCED: the snippet does not show the failure the suite saw"
# calls that change no state: a repro leaves them out
READ_ONLY = frozenset(
    {"version", "capabilities", "config_to_dict", "adapted_modules", "layer_state", "get_params", "get_grads",
     "get_requires_grad", "saved_module", "repro"}
)  # fmt: skip
