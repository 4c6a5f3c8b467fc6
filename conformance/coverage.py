"""What the contract tests draw, recorded while `recording()` is active (DESIGN "Practices": a meta-test shows
that the ci profile draws every layer kind, conv hyper-parameter, input rank, dtype and variant)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .spec.layer import Layer

_seen: set[str] | None = None


@contextmanager
def recording() -> Iterator[set[str]]:
    """Collect the features of every layer, config and input the harness draws inside the block."""
    global _seen
    previous, _seen = _seen, set()
    try:
        yield _seen
    finally:
        _seen = previous


def note_layer(layer: Layer, config: dict, variant: str | None, dtype: str | None) -> None:
    if _seen is None:
        return
    features = {f"kind={layer.kind}", f"variant={variant}", f"dtype={dtype}"}
    if "r" in config:
        features.add("rank=1" if config["r"] == 1 else "rank>1")
    if layer.is_conv:
        features |= {
            f"{layer.kind}:padding_mode={layer.padding_mode}",
            f"{layer.kind}:padding=" + (layer.padding if isinstance(layer.padding, str) else "explicit"),
            f"{layer.kind}:kernel=" + ("1" if max(layer.kernel_size) == 1 else ">1"),
        }
        features |= {f"{layer.kind}:{name}>1" for name in ("stride", "dilation") if max(getattr(layer, name)) > 1}
        if layer.groups > 1:
            features.add(f"{layer.kind}:groups>1")
    _seen.update(features)


def note_input(shape: tuple[int, ...], layer: Layer) -> None:
    if _seen is None:
        return
    if layer.is_conv:
        batched = len(shape) == len(layer.kernel_size) + 2
        _seen.add(f"{layer.kind}:input=" + ("unbatched" if not batched else "batch0" if shape[0] == 0 else "batched"))
    else:
        _seen.add(f"linear_input_rank={len(shape)}")
        if 0 in shape[:-1]:
            _seen.add("linear_input=empty")
