"""Rendering a repro: the state of a snippet being written (`ReproSnippet`) and its final checks, which observe again
in the library's own API what the suite saw, and print `REPRODUCED: …` only when the library shows it."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from conformance.probes import applied_weight

from .case import NOT_REPRODUCED, READ_ONLY, REPRODUCED, Call, Case, Discrepancy, Ref

if TYPE_CHECKING:
    from .base import PeftLikeDriver


class ReproSnippet:
    """The state of a repro being rendered: its lines, extra imports, which variables are bound (`model` and `x` by
    the model code), which hold adapted models, the temporary directories, and the model a forward goes through."""

    def __init__(self, driver: PeftLikeDriver, case: Case, prefix: str, *, x_bound: bool) -> None:
        self.driver, self.case, self.prefix, self.x_bound = driver, case, prefix, x_bound
        self.lines: list[str] = []
        self.imports: set[str] = set()
        self.bound: set[str] = {"model"}
        self.adapted: set[str] = set()
        self.directories: dict[str, str] = {}
        self.current = "model"

    def name(self, value: Any) -> str:
        """A model argument as a variable of the snippet (a base model is built where first used)."""
        if not isinstance(value, Ref):
            return repr(value)
        if value.var not in self.bound and value.code is not None:
            self.lines += _new_definitions(value.code, [self.case.model_code, *self.lines])
        self.bound.add(value.var)
        return value.var

    def config(self, tuner: str, value: Any) -> str:
        """A config argument: the variable a rendered call bound, else its constructor call."""
        if isinstance(value, Ref):
            if value.var in self.bound or value.value is None:
                return value.var
            self.lines.append(f"{value.var} = {self.driver.config_object_code(tuner, value.value, self.prefix)}")
            self.bound.add(value.var)
            return value.var
        return self.driver.config_object_code(tuner, value, self.prefix)

    def path(self, directory: Any) -> str:
        """A directory of the example as an expression over temporary directories of the snippet."""
        directory = str(directory)
        for known, var in self.directories.items():
            if directory == known:
                return var
            if directory.startswith(known.rstrip("/") + "/"):
                return f"os.path.join({var}, {directory[len(known.rstrip('/')) + 1 :]!r})"
        var = f"directory_{len(self.directories) + 1}"
        self.imports.add("import os, tempfile")
        self.lines.append(f"{var} = tempfile.mkdtemp()")
        self.directories[directory] = var
        return var

    def knows(self, directory: Any) -> bool:
        """Whether `directory` is (under) a directory the snippet already made."""
        text = str(directory)
        return any(text == known or text.startswith(known.rstrip("/") + "/") for known in self.directories)

    def files(self, directory: Any, files: dict[str, bytes]) -> None:
        """Write `files` (relative path → bytes) into a new temporary directory standing for `directory`: JSON as
        text, safetensors through `safetensors.torch.save_file` (tensors and metadata written out), others as bytes."""
        root = self.path(directory)
        for relative, content in files.items():
            target = f"os.path.join({root}, {relative!r})"
            if "/" in relative:
                self.lines.append(f"os.makedirs(os.path.dirname({target}), exist_ok=True)")
            if relative.endswith(".safetensors"):
                self.lines.append(_safetensors_code(content, target))
                self.imports.add("import safetensors.torch")
            elif relative.endswith(".json"):
                self.lines.append(f"open({target}, 'w').write({content.decode()!r})")
            else:
                self.lines.append(f"open({target}, 'wb').write({content!r})")

    def final_check(self, *, disabled: bool) -> None:
        """The forward on `x` (inside `disable_adapter()` when that was the last call), then what it shows next to
        what SPEC requires: the observed element next to the required one (the oracle's, or the implementation's own
        other output), the output's shape, or the exception the forward raised; `REPRODUCED: …` when they differ and
        the observation is the one the suite saw. An adapter parameter or its gradient (after the same backward) is
        read like an output element; an exact observation of the model is compared with what SPEC admits."""
        case, model, d = self.case, self.current, self.case.discrepancy
        target = d.target if d is not None else None
        if target in OBSERVED_BY and target not in self.driver.repro_reads:
            target = None
        if d is not None and d.kind == "differs" and target in OBSERVATIONS:
            self._observation_check(d)
            return
        if d is not None and target == "grad" and self.x_bound:
            self._backward(d)
        if d is not None and target == "applied":
            self._applied(d)
            self._value_check(d)
            return
        forward = self.x_bound and target in ("output", None)
        context = f"torch.no_grad(), {model}.disable_adapter()" if disabled else "torch.no_grad()"
        forward_lines = [f"with {context}:", f"    y = {model}.eval()(x)"]
        if d is not None and target == "output" and d.mode == "train":
            forward_lines = self._train_forwards(d)
        if forward and d is not None and d.kind == "raised":
            self.outcome_check(forward_lines, "the forward on x")
            return
        if forward:
            self.lines += forward_lines
        if forward and d is not None and d.kind == "shape":
            self._shape_check(d)
            return
        if forward and d is not None and d.kind == "nonfinite":
            self._finite_check(d)
            return
        if d is None or d.kind != "value" or target is None or (target == "output" and not forward):
            if forward:
                self.lines.append("print(y)")
            results = (("expected", case.expected), ("observed", case.observed))
            self.lines += [f"# {label}: {value}" for label, value in results if value is not None]
            return
        if target == "output":
            self.lines.append(f"observed = float(y[{d.where!r}])")
        elif target in ("param", "grad") and (target == "param" or self.x_bound):
            root, key, adapter = self._observed(d)
            self.lines += self.driver.param_lines(root, key, adapter, d.name, case.tuner, grad=target == "grad")
            self.lines.append(f"observed = float(tensor.detach()[{d.where!r}])")
        elif target in ("weight", "bias"):
            self.lines += self._base_lines(d.key)
            self.lines.append(f"tensor = {LOGICAL_WEIGHT if target == 'weight' else 'base.bias'}")
            self.lines.append(f"observed = float(tensor[{d.where!r}])")
        else:
            self.lines.append(f"# not rendered: {d.what} ({target})")
            return
        self._value_check(d)

    def _value_check(self, d: Discrepancy) -> None:
        """`observed` (bound by the lines before) next to the oracle's value; `REPRODUCED: …` when they differ as the
        suite saw."""
        self.imports.add("import math")
        self.lines += [
            f"expected = {float_code(d.expected)}  # what the clause requires there (float64)",
            f"allowed = {float_code(d.bound)}  # the |difference| §8's tolerance allows there",
            f"seen = {float_code(d.observed)}  # what the conformance suite observed",
            f"what = {f'{d.what} at {d.where!r}'!r}",
            "print(f'{what}: observed {observed!r}, expected {expected!r}, allowed |difference| {allowed:.3g}')",
            "differs = not abs(observed - expected) <= allowed",
            "same = observed == seen or (math.isnan(observed) and math.isnan(seen)) or "
            "abs(observed - seen) <= 0.01 * abs(seen - expected)",
            "if differs and same:",
            f"    print(f'{REPRODUCED} {{what}} = {{observed!r}}, but should be within {{allowed:.3g}} "
            "of {expected!r} (|difference| {abs(observed - expected):.3g})')",
            "else:",
            f"    print({NOT_REPRODUCED!r})",
        ]

    def _applied(self, d: Discrepancy) -> None:
        """`observed`: the element `d.where` of `d.derive` over W (the weight the current model applies at `d.key`,
        read through its forward by `applied_weight`, whose source the snippet defines) and B (the base weight)."""
        self.imports.add("import math")
        self.lines += [*source_lines(applied_weight), *self._base_lines(d.key)]
        self.lines += [
            f"W = applied_weight({self.current}.eval(), base)",
            f"B = ({LOGICAL_WEIGHT}).detach().double()",
            f"tensor = {d.derive}",
            f"observed = float(tensor[{d.where!r}])",
        ]

    def _train_forwards(self, d: Discrepancy) -> list[str]:
        """`d.forwards` train-mode forwards on `x` after seeding torch with `d.train_seed`, as the suite made them;
        `y` the last one, or all of them stacked (a "nonfinite" check)."""
        model = self.current
        return [
            f"{model}.train()",
            f"torch.manual_seed({d.train_seed})",
            "with torch.no_grad():",
            f"    outputs = [{model}(x) for _ in range({d.forwards})]",
            f"{model}.eval()",
            "y = torch.stack(outputs)" if d.kind == "nonfinite" else "y = outputs[-1]",
        ]

    def _finite_check(self, d: Discrepancy) -> None:
        """Whether `y` is finite; `REPRODUCED: …` when it is not, as the suite saw."""
        self.lines += [
            f"what = {d.what!r}",
            "finite = bool(torch.isfinite(y).all())",
            "print(f'{what}: every entry finite: {finite}')",
            "if not finite:",
            f"    print(f'{REPRODUCED} {{what}} has non-finite entries, but should be finite')",
            "else:",
            f"    print({NOT_REPRODUCED!r})",
        ]

    def _base_lines(self, key: str) -> list[str]:
        """Lines binding `base` to the live base layer under `key` of the current model."""
        return [
            f"module = {self._model_root(self.current)}.get_submodule({key!r})",
            "base = getattr(module, 'base_layer', module)",
        ]

    def _model_root(self, model: str) -> str:
        """The module tree a model's keys are relative to (inside an adapted model's wrapper)."""
        return f"{model}.base_model.model" if model in self.adapted else model

    def _observed(self, d: Discrepancy) -> tuple[str, str, str]:
        """The module tree, key and adapter the suite's observation was made on: those of the last recorded read-only
        call that makes it (`OBSERVED_BY`) on the discrepancy's key and adapter, else of the last one on any, else the
        current model and the discrepancy's key and adapter."""
        method = OBSERVED_BY.get(d.target or "")
        made = [c for c in self.case.calls if isinstance(c, Call) and c.method == method and "model" in c.arguments]
        same = [
            c
            for c in made
            if (c.arguments.get("key", d.key), c.arguments.get("adapter", d.adapter)) == (d.key, d.adapter)
        ]
        for call in (same or made)[-1:]:
            a = call.arguments
            return self._model_root(self._var(a["model"])), a.get("key", d.key), a.get("adapter", d.adapter)
        return self._model_root(self.current), d.key, d.adapter

    def _var(self, model: Any) -> str:
        return model.var if isinstance(model, Ref) else self.current

    def _backward(self, d: Discrepancy) -> None:
        """The forward on `x` in `d.mode` with gradients, and the backward of `(y * weights).sum()` (the weights drawn
        from `d.weights_seed` as `random_tensor(y.shape, "float64", seed)`)."""
        self.lines += [
            f"{self.current}.train({d.mode == 'train'})",
            f"y = {self.current}(x)",
            f"generator = torch.Generator().manual_seed({d.weights_seed})",
            "weights = torch.rand(tuple(y.shape), generator=generator, dtype=torch.float64) * 2 - 1",
            "(y * weights).sum().backward()",
        ]

    def _observation_check(self, d: Discrepancy) -> None:
        """An exact observation of the current model (`OBSERVATIONS`) next to what SPEC admits; `REPRODUCED: …` when it
        is the one the suite saw and SPEC admits none such."""
        self.lines += [
            f"observed = {self.driver.observation_code(d, *self._observed(d), self)}",
            f"seen = {d.observed!r}  # what the conformance suite observed",
            f"admissible = {tuple(d.expected)!r}  # what SPEC admits",
            f"what = {d.what!r}",
            "print(f'{what}: observed {observed!r}; SPEC admits', ' or '.join(map(repr, admissible)))",
            "if observed == seen and observed not in admissible:",
            f"    print(f'{REPRODUCED} {{what}} is {{observed!r}}, which SPEC does not admit')",
            "else:",
            f"    print({NOT_REPRODUCED!r})",
        ]

    def _shape_check(self, d: Discrepancy) -> None:
        """The output `y`'s shape next to the one SPEC requires; `REPRODUCED: …` when it differs as the suite saw."""
        self.lines += [
            f"expected = {tuple(d.expected)!r}  # the shape the clause requires",
            f"seen = {tuple(d.observed)!r}  # the shape the conformance suite observed",
            f"what = {d.what!r}",
            "observed = tuple(y.shape)",
            "print(f'shape of the {what}: observed {observed}, expected {expected}')",
            "if observed != expected and observed == seen:",
            f"    print(f'{REPRODUCED} {{what}} has shape {{observed}}, but should have shape {{expected}}')",
            "else:",
            f"    print({NOT_REPRODUCED!r})",
        ]

    def outcome_check(self, body: list[str], what: str) -> None:
        """`body` (the checked operation) run once and its outcome printed: the exception it raised, or none;
        `REPRODUCED: …` when that outcome is the one the suite saw and SPEC forbids (`Discrepancy.kind` "raised",
        "unnamed" or "silent"; an "unnamed" message must name none of the subjects, even as a substring). A body
        that is only comments (an operation not rendered) is written as it is, with no check. "unwarned": the body
        runs recording its warnings instead (`_warning_check`)."""
        d = self.case.discrepancy
        if d is None or d.kind not in OUTCOME_KINDS or all(line.lstrip().startswith("#") for line in body):
            self.lines += body
            return
        if d.kind in ("unwarned", "silent_nonfinite"):
            self._warning_check(body, what, d)
            return
        self.lines += ["try:", *indented(body), "except Exception as exc:", "    raised = exc"]
        self.lines += [
            "else:",
            "    raised = None",
            f"what = {what!r}",
            "print(what, 'returned' if raised is None else f'raised {type(raised).__name__}: {raised}')",
        ]
        if d.kind == "silent":
            shown, claim = "raised is None", f"{what} raised no exception, but should raise {d.expected}"
        elif d.kind == "raised":
            shown = f"type(raised).__name__ == {d.observed!r}"
            claim = f"{what} raised {d.observed}, but should " + (f"raise {d.expected}" if d.expected else "accept it")
        else:
            subjects = tuple(str(s).lower() for s in d.expected)
            shown = (
                f"type(raised).__name__ == {d.observed!r} and not any(s in str(raised).lower() for s in {subjects!r})"
            )
            claim = f"{what} raised {d.observed} naming none of {list(subjects)}"
        self.lines += [f"if {shown}:", f"    print({f'{REPRODUCED} {claim}'!r})"]
        self.lines += ["else:", f"    print({NOT_REPRODUCED!r})"]

    def _warning_check(self, body: list[str], what: str, d: Discrepancy) -> None:
        """`body` run recording every warning; `REPRODUCED: …` when none is of category `d.expected[0]` (or a subclass)
        naming one of the subjects `d.expected[1:]` (case-insensitively) with a message matching the regular expression
        `d.wording` (any, if empty), as the suite saw — for "silent_nonfinite", only where the base weight or bias at
        `d.key` then has a non-finite element."""
        category, *subjects = d.expected
        self.imports.update(("import warnings", "import re"))
        self.lines += [
            "with warnings.catch_warnings(record=True) as caught:",
            "    warnings.simplefilter('always')",
            *indented(body),
            "emitted = [f'{w.category.__name__}: {w.message}' for w in caught]",
            f"what = {what!r}",
            "print(what, 'warned', emitted)",
            f"subjects = {tuple(str(s).lower() for s in subjects)!r}",
            f"named = [w for w in caught if issubclass(w.category, {category}) and re.search({d.wording!r}, "
            "str(w.message), re.IGNORECASE) and (not subjects or any(s in str(w.message).lower() for s in subjects))]",
        ]
        claim = f"{what} emitted no {category} naming any of {subjects}"
        condition = "not named"
        if d.kind == "silent_nonfinite":
            self.lines += [
                *self._base_lines(d.key),
                "finite = all(bool(torch.isfinite(t).all()) for t in (base.weight, base.bias) if t is not None)",
                "print('base weight and bias finite afterwards:', finite)",
            ]
            claim = f"{what} wrote non-finite base values, and emitted no {category} naming any of {subjects}"
            condition = "not named and not finite"
        if d.wording:
            claim += f" with a message matching /{d.wording}/"
        self.lines += [
            f"if {condition}:",
            f"    print({f'{REPRODUCED} {claim}'!r})",
            "else:",
            f"    print({NOT_REPRODUCED!r})",
        ]


# the live base layer `base`'s weight in logical orientation (out, in, …), as a snippet reads it
LOGICAL_WEIGHT = "base.weight.T if isinstance(base, transformers.pytorch_utils.Conv1D) else base.weight"


def source_lines(*objects: type | Callable[..., Any]) -> list[str]:
    """The source lines of classes or functions a snippet defines: the very objects the suite uses. Blank lines are
    left out: a repro takes a definition to end at its first unindented line."""
    return [line for obj in objects for line in inspect.getsource(obj).splitlines() if line.strip()]


# on what a checked operation raised or warned
OUTCOME_KINDS = frozenset({"raised", "unnamed", "silent", "unwarned", "silent_nonfinite"})
# exact observations ("differs")
OBSERVATIONS = frozenset({"adapted", "active", "shapes", "requires_grad", "trainable", "saved"})
# the read-only driver call whose observation a discrepancy target repeats (its model, key and adapter)
OBSERVED_BY = {"adapted": "adapted_modules", "active": "layer_state", "shapes": "get_params",
               "requires_grad": "get_requires_grad", "param": "get_params", "grad": "get_grads",
               "trainable": "layer_state"}  # fmt: skip


def checked_call(case: Case, calls: list[Call]) -> Call | None:
    """The call whose outcome the case's final check is on, where the discrepancy is on a checked operation (`target`
    "call"): the last recorded call if it changes state (raised, unnamed, silent); the last state-changing call
    (unwarned, silent_nonfinite: read-only observations may follow the warning one)."""
    d = case.discrepancy
    if d is None or d.kind not in OUTCOME_KINDS or d.target != "call":
        return None
    changing = [call for call in calls if call.method not in READ_ONLY]
    if d.kind not in ("unwarned", "silent_nonfinite"):
        return calls[-1] if calls[-1].method not in READ_ONLY else None
    return changing[-1] if changing else None


def model_after(call: Call, current: str) -> str:
    """The model a later forward goes through: the one a call returned, else the one it acted on."""
    if call.result is not None and call.method in ("adapt", "load", "merge_and_unload", "unload"):
        return call.result.var
    model = call.arguments.get("model")
    return model.var if isinstance(model, Ref) else current


def _new_definitions(code: str, present: list[str]) -> list[str]:
    """The lines of `code` less its import lines and class definitions that `present` already holds (a second base
    model's source repeats the first's header)."""
    known = {line for text in present for line in text.split("\n") if line.startswith(("import ", "from ", "class "))}
    kept: list[str] = []
    skipping = False
    for line in code.split("\n"):
        if line.startswith(("import ", "from ", "class ")) or not line.startswith(" "):
            skipping = line in known
        if not skipping:
            kept.append(line)
    return kept


def _safetensors_code(content: bytes, target: str) -> str:
    """A `safetensors.torch.save_file` call writing the tensors (by name) and metadata of a safetensors file's
    `content`."""
    import safetensors.torch

    tensors = safetensors.torch.load(content)
    header = json.loads(content[8 : 8 + int.from_bytes(content[:8], "little")])
    metadata = header.get("__metadata__")
    written = "{" + ", ".join(f"{name!r}: {tensor_code(tensors[name])}" for name in sorted(tensors)) + "}"
    return f"safetensors.torch.save_file({written}, {target}, metadata={metadata!r})"


def indented(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


def arguments_repr(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v.var if isinstance(v, Ref) else v!r}" for k, v in arguments.items())


def float_code(value: float) -> str:
    """A Python literal for a float (exact: `repr` round-trips), `float('nan')` / `float('inf')` where needed."""
    value = float(value)
    if value != value:
        return "float('nan')"
    if value in (float("inf"), float("-inf")):
        return "float('inf')" if value > 0 else "-float('inf')"
    return repr(value)


def tensor_code(tensor: torch.Tensor) -> str:
    """Source for a tensor with exactly these values, dtype and shape."""
    tensor = tensor.detach().cpu()
    dtype = str(tensor.dtype)
    if tensor.numel() == 0:
        return f"torch.zeros({tuple(tensor.shape)!r}, dtype={dtype})"
    values = tensor.tolist() if not tensor.dtype.is_floating_point else tensor.double().tolist()
    return f"torch.tensor({_nested_code(values)}, dtype={dtype})"


def _nested_code(values: Any) -> str:
    if isinstance(values, list):
        return "[" + ", ".join(_nested_code(v) for v in values) + "]"
    return float_code(values) if isinstance(values, float) else repr(values)
