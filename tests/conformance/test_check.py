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


def test_stopping_at_the_first_fail_runs_past_error_rows():
    """`stop_on_first_fail`: the `error` rows of the config family's round trips do not end the run; the first
    `fail` row (the scale bug, seen by a later clause) does, and is the last row judged."""
    report = check(
        "mutant_drivers:UnreadableConfigLoHaScaleBugDriver", tuners=["loha"], families=["config", "forward"],
        isolate=False, stop_on_first_fail=True, verify=False,
    )  # fmt: skip
    statuses = [row.status for row in report.results]
    assert "error" in statuses and statuses.count("fail") == 1 and statuses[-1] == "fail", statuses


def test_an_unshrunk_run_finds_the_same_fail():
    """`shrink=False` (the targeted mutant runs) leaves the failing example unminimised; here, where every failing
    example is a violation, the rows and their verdicts are the shrinking run's."""
    runs = [
        check(
            "mutant_drivers:LoHaScaleBugDriver", tuners=["loha"], families=["forward"], isolate=False,
            stop_on_first_fail=True, verify=False, shrink=shrink,
        )
        for shrink in (True, False)
    ]  # fmt: skip
    shrunk, unshrunk = ([(row.clause, row.variant, row.dtype, row.status) for row in r.results] for r in runs)
    assert shrunk == unshrunk and shrunk[-1][-1] == "fail"
