"""The package ships SPEC.md; its clause index is what the suite checks."""

from pathlib import Path

from conformance.spec.clauses import SPEC_PATH, clauses

SHARED = Path(__file__).resolve().parents[3] / "shared" / "SPEC.md"


def test_packaged_spec_equals_the_shared_one_when_present():
    if SHARED.is_file():  # beside a checkout; an installed package has only its copy
        assert SPEC_PATH.read_bytes() == SHARED.read_bytes(), "conformance/SPEC.md is stale: copy ../shared/SPEC.md"


def test_clause_index_is_complete_and_classified():
    index = clauses()
    assert len(index) == 233
    assert {c.tolerance_class for c in index.values()} == set("SZNAPG")
    assert index["HRA-MERGE-2"].tolerance_class == "N" and index["HRA-MERGE-2"].tuner == "HRA"
    assert index["BONE-BAT-3"].tolerance_class == "A"
    optional = {c.id for c in index.values() if c.optional}
    assert optional == {
        "BONE-LAYER-2",
        "MISS-CONV-2",
        "HRA-LAYER-2",
        "IA3-LAYER-2",
        "IA3-WADD-1",
        "LOHA-LAYER-2",
        "LOHA-SCALE-1",
    }
    assert {c.prefix for c in index.values()} == {"CORE", "BONE", "MISS", "GRALORA", "HRA", "IA3", "LOHA"}
