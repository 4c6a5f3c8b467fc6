"""Conformance reports: the result rows, the `<name>.json` schema and its `.md` rendering (DESIGN.md
"Command line and report schema" — the JSON keys, their order and the status names are stable).

A `Report` is a header (what ran, on what, how) plus one `Row` per (tuner, clause, scope, variant, init,
layer_kind, dtype, peer) a clause was checked on. The JSON is written by the tool from a real run; the
Markdown is always a pure function of the JSON and the hand-written notes, so `tunerspec report`
(`regenerate`) reproduces every committed `.md` byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from conformance.drivers.base import DTYPES, SURFACES, TUNERS
from conformance.spec.clauses import clauses
from conformance.spec.families import FAMILIES, surface

# DESIGN.md "Vocabulary" and "Statuses", in the order reports list them.
STATUSES = ("pass", "fail", "error", "skip", "xfail", "xpass", "warn")
FINDING_STATUSES = ("fail", "error", "warn", "xpass")  # what the Markdown's findings section explains
SCOPES = ("layer", "model")
VARIANTS = ("plain", "bat", "mini", "hybrid", "gs", "effective_conv", "feedforward", "mixed")
INITS = ("identity", "random")
LAYER_KINDS = ("linear", "hf_conv1d", "conv1d", "conv2d", "conv3d")
PROFILES = ("dev", "ci", "thorough")
SHOULD_SUFFIX = ".should"  # a clause's SHOULD part is its own row: `HRA-R-3.should`
SURFACE_NOT_OFFERED = "surface not offered: "  # + surface: the exact skip detail of a surface not offered

_CLAUSE_ID = re.compile(r"^[A-Z0-9]+(?:-[A-Z0-9]+)+(?:\.should)?$")
_SLUG = re.compile(r"^[a-z0-9_-]+$")
# Clause IDs and identifiers (kept whole: HRA-FWD-2, float64, conv2d) or numbers (signed, decimal, exponent,
# hex) in a detail.
_WORD_OR_NUMBER = re.compile(
    r"[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+|[A-Za-z_][A-Za-z0-9_]*|0x[0-9a-fA-F]+|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
)


def surface_not_offered(surface_name: str) -> str:
    """The skip detail of a row whose surface the implementation does not offer."""
    return SURFACE_NOT_OFFERED + surface_name


@dataclass
class Row:
    """One check: a clause on one combination of axes, and how it came out. Axes that do not apply are None."""

    tuner: str
    clause: str  # a SPEC.md clause ID, or `<ID>.should` for its SHOULD part
    family: str
    scope: str | None
    variant: str | None
    init: str | None
    layer_kind: str | None
    dtype: str | None
    peer: str | None  # the other implementation of an interchange row
    status: str
    detail: str  # one line: the reason, or the counterexample and largest error
    repro: str | None = None
    repro_verified: bool = False

    def __post_init__(self) -> None:
        for name in ("tuner", "clause", "family", "status", "detail"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Row.{name} must be a str, got {getattr(self, name)!r}")
        for name in ("scope", "variant", "init", "layer_kind", "dtype", "peer", "repro"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise TypeError(f"Row.{name} must be a str or None, got {getattr(self, name)!r}")
        if not isinstance(self.repro_verified, bool):
            raise TypeError(f"Row.repro_verified must be a bool, got {self.repro_verified!r}")
        if self.status not in STATUSES:
            raise ValueError(f"Row.status {self.status!r} is not one of {', '.join(STATUSES)}")
        for name, allowed in (
            ("tuner", TUNERS),
            ("family", FAMILIES),
            ("scope", SCOPES),
            ("variant", VARIANTS),
            ("init", INITS),
            ("layer_kind", LAYER_KINDS),
            ("dtype", DTYPES),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"Row.{name} {value!r} is not one of {', '.join(allowed)} ({self.clause})")
        if not _CLAUSE_ID.match(self.clause):
            raise ValueError(f"Row.clause {self.clause!r} is not a clause ID (optionally with {SHOULD_SUFFIX!r})")
        should = self.clause.endswith(SHOULD_SUFFIX)
        if self.status == "warn" and not should:
            raise ValueError(f"{self.clause}: `warn` is for a SHOULD part only, on a {SHOULD_SUFFIX!r} row")
        if self.status == "fail" and should:
            raise ValueError(f"{self.clause}: a SHOULD part not met is `warn`, never `fail`")
        if "\n" in self.detail or "\r" in self.detail:
            raise ValueError(f"{self.clause}: Row.detail must be one line, got {self.detail!r}")
        if self.detail.startswith(SURFACE_NOT_OFFERED):
            named, expected = self.detail[len(SURFACE_NOT_OFFERED) :], surface(self.family)
            if self.status != "skip" or named != expected or named == "layers":
                raise ValueError(
                    f"{self.clause}: {self.detail!r} must be a skip of the family's surface {expected!r} "
                    "(and `layers` is always offered)"
                )
        if self.repro_verified and self.repro is None:
            raise ValueError(f"{self.clause}: repro_verified without a repro")

    @property
    def key(self) -> tuple[str | None, ...]:
        """What a row is one of: DESIGN allows one row per (tuner, clause, scope, variant, init, layer_kind,
        dtype, peer)."""
        return (self.tuner, self.clause, self.scope, self.variant, self.init, self.layer_kind, self.dtype, self.peer)

    @property
    def surface(self) -> str:
        return surface(self.family)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the row, keys in schema order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Row:
        """The inverse of `to_dict`; every key is required and no other is accepted."""
        return cls(**_exact_keys(d, [f.name for f in fields(cls)], "result row"))


@dataclass
class Report:
    """A conformance report: the header, in DESIGN's key order, and the result rows.

    `summary` is computed from the rows, never stored: the status counts and `skipped_surfaces`, the
    surfaces with at least one row skipped as "surface not offered: <surface>" and no row of theirs
    checked (every row of their families is `skip`; an unclaimed tuner's skips do not count as checks).
    """

    implementation: str
    driver: str
    driver_source: str
    version: str
    tunerspec: str
    spec_sha256: str
    torch: str
    python: str
    packages: dict[str, str]
    platform: str
    device: str
    math_modes: dict[str, bool]
    profile: str
    seed: int
    tuners: list[str]
    driver_options: dict[str, Any]
    api_map: dict[str, Any]
    command: str
    git_commit: str | None
    results: list[Row] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _SLUG.match(self.driver):
            raise ValueError(f"Report.driver {self.driver!r} is not a slug [a-z0-9_-]+")
        if self.profile not in PROFILES:
            raise ValueError(f"Report.profile {self.profile!r} is not one of {', '.join(PROFILES)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"Report.seed must be an int, got {self.seed!r}")
        unknown = [t for t in self.tuners if t not in TUNERS]
        if unknown:
            raise ValueError(f"Report.tuners: unknown tuner ids {unknown}")
        _check_rows(self.results)

    @property
    def summary(self) -> dict[str, Any]:
        """Counts of every status (all keys present) and the surfaces not offered, in schema order."""
        counts = Counter(row.status for row in self.results)
        return {**{s: counts[s] for s in STATUSES}, "skipped_surfaces": _not_offered(self.results)}

    def not_offered_by_tuner(self) -> dict[str, list[str]]:
        """Per tuner (in tuner order), the surfaces not offered for it, by the same rule as the summary."""
        out = {}
        for tuner in TUNERS:
            surfaces = _not_offered([r for r in self.results if r.tuner == tuner])
            if surfaces:
                out[tuner] = surfaces
        return out

    def to_dict(self, *, clause_order: Sequence[str] | None = None) -> dict[str, Any]:
        """The JSON document: header keys in schema order, then `summary`, then the sorted `results`."""
        _check_rows(self.results)
        header = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "results"}
        rows = sort_rows(self.results, clause_order)
        return {**header, "summary": self.summary, "results": [r.to_dict() for r in rows]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        """The inverse of `to_dict`. The stored summary must equal the one the rows give (reports are never
        edited by hand)."""
        names = [f.name for f in fields(cls) if f.name != "results"]
        values = _exact_keys(d, [*names, "summary", "results"], "conformance report")
        stored = values.pop("summary")
        report = cls(**values | {"results": [Row.from_dict(r) for r in values["results"]]})
        if stored != report.summary:
            raise ValueError(f"report summary {stored} does not match its results {report.summary}")
        return report

    def to_json(self) -> str:
        """The `.json` file's text: indent 2, schema key order, trailing newline."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"


def _exact_keys(d: Mapping[str, Any], names: list[str], what: str) -> dict[str, Any]:
    missing = [n for n in names if n not in d]
    extra = [k for k in d if k not in names]
    if missing or extra:
        raise ValueError(f"{what}: missing keys {missing}, unknown keys {extra}")
    return {n: d[n] for n in names}


def _check_rows(rows: Iterable[Row]) -> None:
    seen: set[tuple[str | None, ...]] = set()
    for row in rows:
        if not isinstance(row, Row):
            raise TypeError(f"Report.results holds Row objects, got {row!r}")
        if row.key in seen:
            raise ValueError(
                f"two rows for one (tuner, clause, scope, variant, init, layer_kind, dtype, peer): {row.key}"
            )
        seen.add(row.key)


def _not_offered(rows: Sequence[Row]) -> list[str]:
    out = []
    for name in SURFACES:
        mine = [r for r in rows if r.surface == name]
        if any(r.detail == surface_not_offered(name) for r in mine) and all(r.status == "skip" for r in mine):
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------------- order


def _rank(vocabulary: Sequence[str]) -> dict[str | None, int]:
    return {None: -1} | {v: i for i, v in enumerate(vocabulary)}


def _ranked(ranks: Mapping[str | None, int], value: str | None) -> tuple[int, str]:
    """Vocabulary order, None first; values outside the vocabulary after it, alphabetically."""
    return (ranks.get(value, len(ranks)), value or "")


def sort_rows(rows: Iterable[Row], clause_order: Sequence[str] | None = None) -> list[Row]:
    """Rows in report order: tuner (DESIGN's order), clause (`clause_order`, default SPEC.md's index order;
    a `.should` row right after its clause; IDs outside the order after it, alphabetically), then scope,
    variant, init, layer kind and dtype in vocabulary order, peer, status, detail and repro."""
    order = list(clauses()) if clause_order is None else list(clause_order)
    clause_rank = {c: i for i, c in enumerate(order)}
    tuners, scopes, variants, inits = _rank(TUNERS), _rank(SCOPES), _rank(VARIANTS), _rank(INITS)
    kinds, dtypes, statuses = _rank(LAYER_KINDS), _rank(DTYPES), _rank(STATUSES)

    def key(row: Row) -> tuple:
        base = row.clause.removesuffix(SHOULD_SUFFIX)
        return (
            _ranked(tuners, row.tuner),
            (clause_rank.get(base, len(order)), base, row.clause != base),
            _ranked(scopes, row.scope),
            _ranked(variants, row.variant),
            _ranked(inits, row.init),
            _ranked(kinds, row.layer_kind),
            _ranked(dtypes, row.dtype),
            (row.peer is not None, row.peer or ""),
            _ranked(statuses, row.status),
            row.detail,
            (row.repro is not None, row.repro or ""),
            row.repro_verified,
        )

    return sorted(rows, key=key)


# ---------------------------------------------------------------------------------------------- files


def report_name(driver_name: str, device: str, profile: str) -> str:
    """`<driver>`, then `-<device>` unless the device is cpu, then `-<profile>` unless the profile is ci."""
    for what, value in (("driver name", driver_name), ("device", device), ("profile", profile)):
        if not _SLUG.match(value):
            raise ValueError(f"{what} {value!r} cannot name a report file: use [a-z0-9_-]+")
    name = driver_name
    if device != "cpu":
        name += f"-{device}"
    if profile != "ci":
        name += f"-{profile}"
    return name


def report_paths(report_dir: str | os.PathLike[str], driver_name: str, device: str, profile: str) -> tuple[Path, Path]:
    """The `.json` and `.md` paths of a run's report (DESIGN.md "Command line")."""
    stem = Path(report_dir) / report_name(driver_name, device, profile)
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`: readers see the old file
    or the new one, never a part; on any failure the temporary file is removed and `path` is untouched."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_notes(notes_dir: str | os.PathLike[str], name: str) -> dict[str, str]:
    """The hand-written explanations of `<notes_dir>/<name>.toml`: one line of text per clause ID (or
    `<ID>.should`), at the top level for every tuner, or in a table named after a tuner (`[loha]`) where the cause
    is that tuner's; a tuner's entry is keyed `<tuner>:<ID>` here. A missing file gives {}."""
    path = Path(notes_dir) / f"{name}.toml"
    if not path.is_file():
        return {}
    with path.open("rb") as f:
        table = tomllib.load(f)
    entries = [(None, k, v) for k, v in table.items() if k not in TUNERS]
    for tuner in TUNERS:
        entries += [(tuner, k, v) for k, v in table.get(tuner, {}).items()]
    known = clauses()
    notes = {}
    for tuner, clause, text in entries:
        if clause.removesuffix(SHOULD_SUFFIX) not in known:
            raise ValueError(f"{path}: {clause!r} is not a clause ID of SPEC.md")
        if not isinstance(text, str):
            raise ValueError(f"{path}: the note for {clause} must be a string, got {text!r}")
        notes[clause if tuner is None else f"{tuner}:{clause}"] = " ".join(text.split())
    return notes


def note_for(row: Row, notes: Mapping[str, str]) -> str | None:
    """The note explaining a row: its tuner's entry for the clause, else the clause's entry for every tuner."""
    return notes.get(f"{row.tuner}:{row.clause}") or notes.get(row.clause)


def _notes_for(report: Report, stem: str, notes_dir: Path) -> dict[str, str]:
    """Notes for a report: `<driver>.toml` (shared by its device and profile runs), overridden clause by
    clause by `<stem>.toml` (e.g. `peft-cuda.toml`) where that exists."""
    notes = load_notes(notes_dir, report.driver)
    if stem != report.driver:
        notes |= load_notes(notes_dir, stem)
    return notes


def write_report(
    report: Report, report_dir: str | os.PathLike[str], notes_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """Write `<name>.json` and `<name>.md` into `report_dir`, each atomically; both texts are rendered before
    either file is touched. Notes come from `notes_dir` (default `<report_dir>/notes`)."""
    report_dir = Path(report_dir)
    json_path, md_path = report_paths(report_dir, report.driver, report.device, report.profile)
    notes = _notes_for(report, json_path.stem, report_dir / "notes" if notes_dir is None else Path(notes_dir))
    json_text, md_text = report.to_json(), render_markdown(report, notes)
    report_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(json_path, json_text)
    _write_atomic(md_path, md_text)
    return json_path, md_path


MATRIX_MD = "README.md"  # the cross-implementation matrix over the reports of a directory
MUTATION_JSON = "mutation.json"  # the mutant matrix (`python -m conformance.mutants`), not a conformance report


def regenerate(report_dir: str | os.PathLike[str], notes_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Re-render the `.md` of every conformance report `<name>*.json` in `report_dir` (not its
    subdirectories) from the JSON and the notes (default `<report_dir>/notes`); a file is rewritten only
    when its text changes. Returns the `.md` paths in name order."""
    report_dir = Path(report_dir)
    notes_dir = report_dir / "notes" if notes_dir is None else Path(notes_dir)
    out, canonical = [], []
    for json_path in sorted(report_dir.glob("*.json")):
        if json_path.name == MUTATION_JSON:
            out.append(_regenerate_mutation(json_path))
            continue
        try:
            report = Report.from_dict(json.loads(json_path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{json_path}: not a valid conformance report: {e}") from e
        expected = report_name(report.driver, report.device, report.profile)
        if json_path.stem != expected:
            raise ValueError(f"{json_path}: its header (driver, device, profile) names it {expected}.json")
        md_path = json_path.with_suffix(".md")
        text = render_markdown(report, _notes_for(report, json_path.stem, notes_dir))
        if not md_path.is_file() or md_path.read_text(encoding="utf-8") != text:
            _write_atomic(md_path, text)
        out.append(md_path)
        if json_path.stem == report.driver:  # the cpu, ci-profile run of each implementation
            canonical.append(report)
    if canonical:
        out.append(_regenerate_matrix(report_dir / MATRIX_MD, canonical))
    return out


def _regenerate_matrix(md_path: Path, reports: list[Report]) -> Path:
    """The cross-implementation matrix (`conformance.matrix`) over each implementation's cpu, ci-profile report."""
    from .matrix import render_matrix

    text = render_matrix(reports)
    if not md_path.is_file() or md_path.read_text(encoding="utf-8") != text:
        _write_atomic(md_path, text)
    return md_path


def _regenerate_mutation(json_path: Path) -> Path:
    """`mutation.md` from the mutant matrix's `mutation.json` (`conformance.mutation.render_markdown`)."""
    from .mutation import render_markdown as render_mutation

    md_path = json_path.with_suffix(".md")
    text = render_mutation(json.loads(json_path.read_text(encoding="utf-8")))
    if not md_path.is_file() or md_path.read_text(encoding="utf-8") != text:
        _write_atomic(md_path, text)
    return md_path


# ---------------------------------------------------------------------------------------------- markdown


def root_cause(row: Row, notes: Mapping[str, str]) -> tuple[str, ...]:
    """What a finding is grouped by: the note explaining its clause (rows of several clauses that share one
    note text share a cause), or else the clause and the detail with its numbers stripped."""
    note = note_for(row, notes)
    if note:
        return ("note", note)
    return ("detail", row.clause, strip_numbers(row.detail))


def strip_numbers(text: str) -> str:
    """`text` with every number, and every comma-separated run of numbers (an index or a shape of any rank),
    replaced by one `#`; digits inside identifiers (float64, conv2d) and clause IDs stay."""
    text = _WORD_OR_NUMBER.sub(lambda m: m[0] if m[0][0].isalpha() or m[0][0] == "_" else "#", text)
    return re.sub(r"#(?:\s*,\s*#)+", "#", text)


def _cell(value: object) -> str:
    return "—" if value is None else str(value).replace("|", "\\|")


def _code(text: str, *, in_table: bool = False) -> str:
    """An inline code span that holds any text (a fence longer than its longest backtick run)."""
    if not text:
        return ""
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    span = f"{ticks}{pad}{text}{pad}{ticks}"
    return span.replace("|", "\\|") if in_table else span


def _fenced(text: str, lang: str) -> list[str]:
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return [f"{fence}{lang}", *text.rstrip("\n").split("\n"), fence]


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _counts(rows: Sequence[Row]) -> list[str]:
    counts = Counter(r.status for r in rows)
    return [str(counts[s]) if counts[s] else "·" for s in STATUSES] + [str(len(rows))]


def _status_cell(status: str) -> str:
    return f"**{status}**" if status in ("fail", "error") else status


def _clause_title(clause: str) -> str:
    known = clauses().get(clause.removesuffix(SHOULD_SUFFIX))
    return f"{clause} ({known.name})" if known else clause


def _header(report: Report) -> list[str]:
    modes = ", ".join(f"{k}={json.dumps(v)}" for k, v in report.math_modes.items()) or "—"
    packages = ", ".join(f"{k} {v}" for k, v in report.packages.items()) or "—"
    lines = [
        f"# Conformance: {report.implementation} {report.version}",
        "",
        "Generated by `tunerspec report` from the JSON report beside this file; do not edit by hand.",
        "",
        f"- implementation: **{report.implementation}** {report.version}, driver `{report.driver}` "
        f"({_code(report.driver_source)})",
        f"- tunerspec {report.tunerspec}, SPEC.md sha256 `{report.spec_sha256}`",
        f"- torch {report.torch}, python {report.python}, {packages}",
        f"- platform: {report.platform}; device: **{report.device}**; math modes: {modes}",
        f"- profile: **{report.profile}**, seed {report.seed}; tuners: {', '.join(report.tuners)}",
        f"- command: {_code(report.command)}",
        f"- git commit: `{report.git_commit}`" if report.git_commit else "- git commit: —",
    ]
    for name in ("driver_options", "api_map"):
        value = getattr(report, name)
        lines.append(f"- {name}: " + (_code(json.dumps(value, ensure_ascii=False)) if value else "{}"))
    return lines


def _summary(report: Report, rows: Sequence[Row]) -> list[str]:
    lines = ["", "## Summary", ""]
    lines += _table(
        ["tuner", *STATUSES, "rows"],
        [[t, *_counts([r for r in rows if r.tuner == t])] for t in TUNERS if any(r.tuner == t for r in rows)]
        + [["**all**", *_counts(rows)]],
    )
    skipped = report.summary["skipped_surfaces"]
    lines += ["", "Surfaces not offered: " + (", ".join(skipped) if skipped else "none") + "."]
    partial = {t: s for t, s in report.not_offered_by_tuner().items() if s != skipped}
    if partial:
        lines += ["", "Not offered for some tuners only:", ""]
        lines += [f"- {t}: {', '.join(s)}" for t, s in partial.items()]
    lines += ["", "### By family", ""]
    by_family = [
        [t, f, surface(f), *_counts(sel)]
        for t in TUNERS
        for f in FAMILIES
        if (sel := [r for r in rows if r.tuner == t and r.family == f])
    ]
    lines += _table(["tuner", "family", "surface", *STATUSES, "rows"], by_family)
    return lines


def _findings(rows: Sequence[Row], notes: Mapping[str, str]) -> list[str]:
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        if row.status in FINDING_STATUSES:
            groups.setdefault(root_cause(row, notes), []).append(row)
    lines = ["", "## Findings", ""]
    if not groups:
        return [*lines, "No fail, error, warn or xpass rows."]
    lines += [f"{len(groups)} root cause(s) over {sum(map(len, groups.values()))} row(s), grouped by clause "
              "and detail (numbers stripped) or by the explanation in the notes."]  # fmt: skip
    for group in groups.values():
        clause_ids = list(dict.fromkeys(r.clause for r in group))
        statuses = Counter(r.status for r in group)
        tally = ", ".join(f"{statuses[s]} {s}" for s in STATUSES if statuses[s])
        lines += ["", f"### {', '.join(map(_clause_title, clause_ids))} — {tally}", ""]
        note = note_for(group[0], notes)
        if note:
            lines += [f"**Explanation:** {note}", ""]
        lines += _table(
            ["tuner", "clause", "status", "scope", "variant", "init", "layer kind", "dtype", "peer"],
            [
                [r.tuner, r.clause, _status_cell(r.status), *map(_cell, (r.scope, r.variant, r.init)),
                 *map(_cell, (r.layer_kind, r.dtype, r.peer))]
                for r in group
            ],
        )  # fmt: skip
        # One example: the first row with a verified repro, else with any repro, else the first row.
        shown = min(group, key=lambda r: (not r.repro_verified, r.repro is None))
        where = ", ".join(v for v in (shown.tuner, shown.clause, shown.layer_kind, shown.dtype) if v)
        lines += ["", f"Example ({where}): {_code(shown.detail) or '—'}", ""]
        if shown.repro is None:
            lines.append("Repro: none recorded.")
            continue
        verified = "yes, it ran standalone in a clean subprocess" if shown.repro_verified else "no"
        lines += [f"Repro (verified: {verified}):", ""]
        lines += _fenced(shown.repro, "python")
    return lines


def _all_rows(rows: Sequence[Row]) -> list[str]:
    lines = ["", "## All rows"]
    for tuner in TUNERS:
        mine = [r for r in rows if r.tuner == tuner]
        if not mine:
            continue
        lines += ["", f"### {tuner}", ""]
        lines += _table(
            ["clause", "family", "scope", "variant", "init", "layer kind", "dtype", "peer", "status", "detail"],
            [
                [r.clause, r.family, *map(_cell, (r.scope, r.variant, r.init, r.layer_kind, r.dtype, r.peer)),
                 _status_cell(r.status), _code(r.detail, in_table=True)]
                for r in mine
            ],
        )  # fmt: skip
    return lines


def render_markdown(
    report: Report, notes: Mapping[str, str] | None = None, *, clause_order: Sequence[str] | None = None
) -> str:
    """The `.md` of a report: header, summary (tuner × status, tuner × family, surfaces not offered),
    findings grouped by root cause with notes and repros, and every row per tuner. A pure function of its
    arguments: the same report (in any row order) and notes give the same text."""
    notes = notes or {}
    rows = sort_rows(report.results, clause_order)
    lines = [*_header(report), *_summary(report, rows), *_findings(rows, notes), *_all_rows(rows)]
    return "\n".join(lines) + "\n"
