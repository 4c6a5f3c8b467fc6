"""Every tuner's record, by tuner id (DESIGN.md: one record per tuner)."""

from __future__ import annotations

from . import bone, gralora, hra, ia3, loha, miss
from .record import TunerRecord

RECORDS: dict[str, TunerRecord] = {m.RECORD.tuner: m.RECORD for m in (bone, miss, gralora, hra, ia3, loha)}
