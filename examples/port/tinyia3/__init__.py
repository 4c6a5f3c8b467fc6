"""tinyia3: (IA)³ written from SPEC.md §5 alone, as a materialised effective weight per forward.

Each adapted module becomes a `ScaledLayer` that keeps the original module and computes
`op(x; W′, b′)` with `W′ = diag(l_out) W diag(l_in)`, `b′ = l_out ⊙ b` (IA3-FWD-3), by calling the
original module functionally with those tensors. The API is a handful of functions, not PEFT's classes.
"""

from .api import IA3Config, adapt, merge, merge_and_unload, scaled_layers, unmerge
from .layer import ScaledLayer

__version__ = "0.1.0"
__all__ = ["IA3Config", "ScaledLayer", "__version__", "adapt", "merge", "merge_and_unload", "scaled_layers", "unmerge"]
