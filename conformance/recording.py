"""Call recording: the driver the contract tests receive is a `RecordingDriver`, a pure pass-through proxy that
logs every protocol call of the current hypothesis example, so that a failure's repro can replay them.

The proxy never catches, converts or alters anything (DESIGN "Driver protocol"): each call goes to the wrapped
driver with the arguments as given, and its result or exception comes back unchanged. What it keeps is a copy:
tensors by value (cloned before the call, so that later in-place changes do not rewrite history), every other
object by reference (models and configs are named by identity when the repro is rendered), and for the calls that
take a base model (`adapt`, `load`) copies of that base's tensors as they were when it was passed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hypothesis.control import current_build_context, currently_in_test_context
from torch import nn

from .drivers.base import Driver, tensor_code
from .drivers.snippet import source_lines
from .spec.layer import Layer
from .strategies import build_base

# The protocol's operations (attributes such as `name`, and helpers such as `_layers`, pass through unrecorded).
PROTOCOL_METHODS = frozenset(n for n, v in vars(Driver).items() if inspect.isfunction(v) and not n.startswith("_"))
# The calls whose argument of this name is a base model the snippet has to build.
BASE_ARGUMENTS = {"adapt": "model", "load": "base_model"}
# The calls that read the directory given as `directory`: its files are copied as they are when the call begins.
READS_DIRECTORY = frozenset({"load", "load_adapter"})
FILES_LIMIT = 1 << 18  # bytes of a directory a recording copies (more: none copied)


@dataclass
class CallRecord:
    """One protocol call: `arguments` bound to the protocol's parameter names (defaults applied), tensors cloned.
    `returned` is False while the call runs and stays False if it raised; `base_state` holds copies of the tensors
    of the base model passed to `adapt` / `load` (its `state_dict()` before the call); `torch_seed` is s when torch's
    CPU generator was in the state `torch.manual_seed(s)` leaves when the call began (None otherwise); `files` the
    files of the directory a `load` / `load_adapter` reads (relative path → bytes), as they were then."""

    method: str
    arguments: dict[str, Any]
    result: Any = None
    returned: bool = False
    base_state: dict[str, torch.Tensor] | None = None
    torch_seed: int | None = None
    files: dict[str, bytes] | None = None


class RecordingDriver:
    """A transparent proxy: attribute access, `isinstance` and every call behave as the wrapped driver's; protocol
    calls are also appended to `calls`. The log restarts at the first call of each hypothesis example (its build
    context differs from the previous call's) and at `restart()`."""

    def __init__(self, wrapped: Driver) -> None:
        object.__setattr__(self, "wrapped", wrapped)
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "_example", None)

    wrapped: Driver
    calls: list[CallRecord]

    def __getattr__(self, name: str) -> Any:
        if name in ("wrapped", "calls", "_example"):  # not yet set (copy / pickle probing a half-built instance)
            raise AttributeError(name)
        value = getattr(self.wrapped, name)
        if name in PROTOCOL_METHODS and callable(value):
            return self._recorded(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.wrapped, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self.wrapped, name)

    @property  # isinstance(proxy, X) answers for the wrapped driver (`type(proxy)` stays RecordingDriver)
    def __class__(self) -> type:  # type: ignore[override]
        return type(self.wrapped)

    def __dir__(self) -> list[str]:
        return dir(self.wrapped)

    def __repr__(self) -> str:
        return f"RecordingDriver({self.wrapped!r})"

    def restart(self) -> None:
        """Forget the calls so far: a new example begins."""
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "_example", _current_example())

    def _recorded(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if _current_example() is not self._example:  # the first call of another example (a nested @given too)
                self.restart()
            try:
                record = CallRecord(name, _bind(name, args, kwargs), base_state=_base_state(name, args, kwargs))
            except Exception:  # what cannot be copied is not recorded; the call itself goes ahead untouched
                record = CallRecord(name, {})
            record.torch_seed = fresh_torch_seed()
            if name in READS_DIRECTORY:
                record.files = directory_files(record.arguments.get("directory"))
            self.calls.append(record)
            _MADE[0] += 1
            result = method(*args, **kwargs)  # no try: an exception propagates untouched (record.returned stays False)
            record.result, record.returned = result, True
            return result

        call.__name__ = call.__qualname__ = name
        call.__doc__ = method.__doc__
        call.__wrapped__ = method  # type: ignore[attr-defined]
        return call


_MADE = [0]  # protocol calls recorded in this process, by every recorder


def calls_made() -> int:
    """How many protocol calls recorders have logged in this process: read before and after an operation, it says
    whether the operation went through the driver (its last driver call is then the log's last)."""
    return _MADE[0]


def fresh_torch_seed() -> int | None:
    """The seed s when torch's CPU generator is exactly as `torch.manual_seed(s)` left it (no number drawn since)."""
    generator = torch.default_generator
    seed = generator.initial_seed()
    fresh = torch.Generator().manual_seed(seed)
    return seed if torch.equal(generator.get_state(), fresh.get_state()) else None


def directory_files(directory: Any) -> dict[str, bytes] | None:
    """The files under `directory` by relative path, with their bytes; None where it is no directory or too large."""
    if directory is None or not Path(directory).is_dir():
        return None
    paths = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    if sum(p.stat().st_size for p in paths) > FILES_LIMIT:
        return None
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in paths}


def _current_example() -> object | None:
    """Hypothesis's build context of the example running now (one per example, replays included), or None."""
    return current_build_context() if currently_in_test_context() else None


def unwrap(driver: Any) -> Any:
    """The driver behind a `RecordingDriver` (any other driver as it is)."""
    return driver.wrapped if type(driver) is RecordingDriver else driver


def _bind(name: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments by the protocol's parameter names, defaults applied, tensors cloned; the raw positional
    and keyword arguments where they do not bind (a driver extending a signature)."""
    try:
        bound = _signature(name).bind(None, *args, **kwargs)
    except TypeError:
        return {"*args": _kept(args), "**kwargs": _kept(kwargs)}
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("self", None)
    return {k: _kept(v) for k, v in arguments.items()}


@functools.cache
def _signature(name: str) -> inspect.Signature:
    return inspect.signature(getattr(Driver, name))


def _kept(value: Any) -> Any:
    """Tensors by value (a detached clone), containers rebuilt around kept items, anything else by reference."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _kept(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_kept(v) for v in value) if type(value) in (list, tuple) else value
    return value


def _base_state(name: str, args: tuple, kwargs: dict) -> dict[str, torch.Tensor] | None:
    """Copies of the tensors of the base model an `adapt` / `load` call receives, as they are before the call."""
    argument = BASE_ARGUMENTS.get(name)
    if argument is None:
        return None
    model = kwargs.get(argument, args[0] if args else None)
    if not isinstance(model, nn.Module):
        return None
    return {key: value.detach().clone() for key, value in model.state_dict().items() if isinstance(value, torch.Tensor)}


# ---- base models as source (torch and transformers only), for the repros ----------------------------------------


LITERAL_LIMIT = 4096  # tensor elements a repro may write out literally (more: no repro, rather than a huge one)


def module_code(var: str, module: nn.Module, state: dict[str, torch.Tensor], seeds: Iterable[int] = ()) -> str | None:
    """Source binding `var` to a `Holder`, a `Twin`, a `Both`, a `Rig` or a `Bundle` of Linear / Conv1d-3d /
    transformers Conv1D layers with the tensors `state` (the model's `state_dict()` as it was passed): each layer
    built as `strategies.build_base` does where one of `seeds` gives exactly those tensors, else written out.
    `module` is the live model, whose tuner layers are looked through (`base_layer`) for the geometry. None for any
    other model, or too many literals."""
    from .harness import Bundle, Holder, Rig
    from .scenes import Both, Twin

    if type(module) is Holder:
        leaves, classes = {"layer": module.layer}, source_lines(Holder)
        wrapper = f"{var} = Holder({var}_layer)"
    elif type(module) in (Twin, Both) and type(module.inner) is Holder:
        leaves, classes = {"layer": module.layer, "inner.layer": module.inner.layer}, source_lines(Holder, type(module))
        wrapper = f"{var} = {type(module).__name__}({var}_layer, {var}_inner_layer)"
    elif type(module) is Rig and (module.inner is None or type(module.inner) is Holder):
        inner = None if module.inner is None else module.inner.layer
        parts = {"layer": module.layer, "inner.layer": inner, "head": module.head}
        leaves, classes = {key: leaf for key, leaf in parts.items() if leaf is not None}, source_lines(Holder, Rig)
        arguments = (_leaf_var(var, key) if key in leaves else "None" for key in parts)
        wrapper = f"{var} = Rig({', '.join(arguments)})"
    elif type(module) is Bundle:
        leaves, classes = {key: module.get_submodule(key) for key in module.leaf_keys}, source_lines(Bundle)
        wrapper = f"{var} = Bundle({{{', '.join(f'{key!r}: {_leaf_var(var, key)}' for key in leaves)}}})"
    else:
        return None
    lines = ["import torch, transformers", "from torch import nn", *classes]
    literal = 0
    for prefix, leaf in leaves.items():
        name = _leaf_var(var, prefix)
        while hasattr(leaf, "base_layer") or hasattr(leaf, "original_module"):  # wrapped since: the base holds it
            leaf = getattr(leaf, "base_layer", None) or leaf.original_module
        geometry = _geometry(leaf)
        tensors = {n: state.get(f"{prefix}.{n}") for n, _ in leaf.named_parameters()}
        if geometry is None or any(t is None for t in tensors.values()):
            return None
        layer, constructor = geometry
        dtype = next(iter(tensors.values())).dtype
        seed = None if layer is None else next((s for s in seeds if _built_from(layer, dtype, s, tensors)), None)
        lines.append(f"{name} = {constructor}")
        if seed is not None:  # exactly as strategies.build_base(layer, dtype, seed)
            lines += [
                f"generator = torch.Generator().manual_seed({seed})",
                "with torch.no_grad():",
                f"    for p in {name}.parameters():",
                "        p.copy_(torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1)",
                f"{name} = {name}.to({dtype})",
            ]
            continue
        literal += sum(t.numel() for t in tensors.values())
        if literal > LITERAL_LIMIT:
            return None
        lines += [f"{name} = {name}.to({dtype})", "with torch.no_grad():"]
        lines += [f"    {name}.{n}.copy_({tensor_code(t)})" for n, t in tensors.items()]
    lines.append(wrapper)
    return "\n".join(lines)


def _leaf_var(var: str, key: str) -> str:
    return f"{var}_{key.replace('.', '_')}"


def _geometry(leaf: nn.Module) -> tuple[Layer | None, str] | None:
    """The `Layer` a base module is, and the source that constructs it (float32, as `build_base` does); an Embedding
    (no `Layer`: the unsupported kind CORE-INJ-2 offers) has only its source."""
    from transformers.pytorch_utils import Conv1D

    if type(leaf) is nn.Embedding:
        return None, f"nn.Embedding({leaf.num_embeddings}, {leaf.embedding_dim})"

    if type(leaf) is nn.Linear:
        layer = Layer("linear", leaf.in_features, leaf.out_features)
        return layer, f"nn.Linear({leaf.in_features}, {leaf.out_features}, bias={leaf.bias is not None})"
    if type(leaf) is Conv1D:
        n_in = leaf.weight.shape[0]
        return Layer("hf_conv1d", n_in, leaf.nf), f"transformers.pytorch_utils.Conv1D({leaf.nf}, {n_in})"
    if type(leaf) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        kind = type(leaf).__name__.lower()
        padding = leaf.padding if isinstance(leaf.padding, str) else tuple(leaf.padding)
        layer = Layer(
            kind, leaf.in_channels, leaf.out_channels, tuple(leaf.kernel_size), tuple(leaf.stride), padding,
            tuple(leaf.dilation), leaf.groups, leaf.padding_mode,
        )  # fmt: skip
        return layer, (
            f"nn.{type(leaf).__name__}({leaf.in_channels}, {leaf.out_channels}, {tuple(leaf.kernel_size)}, "
            f"stride={tuple(leaf.stride)}, padding={padding!r}, dilation={tuple(leaf.dilation)}, groups={leaf.groups}, "
            f"padding_mode={leaf.padding_mode!r}, bias={leaf.bias is not None})"
        )
    return None


def _built_from(layer: Layer, dtype: torch.dtype, seed: int, tensors: dict[str, torch.Tensor]) -> bool:
    """`build_base(layer, dtype, seed)` has exactly these tensors."""
    try:
        built = dict(build_base(layer, str(dtype).removeprefix("torch."), seed).named_parameters())
    except Exception:  # a geometry or dtype build_base does not make
        return False
    return built.keys() == tensors.keys() and all(
        built[n].dtype == t.dtype and torch.equal(built[n].detach(), t) for n, t in tensors.items()
    )


def input_code(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> str:
    """Source binding `x` as the contracts draw it (`strategies.random_tensor(shape, dtype, seed)`)."""
    return "\n".join(
        [
            f"generator = torch.Generator().manual_seed({seed})",
            f"x = torch.rand({tuple(shape)}, generator=generator, dtype=torch.float64) * 2 - 1",
            f"x = x.to({dtype})",
        ]
    )
