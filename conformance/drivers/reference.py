"""The built-in driver for this project's `reference_tuners` (a PEFT-like API, names equal to SPEC's)."""

from __future__ import annotations

from typing import ClassVar

import reference_tuners
from reference_tuners import TunerLayer

from .base import Capabilities, PeftLikeDriver, TunerCapabilities

_LINEAR = frozenset({"linear"})


class ReferenceDriver(PeftLikeDriver):
    name = "reference"
    library = reference_tuners
    tuner_layer_class = TunerLayer
    repro_import = ("import reference_tuners as rt", "rt.")
    config_classes: ClassVar[dict[str, type]] = {
        "bone": reference_tuners.BoneConfig,
        "miss": reference_tuners.MissConfig,
        "gralora": reference_tuners.GraLoRAConfig,
        "hra": reference_tuners.HRAConfig,
        "ia3": reference_tuners.IA3Config,
        "loha": reference_tuners.LoHaConfig,
    }

    def version(self) -> str:
        return reference_tuners.__version__

    def capabilities(self) -> Capabilities:
        block = dict(layer_kinds=_LINEAR | {"hf_conv1d"})
        return Capabilities(
            tuners={
                "bone": TunerCapabilities(
                    variants=frozenset({"plain", "bat", "mixed"}),
                    optional=frozenset({"bone.hf_conv1d", "files.bin"}),
                    **block,
                ),
                "miss": TunerCapabilities(
                    variants=frozenset({"plain", "bat", "mini", "mixed"}),
                    optional=frozenset({"miss.hf_conv1d", "miss.from_bone", "miss.to_bone", "files.bin"}),
                    **block,
                ),
                "gralora": TunerCapabilities(
                    variants=frozenset({"plain", "hybrid"}),
                    layer_kinds=_LINEAR | {"hf_conv1d"},
                    optional=frozenset({"files.bin"}),
                ),
                "hra": TunerCapabilities(
                    variants=frozenset({"plain", "gs"}),
                    layer_kinds=frozenset({"linear", "conv2d"}),
                    optional=frozenset({"hra.grouped_conv2d", "files.bin"}),
                ),
                "ia3": TunerCapabilities(
                    variants=frozenset({"plain", "feedforward", "mixed"}),
                    layer_kinds=frozenset({"linear", "hf_conv1d", "conv1d", "conv2d", "conv3d"}),
                    optional=frozenset({"ia3.conv1d", "ia3.weighted_adapter", "files.bin"}),
                ),
                "loha": TunerCapabilities(
                    variants=frozenset({"plain", "effective_conv"}),
                    layer_kinds=frozenset({"linear", "hf_conv1d", "conv1d", "conv2d", "conv3d"}),
                    optional=frozenset({"loha.conv3d", "loha.hf_conv1d", "loha.scale_layer", "files.bin"}),
                ),
            }
        )

    def convert_checkpoint(self, src_dir: str, dst_dir: str, to: str) -> None:
        reference_tuners.convert_checkpoint(src_dir, dst_dir, to=to)
