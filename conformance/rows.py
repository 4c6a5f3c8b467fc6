"""Result rows: a contract test is parametrized with one `RowSpec` per report row it produces
(DESIGN.md: one row per tuner, clause, scope, variant, init, layer kind, dtype and peer).

Rows an implementation cannot run are decided here, before any test runs: an unclaimed tuner, a surface
not offered or an optional capability not declared → `skip`; a MUST layer kind, variant or dtype the
driver does not support → `fail` ("unsupported, required by …").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from .drivers.base import TUNERS, Capabilities
from .spec.families import family_of, surface
from .spec.record import TunerRecord

AXES = ("variant", "init", "layer_kind", "dtype")
SHOULD = ".should"  # the suffix of a clause's SHOULD-part row (DESIGN "Statuses": a violation is `warn`)

# A tuner an implementation may ship only under another name (DESIGN: peft has MiSS, not Bone): where it is not
# native its rows are the stand-in's, and the conversion clauses (MISS-CONV-*, rows of the stand-in) judge it.
STAND_IN = {"bone": "miss"}

# Optional clauses that are a capability of their own (the optional layer kinds are decided per row instead).
CLAUSE_CAPABILITIES = {
    "MISS-CONV-2": "miss.to_bone",
    "IA3-WADD-1": "ia3.weighted_adapter",
    "LOHA-SCALE-1": "loha.scale_layer",
}
# Clauses whose operation SPEC requires but a driver may have no call for: declared in the driver's capability ids
# (`TunerCapabilities.optional`) when it has one; otherwise the rows fail "unsupported".
CLAUSE_OPERATIONS = {"MISS-CONV-1": "miss.from_bone"}


@dataclass(frozen=True)
class RowSpec:
    tuner: str
    clause: str
    family: str
    scope: str = "layer"
    variant: str | None = None
    init: str | None = None
    layer_kind: str | None = None
    dtype: str | None = None
    peer: str | None = None
    skip: str | None = None  # decided before running: the reason
    unsupported: str | None = None  # decided before running: a MUST capability the driver lacks

    @property
    def id(self) -> str:
        fields = (self.tuner, self.clause, self.scope, self.variant, self.init, self.layer_kind, self.dtype, self.peer)
        return "-".join(str(f) for f in fields if f is not None)


def expand(
    clause: str,
    axes: Iterable[str] = (),
    *,
    records: dict[str, TunerRecord],
    capabilities: Capabilities,
    tuners: Iterable[str] = TUNERS,
    dtypes: Iterable[str] = ("float64", "float32", "bfloat16", "float16"),
    inits: Iterable[str] = ("random",),
    scope: str = "layer",
    kinds: Iterable[str] | None = None,
    variants: Iterable[str] | None = None,
    peer: str | None = None,
) -> Iterator[RowSpec]:
    """The rows of `clause` (a CORE clause on every tuner, a tuner clause on the tuners whose record
    checks its prefix) over the requested axes, optionally restricted to some layer kinds / variants.
    `clause` may carry the suffix `.should` (the row of its SHOULD part). `peer` names the other side of
    interchange rows (another implementation, or `"golden"` for the judge's own checkpoint directories)."""
    axes = tuple(axes)
    kinds = None if kinds is None else frozenset(kinds)
    variants = None if variants is None else frozenset(variants)
    base_clause = clause.removesuffix(SHOULD)
    family = family_of(base_clause)
    prefix = clause.split("-", 1)[0]
    capability = CLAUSE_CAPABILITIES.get(base_clause)
    for tuner in tuners:
        record = records[tuner]
        if prefix != "CORE" and prefix not in record.clause_prefixes:
            continue
        base = RowSpec(tuner, clause, family, scope, peer=peer)
        claims = capabilities.tuners.get(tuner)
        skip = _skipped_tuner(tuner, claims, family, capability)
        operation = CLAUSE_OPERATIONS.get(base_clause)
        for row in _over_axes(base, axes, record, dtypes, inits):
            if (kinds is None or row.layer_kind in kinds) and (variants is None or row.variant in variants):
                if skip:
                    yield replace(row, skip=skip)
                elif operation is not None and operation not in claims.optional:
                    yield replace(row, unsupported=f"operation {operation}")
                else:
                    yield _decide(row, record, claims)


def _skipped_tuner(tuner: str, claims, family: str, capability: str | None) -> str | None:
    """Why every row of a clause is skipped for `tuner` (the rows keep their axes: a row's key is the same in
    every implementation's report), or None."""
    if claims is None:
        return f"tuner {tuner} not claimed by the implementation"
    if not claims.native:
        return f"not native: same code path as {STAND_IN.get(tuner, 'another tuner')}"
    if surface(family) not in claims.surfaces:
        return f"surface not offered: {surface(family)}"
    if capability is not None and capability not in claims.optional:
        return f"optional capability not declared: {capability}"
    return None


def _over_axes(base: RowSpec, axes: tuple[str, ...], record: TunerRecord, dtypes, inits) -> Iterator[RowSpec]:
    variants = [v.name for v in record.variants] if "variant" in axes else [None]
    kinds = sorted(record.kinds) if "layer_kind" in axes else [None]
    for variant in variants:
        for kind in kinds:
            if variant is not None and kind is not None and not record.variant(variant).applies_to(kind):
                continue
            for init in inits if "init" in axes else [None]:
                for dtype in dtypes if "dtype" in axes else [None]:
                    yield replace(base, variant=variant, init=init, layer_kind=kind, dtype=dtype)


def _decide(row: RowSpec, record: TunerRecord, claims) -> RowSpec:
    if row.layer_kind in record.optional_kinds:
        capability = record.optional_kinds[row.layer_kind]
        if capability not in claims.optional:
            return replace(row, skip=f"optional capability not declared: {capability}")
    elif row.layer_kind is not None and row.layer_kind not in claims.layer_kinds:
        return replace(row, unsupported=f"layer kind {row.layer_kind}")
    if row.variant is not None and row.variant not in claims.variants:
        return replace(row, unsupported=f"variant {row.variant}")
    if row.dtype is not None and row.dtype not in claims.dtypes:
        return replace(row, unsupported=f"dtype {row.dtype}")
    if row.init == "random" and claims.config_fields is not None and record.init_field not in claims.config_fields:
        return replace(row, unsupported=f"config field {record.init_field} (random initialisation)")
    return row
