"""The built-in driver for HuggingFace `peft` 0.21.x.

Names and layouts only (DESIGN "Driver protocol"): peft's config classes take SPEC's canonical fields under the
same names, its adapter parameters carry the canonical names and layouts, and every option stays at peft's
default. `miss`, `gralora`, `hra`, `ia3` and `loha` are native; `bone` is not (peft 0.21 has no Bone tuner): only
the conversion clauses are judged for it, and Bone's math rows are `skip` "same code path as miss". MISS-CONV-1's
conversion is a capability peft lacks (its rows `fail` "unsupported", with a repro that shows no Bone anywhere in
peft's public API: `absence_repro`); MISS-CONV-3 is judged on peft's own loader. The capabilities below are what
peft's code accepts (its `_create_new_module` dispatch), not what passes.
"""

from __future__ import annotations

from typing import ClassVar

import peft
from peft.tuners.tuners_utils import BaseTunerLayer

from .base import NOT_REPRODUCED, REPRODUCED, Capabilities, Case, PeftLikeDriver, TunerCapabilities


class PeftDriver(PeftLikeDriver):
    name = "peft"
    library = peft
    tuner_layer_class = BaseTunerLayer
    config_classes: ClassVar[dict[str, type]] = {
        "miss": peft.MissConfig,
        "gralora": peft.GraloraConfig,
        "hra": peft.HRAConfig,
        "ia3": peft.IA3Config,
        "loha": peft.LoHaConfig,
    }

    def version(self) -> str:
        return peft.__version__

    def absence_repro(self, case: Case) -> str | None:
        """MISS-CONV-1's Bone → MiSS conversion: peft has no Bone peft type and no public name that mentions Bone."""
        if case.discrepancy is None or case.discrepancy.what != "operation miss.from_bone":
            return None
        claim = f"{REPRODUCED} peft offers no Bone → MiSS checkpoint conversion ({case.clause}): no Bone peft type, "
        return "\n".join([
            "import peft, peft.tuners, peft.utils",
            f"# {case.clause} requires every implementation that saves and loads MiSS adapters to convert a saved Bone",
            "# adapter to MiSS; look for anything in peft's public API that knows Bone",
            "has_type = 'BONE' in peft.PeftType.__members__",
            "modules = (peft, peft.tuners, peft.utils)",
            "names = [f'{m.__name__}.{n}' for m in modules for n in dir(m) if 'bone' in n.lower()]",
            "print(f'peft {peft.__version__}: PeftType.BONE exists: {has_type}; names mentioning Bone: {names}')",
            "if not has_type and not names:",
            f"    print({claim + 'no public name mentions Bone'!r})",
            "else:",
            f"    print({NOT_REPRODUCED!r})",
        ])  # fmt: skip

    def capabilities(self) -> Capabilities:
        files = frozenset({"files.bin"})
        linear = frozenset({"linear"})
        return Capabilities(
            tuners={
                "bone": TunerCapabilities(native=False, variants=frozenset({"plain", "bat", "mixed"}),
                                          layer_kinds=linear),
                "miss": TunerCapabilities(
                    variants=frozenset({"plain", "bat", "mini", "mixed"}), layer_kinds=linear, optional=files
                ),
                "gralora": TunerCapabilities(
                    variants=frozenset({"plain", "hybrid"}), layer_kinds=frozenset({"linear", "hf_conv1d"}),
                    optional=files,
                ),
                "hra": TunerCapabilities(
                    variants=frozenset({"plain", "gs"}), layer_kinds=frozenset({"linear", "conv2d"}), optional=files
                ),
                "ia3": TunerCapabilities(
                    variants=frozenset({"plain", "feedforward", "mixed"}),
                    layer_kinds=frozenset({"linear", "hf_conv1d", "conv2d", "conv3d"}),
                    optional=files | {"ia3.weighted_adapter"},
                ),
                "loha": TunerCapabilities(
                    variants=frozenset({"plain", "effective_conv"}),
                    layer_kinds=frozenset({"linear", "conv1d", "conv2d"}),
                    optional=files | {"loha.scale_layer"},
                ),
            }
        )  # fmt: skip
