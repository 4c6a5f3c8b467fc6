"""`conformance.check` end to end: real rows from real runs, a clean pass for the reference and a `fail`
row for a broken implementation (the forward contract can fail)."""

from conformance.check import check


def test_reference_passes_the_forward_family():
    report = check("reference", tuners=["ia3"], families=["forward"], isolate=False)
    assert report.summary["pass"] == len(report.results) > 0
    assert "CORE-FWD-1" in {row.clause for row in report.results}
    assert report.driver_source == "conformance.drivers.reference:ReferenceDriver"


def test_a_broken_implementation_gets_a_fail_row():
    report = check(
        "mutant_drivers:LoHaScaleBugDriver", tuners=["loha"], families=["forward"], isolate=False,
        stop_on_first_fail=True,
    )  # fmt: skip
    failed = [row for row in report.results if row.status == "fail"]
    assert failed and failed[0].clause == "CORE-FWD-1" and "largest error" in failed[0].detail
    assert report.implementation == "mutant-loha-scale"
