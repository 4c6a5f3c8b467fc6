"""The mutant catalog in targeted mode: each mutant, run in-process on the families named for it and stopping at
the first kill, gets a `fail` row of one of its expected clauses (an `error` row is not a kill); a mutant without
a bug passes the same runs; running a mutant leaves the reference as it was. Plus the kill matrix's bookkeeping."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conformance.check import check
from conformance.drivers.base import TUNERS
from conformance.mutants import CATALOG, KINDS
from conformance.mutants.base import MutantDriver
from conformance.mutation import matrix, mutant_result, render_markdown, unkilled_clauses
from conformance.report import Row
from conformance.spec.clauses import clauses
from conformance.spec.families import FAMILIES, family_of
from reference_tuners.core import registry

MATRIX = Path(__file__).resolve().parents[2] / "reports" / "conformance" / "mutation.json"


def targeted(spec: str, tuner: str, families: tuple[str, ...]):
    """The targeted run: the mutant's families, ending at the first `fail` row, failing examples not shrunk."""
    options = {"stop_on_first_fail": True, "isolate": False, "verify": False, "shrink": False}
    return check(spec, tuners=[tuner], families=list(families), **options)


@pytest.mark.parametrize("mutant", CATALOG, ids=[f"{m.spec.rsplit('.', 1)[-1]}-{m.tuner}" for m in CATALOG])
def test_the_mutant_is_killed_by_a_named_clause(mutant):
    report = targeted(mutant.spec, mutant.tuner, mutant.families)
    failed = {row.clause for row in report.results if row.status == "fail"}
    assert failed & set(mutant.kills), f"{mutant.spec}: fail rows {sorted(failed)}, expected one of {mutant.kills}"


class _NoBug:
    """A mixin overriding nothing: the machinery (registry swap, model classes) without a bug."""


class NoBugDriver(MutantDriver):
    """No bug: the reference behind every mutant machinery."""

    layer_mixin = _NoBug
    model_mixin = _NoBug
    wrapper_mixin = _NoBug


def test_a_mutant_without_a_bug_passes_the_targeted_runs():
    """What "killed" means: the targeted runs of HRA's forward, merge and unmerge mutants pass for the same
    machinery (every mixin in place, the registry swapped) without a bug."""
    kinds = ("forward", "merge", "unmerge")
    families = tuple(sorted({f for m in CATALOG if m.tuner == "hra" and m.kind in kinds for f in m.families}))
    report = targeted(f"{NoBugDriver.__module__}:NoBugDriver", "hra", families)
    statuses = Counter(row.status for row in report.results)
    assert statuses["pass"] > 0 and statuses["fail"] == statuses["error"] == 0, statuses


def test_running_a_mutant_leaves_the_reference_intact():
    before = {peft_type: tuner.layer_cls for peft_type, tuner in registry._TUNERS.items()}
    mutant = next(m for m in CATALOG if m.spec.endswith(":ReflectionsReversed"))
    assert any(row.status == "fail" for row in targeted(mutant.spec, mutant.tuner, mutant.families).results)
    assert {peft_type: tuner.layer_cls for peft_type, tuner in registry._TUNERS.items()} == before
    report = targeted("reference", mutant.tuner, mutant.families)
    assert report.summary["pass"] == len(report.results) > 0


def test_the_catalog_is_well_formed():
    """One entry per (driver, tuner) and one name per driver; known kinds, families and clauses; every expected
    clause is checked by one of the targeted families (else the targeted run could not kill); at least four kinds
    per tuner."""
    assert len({(m.spec, m.tuner) for m in CATALOG}) == len(CATALOG)
    assert len({m.spec for m in CATALOG}) == len({m.driver_class.name for m in CATALOG})
    for m in CATALOG:
        assert m.tuner in TUNERS and m.kind in KINDS and set(m.families) <= set(FAMILIES), m
        assert set(m.kills) <= set(clauses()) and m.description, m
        assert {family_of(c) for c in m.kills} & set(m.families), m
    for tuner in TUNERS:
        assert len({m.kind for m in CATALOG if m.tuner == tuner}) >= 4, tuner


def test_the_committed_matrix_is_of_this_catalog_and_kills_every_clause():
    """`reports/conformance/mutation.json` is a complete run of the catalog as it is (a mutant added, renamed or
    dropped since makes it stale), every mutant killed and no clause left unkilled."""
    data = json.loads(MATRIX.read_text(encoding="utf-8"))
    assert [(r["spec"], r["tuner"]) for r in data["mutants"]] == [(m.spec, m.tuner) for m in CATALOG]
    assert data["complete"] and data["killed"] == data["total"] == len(CATALOG)
    assert data["unkilled_clauses"] == []


def _row(clause: str, status: str) -> Row:
    return Row(
        tuner="hra", clause=clause, family=family_of(clause.removesuffix(".should")), scope="layer", variant=None,
        init=None, layer_kind=None, dtype=None, peer=None, status=status, detail="", repro=None, repro_verified=False,
    )  # fmt: skip


def test_only_fail_rows_kill_and_unkilled_clauses_are_the_rest():
    mutant = CATALOG[0]
    rows = [_row("HRA-R-1", "fail"), _row("HRA-R-2", "error"), _row("HRA-R-3", "pass"), _row("HRA-R-3.should", "warn")]
    result = mutant_result(mutant, rows)
    assert (result["killed_by"], result["errors"], result["killed"]) == (["HRA-R-1"], ["HRA-R-2"], True)
    assert not mutant_result(mutant, rows[1:])["killed"]
    unkilled = {c["clause"]: c["tuners"] for c in unkilled_clauses([result])}
    assert set(unkilled) == set(clauses()) - {"HRA-R-1"}
    assert unkilled["HRA-R-2"] == ["hra"] and unkilled["CORE-FWD-1"] == list(TUNERS)


def test_the_markdown_lists_every_mutant_and_unkilled_clause():
    mutants = list(CATALOG[:3])
    results = {
        (m.spec, m.tuner): mutant_result(m, [_row("HRA-R-1", "fail")] if i == 0 else []) for i, m in enumerate(mutants)
    }
    data = matrix(mutants, results, "ci", 0, "python -m conformance.mutants")
    text = render_markdown(data)
    assert text == render_markdown(data) and data["complete"]
    assert "1/3 mutants" in text and text.count("**not killed**") == 2
    unkilled_section = text.split("## Clauses no mutant kills yet")[1]
    assert all(f"| {c['clause']} |" in unkilled_section for c in data["unkilled_clauses"])
    assert "| HRA-R-1 |" not in unkilled_section
    del results[mutants[2].spec, mutants[2].tuner]
    assert "2 of 3 mutants so far" in render_markdown(matrix(mutants, results, "ci", 0, None))


def test_a_resumed_matrix_names_the_commits_of_its_results():
    mutants = list(CATALOG[:3])
    commits = dict(zip(mutants, "aab", strict=True))
    results = {(m.spec, m.tuner): {**mutant_result(m, []), "git_commit": commits[m]} for m in mutants}
    data = matrix(mutants, results, "ci", 0, None)
    text = render_markdown({**data, "git_commit": "a"})
    assert "Resumed run" in text and "`a` (2), `b` (1)" in text
    assert "Resumed run" not in render_markdown({**data, "git_commit": "a", "mutants": data["mutants"][:2]})
