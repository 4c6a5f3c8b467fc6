"""Clause → contract family (DESIGN.md "Families"): every clause of SPEC.md maps to exactly one.

The map is written per clause-ID stem (the ID without its prefix, e.g. `FWD-1`), first for the shared
CORE clauses, then per tuner; a tuner's record may override single clauses.
"""

from __future__ import annotations

FAMILIES = (
    "structure", "init", "forward", "grad", "merge", "unmerge", "safe_merge", "disable", "multi", "dropout",
    "dtype", "device", "config", "matching", "lifecycle", "files", "interchange",
)  # fmt: skip

# Families belong to surfaces (DESIGN.md "Surfaces").
SURFACE_OF_FAMILY = {
    "lifecycle": "lifecycle",
    "disable": "lifecycle",
    "multi": "lifecycle",
    "files": "files",
    "interchange": "files",
    "config": "config",
    "matching": "matching",
}


def surface(family: str) -> str:
    return SURFACE_OF_FAMILY.get(family, "layers")


def _expand(table: dict[str, str]) -> dict[str, str]:
    """{"FWD-1..4": "forward"} → {"FWD-1": …, …, "FWD-4": …}; "X-1,3" lists numbers."""
    out = {}
    for stems, family in table.items():
        for stem in stems.split(" "):
            head, _, numbers = stem.rpartition("-")
            if ".." in numbers:
                lo, hi = map(int, numbers.split(".."))
                out.update({f"{head}-{n}": family for n in range(lo, hi + 1)})
            else:
                out.update({f"{head}-{n}": family for n in numbers.split(",")})
    return out


CORE = _expand(
    {
        "CFG-1..9": "config",
        "MATCH-1..11 DEF-1,2": "matching",
        "INJ-1..3": "structure",
        "INIT-1": "init",
        "FWD-1..7": "forward",
        "FWD-8": "dtype",
        "FWD-9": "merge",
        "LIFE-1..5 LIFE-8..11 MTS-1,2 TRAIN-1..6 BIAS-1..3": "lifecycle",
        "LIFE-6,7 BIAS-4": "disable",
        "MERGE-1..4 MERGE-10..12 MERGE-14": "merge",
        "MERGE-5,6": "unmerge",
        "MERGE-7..9": "safe_merge",
        "MERGE-13": "lifecycle",
        "DTYPE-1..4": "dtype",
        "DTYPE-5": "device",
        "GRAD-1,2": "grad",
        "DROP-1,2": "dropout",
        "SAVE-1..9": "files",
        "SAVE-10": "interchange",
    }
)

TUNER = {
    "BONE": _expand(
        {
            "CFG-1..5": "config",
            "LAYER-1..3 PARAM-1,2 COUNT-1": "structure",
            "INIT-1,2 ID-1": "init",
            "FWD-1..3 BAT-1": "forward",
            "BAT-2 MERGE-1": "merge",
            "BAT-3,4": "unmerge",
            "BAT-5": "grad",
            "DTYPE-1": "dtype",
            "MULTI-1,2": "multi",
            "SAVE-1": "files",
        }
    ),
    "MISS": _expand(
        {
            "CFG-1..3": "config",
            "MATH-1 MINI-2,3": "forward",
            "MINI-1 COUNT-1": "structure",
            "DROP-1": "dropout",
            "SAVE-1": "files",
            "CONV-1..3": "interchange",
        }
    ),
    "GRALORA": _expand(
        {
            "CFG-1..5": "config",
            "LAYER-1,2 PARAM-1,2 COUNT-1": "structure",
            "INIT-1..3 ID-1": "init",
            "FWD-1..4": "forward",
            "DROP-1": "dropout",
            "MERGE-1": "merge",
            "MULTI-1": "multi",
            "DTYPE-1": "dtype",
            "SAVE-1": "files",
        }
    ),
    "HRA": _expand(
        {
            "CFG-1..3": "config",
            "LAYER-1..3 PARAM-1 COUNT-1": "structure",
            "INIT-1..3 GS-5 ID-1,2": "init",
            "R-1..3 GS-1..4 FWD-1..3": "forward",
            "MULTI-1": "multi",
            "MERGE-1": "merge",
            "MERGE-2": "unmerge",
            "DTYPE-1": "dtype",
            "SAVE-1": "files",
        }
    ),
    "IA3": _expand(
        {
            "CFG-1..4": "config",
            "LAYER-1..3 PARAM-1 COUNT-1": "structure",
            "INIT-1,2 ID-1": "init",
            "FWD-1..3": "forward",
            "MULTI-1 WADD-1": "multi",
            "DTYPE-1": "dtype",
            "MERGE-1": "merge",
            "MERGE-2..5": "unmerge",
            "MERGE-6": "safe_merge",
            "SAVE-1": "files",
        }
    ),
    "LOHA": _expand(
        {
            "CFG-1..4": "config",
            "LAYER-1,2 PARAM-1,2 COUNT-1": "structure",
            "INIT-1..3 ID-1": "init",
            "DELTA-1,2 FWD-1 SCALE-1": "forward",
            "GRAD-1": "grad",
            "DROP-1..3": "dropout",
            "MERGE-1": "merge",
            "MULTI-1": "multi",
            "DTYPE-1": "dtype",
            "SAVE-1": "files",
        }
    ),
}


def family_of(clause_id: str) -> str:
    """The contract family of a clause ID (KeyError for an ID no table names)."""
    prefix, _, stem = clause_id.partition("-")
    table = CORE if prefix == "CORE" else TUNER[prefix]
    return table[stem]
