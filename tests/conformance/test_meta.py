"""Meta-tests of the suite itself (DESIGN "Practices"): every clause of SPEC.md produces result rows, from the
contract file of its family; every tuner has one record; the row rules (`.should` → warn, optional clause
capabilities → skip); the same seed gives the same rows."""

from __future__ import annotations

import importlib
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import conformance.contracts
from conformance.check import check
from conformance.drivers.base import TUNERS, Capabilities, TunerCapabilities
from conformance.drivers.peft import PeftDriver
from conformance.drivers.reference import ReferenceDriver
from conformance.rows import CLAUSE_CAPABILITIES, SHOULD, expand
from conformance.spec.clauses import clauses
from conformance.spec.families import family_of
from conformance.spec.records import RECORDS

CONTRACTS = Path(conformance.contracts.__file__).parent


def contract_markers() -> dict[str, list[tuple[str, dict]]]:
    """Clause (as written in a marker) → [(family file stem, marker options)] over every contract test."""
    found = defaultdict(list)
    for path in sorted(CONTRACTS.glob("test_*.py")):
        module = importlib.import_module(f"conformance.contracts.{path.stem}")
        for name in dir(module):
            function = getattr(module, name)
            for mark in getattr(function, "pytestmark", []) if name.startswith("test_") else []:
                if mark.name == "contract":
                    for clause in mark.args:
                        found[clause].append((path.stem.removeprefix("test_"), dict(mark.kwargs)))
    return found


def applies_to(clause: str) -> list[str]:
    prefix = clause.split("-", 1)[0]
    return [t for t in TUNERS if prefix == "CORE" or prefix in RECORDS[t].clause_prefixes]


def test_every_tuner_has_one_record():
    assert sorted(RECORDS) == sorted(TUNERS)
    assert all(RECORDS[t].tuner == t for t in TUNERS)
    assert all((CONTRACTS.parent / "spec" / f"{t}.py").is_file() for t in TUNERS)


def test_every_marker_clause_is_a_spec_clause_in_its_family_file():
    spec = clauses()
    for clause, uses in contract_markers().items():
        base = clause.removesuffix(SHOULD)
        assert base in spec, f"{clause}: not a clause of SPEC.md"
        if clause.endswith(SHOULD):
            assert spec[base].should, f"{clause}: {base} has no SHOULD part"
        assert {family for family, _ in uses} == {family_of(base)}, f"{clause} is checked outside its family"


def test_every_clause_produces_rows_for_every_tuner_it_applies_to():
    markers = contract_markers()
    capabilities = ReferenceDriver().capabilities()
    missing, no_rows, all_skipped = [], [], []
    for clause, spec_clause in clauses().items():
        written = [c for c in (clause, clause + SHOULD) if c in markers]
        if not written:
            missing.append(clause)
            continue
        if spec_clause.should and clause + SHOULD not in markers:
            missing.append(clause + SHOULD)
        rows = [
            row
            for c in written
            for _, options in markers[c]
            for row in expand(c, records=RECORDS, capabilities=capabilities, **options)
        ]
        tuners = {row.tuner for row in rows}
        if tuners != set(applies_to(clause)):
            no_rows.append(f"{clause}: rows for {sorted(tuners)}, expected {applies_to(clause)}")
        if all(row.skip for row in rows):
            all_skipped.append(clause)
    assert not missing, f"clauses no contract test checks: {missing}"
    assert not no_rows, no_rows
    assert not all_skipped, f"clauses whose every row the reference skips: {all_skipped}"


def _claims(**optional) -> Capabilities:
    return Capabilities({t: TunerCapabilities(variants=frozenset({"plain"}), **optional) for t in TUNERS})


def test_optional_clause_capability_decides_skip():
    for clause, capability in CLAUSE_CAPABILITIES.items():
        assert clauses()[clause].optional
        tuner = capability.split(".")[0]
        without = list(expand(clause, records=RECORDS, capabilities=_claims(), tuners=[tuner]))
        assert [row.skip for row in without] == [f"optional capability not declared: {capability}"]
        declared = _claims(optional=frozenset({capability}))
        assert [row.skip for row in expand(clause, records=RECORDS, capabilities=declared, tuners=[tuner])] == [None]


def test_should_rows_keep_the_suffix_and_the_family():
    rows = list(expand("HRA-R-3" + SHOULD, records=RECORDS, capabilities=ReferenceDriver().capabilities()))
    assert [(row.tuner, row.clause, row.family) for row in rows] == [("hra", "HRA-R-3.should", "forward")]


@pytest.mark.parametrize("mutant", ["mutant_drivers:LoHaScaleBugDriver"])
def test_the_same_seed_gives_the_same_rows(mutant):
    """A run with failures (so details carry counterexamples) repeated with one seed gives identical rows."""
    runs = [
        check(mutant, tuners=["loha"], families=["forward"], seed=3, isolate=False, stop_on_first_fail=True).results,
        check(mutant, tuners=["loha"], families=["forward"], seed=3, isolate=False, stop_on_first_fail=True).results,
    ]
    assert any(row.status == "fail" for row in runs[0])
    assert runs[0] == runs[1]


def test_a_tuner_that_is_not_native_is_judged_through_its_stand_ins_conversion_rows():
    claims = Capabilities(
        {t: TunerCapabilities(native=t != "bone", variants=frozenset({"plain"})) for t in ("bone", "miss")}
    )
    math = list(expand("BONE-FWD-1", records=RECORDS, capabilities=claims, tuners=["bone", "miss"]))
    assert [(row.tuner, row.skip) for row in math] == [("bone", "not native: same code path as miss"), ("miss", None)]
    for clause in ("MISS-CONV-1", "MISS-CONV-3"):
        rows = expand(clause, records=RECORDS, capabilities=claims, tuners=["bone", "miss"])
        assert [(row.tuner, row.skip) for row in rows] == [("miss", None)]


@pytest.mark.parametrize(
    "capabilities",
    [ReferenceDriver().capabilities(), PeftDriver().capabilities(), Capabilities({})],
    ids=["reference", "peft", "claims-nothing"],
)
def test_row_keys_are_unique_whatever_the_driver_claims(capabilities):
    """One row per (tuner, clause, scope, variant, init, layer_kind, dtype, peer): a clause checked by several tests
    keeps its rows apart by their axes also where a whole tuner is skipped (not claimed, not native, …)."""
    keys = [
        (row.tuner, row.clause, row.scope, row.variant, row.init, row.layer_kind, row.dtype, row.peer)
        for clause, uses in contract_markers().items()
        for _, options in uses
        for row in expand(clause, records=RECORDS, capabilities=capabilities, **options)
    ]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    assert not duplicated, duplicated[:5]


def test_random_init_rows_need_the_init_field():
    """A driver whose config has no init field (one initialisation only) cannot express random initialisation: its
    random-init rows are `fail` "unsupported", not a distribution failure."""
    fields = frozenset({"target_modules", "r"})
    claims = Capabilities({"loha": TunerCapabilities(variants=frozenset({"plain"}), config_fields=fields)})
    rows = list(expand("LOHA-ID-1", records=RECORDS, capabilities=claims, tuners=["loha"], axes=("init",),
                       inits=("identity", "random")))  # fmt: skip
    assert [(row.init, row.unsupported) for row in rows] == [
        ("identity", None),
        ("random", "config field init_weights (random initialisation)"),
    ]


def test_a_required_operation_the_driver_lacks_fails_unsupported():
    """MISS-CONV-1 needs a Bone → MiSS conversion: a driver without one (not declaring `miss.from_bone`) gets `fail`
    "unsupported", not an `error` from a driver raising NotImplementedError."""
    for optional, expected in ((frozenset(), "operation miss.from_bone"), (frozenset({"miss.from_bone"}), None)):
        claims = Capabilities({"miss": TunerCapabilities(variants=frozenset({"plain"}), optional=optional)})
        rows = list(expand("MISS-CONV-1", records=RECORDS, capabilities=claims, tuners=["miss"]))
        assert [row.unsupported for row in rows] == [expected]


def test_rows_and_repros_do_not_depend_on_torchs_state_before_the_run():
    """torch seeds itself at random on import; every row starts from the run's seed, so a repro whose calls begin
    on a fresh generator (peft's CORE-CFG-9: configs only) names the same seed whatever the process held before."""
    runs = []
    for before in (1, 2):
        torch.manual_seed(before)
        runs.append(check("peft", tuners=["ia3"], families=["config"], isolate=False, verify=False).results)
    assert any(row.status == "fail" and "torch.manual_seed(" in (row.repro or "") for row in runs[0])
    assert runs[0] == runs[1]
