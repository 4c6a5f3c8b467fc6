"""Known deviations (`tunerspec check --expectations FILE`): a TOML list of the rows a project expects to fail, so
that its CI stays green on them and turns red on anything new.

```toml
[[expected]]
tuner = "ia3"
clause = "CORE-CFG-5"
reason = "tinyia3 does not validate target_modules types (issue #12)"
# optional, to narrow it down: variant, layer_kind, dtype
```

A `fail` or `error` row an entry matches becomes `xfail` (its detail starts with the reason); a row an entry
matches that passes becomes `xpass` — the entry is stale — and a warning names the entry. Never applied unless
given, and never used for committed reports (DESIGN).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .drivers.base import TUNERS
from .report import Row
from .spec.clauses import clauses

SHOULD_SUFFIX = ".should"
NARROWING = ("variant", "layer_kind", "dtype")


@dataclass(frozen=True)
class Expectation:
    """One known deviation: the rows of `clause` for `tuner` (narrowed by the optional axes) fail, for `reason`."""

    tuner: str
    clause: str
    reason: str
    variant: str | None = None
    layer_kind: str | None = None
    dtype: str | None = None

    def matches(self, row: Row) -> bool:
        return (row.tuner, row.clause) == (self.tuner, self.clause) and all(
            getattr(self, axis) in (None, getattr(row, axis)) for axis in NARROWING
        )

    def __str__(self) -> str:
        narrowed = "".join(f", {axis}={getattr(self, axis)}" for axis in NARROWING if getattr(self, axis))
        return f"{self.tuner} {self.clause}{narrowed}"


def load_expectations(path: str | os.PathLike[str]) -> list[Expectation]:
    """The `[[expected]]` entries of a TOML file; ValueError naming the entry for an unknown key, tuner or clause,
    or a missing reason."""
    path = Path(path)
    with path.open("rb") as fh:
        document = tomllib.load(fh)
    unknown_tables = sorted(set(document) - {"expected"})
    if unknown_tables:
        raise ValueError(f"{path}: unknown top-level keys {unknown_tables} (entries go in [[expected]] tables)")
    names = {f.name for f in fields(Expectation)}
    known_clauses = clauses()
    out = []
    for number, entry in enumerate(document.get("expected", []), start=1):
        where = f"{path}: [[expected]] entry {number}"
        extra = sorted(set(entry) - names)
        if extra:
            raise ValueError(f"{where}: unknown keys {extra} (known: {sorted(names)})")
        if not str(entry.get("reason", "")).strip():
            raise ValueError(f"{where}: a reason is required")
        if entry.get("tuner") not in TUNERS:
            raise ValueError(f"{where}: tuner {entry.get('tuner')!r} is not one of {list(TUNERS)}")
        if str(entry.get("clause", "")).removesuffix(SHOULD_SUFFIX) not in known_clauses:
            raise ValueError(f"{where}: clause {entry.get('clause')!r} is not a clause ID of SPEC.md")
        out.append(Expectation(**entry))
    return out


def apply_expectations(rows: list[Row], expectations: list[Expectation]) -> list[str]:
    """Mark the matched rows in place (`fail`/`error` → `xfail`, `pass` → `xpass`) and return one warning per stale
    entry (it matched a passing row) or unused entry (it matched no row of this run)."""
    warnings = []
    for expectation in expectations:
        matched = [i for i, row in enumerate(rows) if expectation.matches(row)]
        if not matched:
            warnings.append(f"expectation {expectation} matches no row of this run ({expectation.reason})")
        for i in matched:
            row = rows[i]
            if row.status in ("fail", "error"):
                rows[i] = replace(row, status="xfail", detail=f"expected: {expectation.reason} — {row.detail}")
            elif row.status == "pass":
                rows[i] = replace(row, status="xpass", detail=f"expected to fail ({expectation.reason}), but passed")
                warnings.append(f"stale expectation {expectation}: the row passes now ({expectation.reason})")
    return warnings
