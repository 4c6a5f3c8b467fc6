"""Bone ↔ MiSS conversion mutants (SPEC §2.9 MISS-CONV-1…3): `convert_checkpoint` with one slip, or a loader without a
Bone tuner that rejects a BONE checkpoint without naming the conversion."""

from __future__ import annotations

import os
import warnings

import reference_tuners
from reference_tuners import convert
from reference_tuners.core import config, registry

from ..drivers.base import Capabilities
from .base import MutantDriver

_reference_convert = reference_tuners.convert_checkpoint


class BoneToMissKeysNotRenamed(MutantDriver):
    """Bone → MiSS keeps the `.bone_block` tensor keys: the MiSS entry of the block-name table reads "bone_block"."""

    patches = ((convert, "_BLOCK", {"BONE": "bone_block", "MISS": "bone_block"}),)


def _convert_silently(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, to: str = "MISS") -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _reference_convert(src_dir, dst_dir, to)


class MissToBoneDropoutDroppedSilently(MutantDriver):
    """MiSS → Bone drops a training-time miss_dropout > 0 without the warning that it is lost."""

    patches = ((reference_tuners, "convert_checkpoint", _convert_silently),)


class BoneCheckpointUnknownType(MutantDriver):
    """Without a Bone tuner, a BONE checkpoint is rejected as an unknown peft_type, the conversion to MiSS unnamed."""

    patches = (
        (config, "_CONFIG_CLASSES", {t: c for t, c in config._CONFIG_CLASSES.items() if t != "BONE"}),
        (registry, "_TUNERS", {t: c for t, c in registry._TUNERS.items() if t != "BONE"}),
    )

    def capabilities(self) -> Capabilities:
        """The reference's claims less the Bone tuner (MISS-CONV-3 judges an implementation without one)."""
        claims = super().capabilities()
        return Capabilities(tuners={t: c for t, c in claims.tuners.items() if t != "bone"})
