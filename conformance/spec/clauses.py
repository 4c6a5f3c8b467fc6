"""The clause index, read from the package's copy of SPEC.md (§0.2, §9).

Each clause has an ID, the tuner label of the §9 index, its short name, its tolerance class (⟨S⟩, ⟨Z⟩,
⟨N⟩, ⟨A⟩, ⟨P⟩, ⟨G⟩), whether it is *(optional)* and whether it has a SHOULD part.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SPEC_PATH = Path(__file__).resolve().parents[1] / "SPEC.md"

_BODY = re.compile(r"^- \*\*(?P<id>[A-Z0-9]+(?:-[A-Z0-9]+)+)\*\* ⟨(?P<cls>[SZNAPG])⟩(?P<text>.*)$")
_INDEX_ROW = re.compile(r"^\| (?P<id>[A-Z0-9]+(?:-[A-Z0-9]+)+) \| (?P<tuner>[^|]+?) \| (?P<name>[^|]+?) \|$")


@dataclass(frozen=True)
class Clause:
    id: str
    tuner: str  # the §9 index's label: "all", "Bone/BAT", "MiSS", "GraLoRA", "HRA", "IA3", "LoHa"
    name: str
    tolerance_class: str  # one of S Z N A P G
    optional: bool
    should: bool  # has a SHOULD part → a second `.should` row
    text: str

    @property
    def prefix(self) -> str:
        """The tuner part of the ID: CORE, BONE, MISS, GRALORA, HRA, IA3, LOHA."""
        return self.id.split("-", 1)[0]


def spec_text() -> str:
    return SPEC_PATH.read_text(encoding="utf-8")


def spec_sha256() -> str:
    return hashlib.sha256(SPEC_PATH.read_bytes()).hexdigest()


@cache
def clauses() -> dict[str, Clause]:
    """Every clause of the §9 index, in index order, with the class and flags of its body bullet."""
    text = spec_text()
    head, _, index = text.partition("## 9. Clause index")
    bodies = {m["id"]: m for m in map(_BODY.match, head.splitlines()) if m}
    result = {}
    for row in filter(None, map(_INDEX_ROW.match, index.splitlines())):
        body = bodies.get(row["id"])
        if body is None:
            raise ValueError(f"SPEC.md: clause {row['id']} is in the index but has no body bullet")
        statement = body["text"].strip()
        result[row["id"]] = Clause(
            id=row["id"],
            tuner=row["tuner"],
            name=row["name"],
            tolerance_class=body["cls"],
            optional="*(optional)*" in statement,
            should="SHOULD" in statement,
            text=statement,
        )
    missing = sorted(set(bodies) - set(result))
    if missing:
        raise ValueError(f"SPEC.md: clauses without an index row: {missing}")
    return result
