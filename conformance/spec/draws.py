"""Small strategy helpers the tuner records share."""

from __future__ import annotations

from hypothesis import strategies as st

from .layer import Layer


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def common_divisors(a: int, b: int) -> list[int]:
    return [d for d in divisors(a) if b % d == 0]


def identity_init(init: str | None) -> bool:
    """The init axis of a row: "identity" → the identity-at-init option, "random" → the random one."""
    return init != "random"


def small_floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Floats on a coarse grid, exact in float32 (keeps scalings like alpha/r free of float32 rounding)."""
    return st.integers(int(lo * 4), int(hi * 4)).map(lambda n: n / 4)


def fan_in(layer: Layer) -> int:
    return layer.fan_in
