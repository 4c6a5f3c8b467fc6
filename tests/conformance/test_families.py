"""Meta-test: every clause of SPEC.md maps to exactly one contract family, and nothing else is mapped."""

from conformance.spec.clauses import clauses
from conformance.spec.families import CORE, FAMILIES, TUNER, family_of, surface


def test_every_clause_has_one_family():
    unmapped = [cid for cid in clauses() if family_of_or_none(cid) is None]
    assert not unmapped, unmapped
    assert {family_of(cid) for cid in clauses()} == set(FAMILIES)


def test_no_family_entry_names_a_clause_spec_lacks():
    mapped = {f"CORE-{stem}" for stem in CORE} | {f"{p}-{stem}" for p, t in TUNER.items() for stem in t}
    assert mapped == set(clauses())


def test_surfaces_follow_design():
    assert surface("disable") == surface("multi") == "lifecycle"
    assert surface("interchange") == "files" and surface("forward") == "layers"


def family_of_or_none(cid):
    try:
        return family_of(cid)
    except KeyError:
        return None
