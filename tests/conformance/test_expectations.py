"""`--expectations`: known deviations turn their rows into `xfail`; a stale entry gives `xpass` and a warning; a
bad file is a usage error."""

import pytest

from conformance.check import check
from conformance.cli import EXIT_USAGE, main
from conformance.expectations import Expectation, apply_expectations, load_expectations
from conformance.report import Row

ENTRY = '[[expected]]\ntuner = "loha"\nclause = "CORE-FWD-1"\nreason = "s = alpha, issue #1"\n'


def row(status, layer_kind="conv2d", clause="CORE-FWD-1"):
    return Row(
        tuner="loha", clause=clause, family="forward", scope="layer", variant="plain", init="random",
        layer_kind=layer_kind, dtype="float64", peer=None, status=status, detail="largest error 0.5",
    )  # fmt: skip


def test_entries_load_and_bad_entries_are_named(tmp_path):
    path = tmp_path / "expected.toml"
    path.write_text(ENTRY + 'layer_kind = "conv2d"\n', encoding="utf-8")
    assert load_expectations(path) == [Expectation("loha", "CORE-FWD-1", "s = alpha, issue #1", layer_kind="conv2d")]
    for bad, named in [
        (ENTRY.replace("CORE-FWD-1", "CORE-FWD-99"), "CORE-FWD-99"),
        (ENTRY.replace("loha", "lora"), "lora"),
        (ENTRY.replace('reason = "s = alpha, issue #1"\n', ""), "reason is required"),
        (ENTRY + 'kind = "conv2d"\n', "unknown keys ['kind']"),
    ]:
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
            load_expectations(path)


def test_failing_rows_become_xfail_and_passing_ones_xpass_with_a_warning():
    rows = [row("fail"), row("error", "linear"), row("pass", "conv1d"), row("fail", clause="LOHA-FWD-1")]
    expectations = [Expectation("loha", "CORE-FWD-1", "known"), Expectation("hra", "HRA-FWD-1", "unused")]
    warnings = apply_expectations(rows, expectations)
    assert [r.status for r in rows] == ["xfail", "xfail", "xpass", "fail"]
    assert rows[0].detail == "expected: known — largest error 0.5"
    assert any("stale expectation loha CORE-FWD-1" in w for w in warnings)
    assert any("hra HRA-FWD-1 matches no row" in w for w in warnings)
    narrowed = [row("fail"), row("fail", "linear")]
    apply_expectations(narrowed, [Expectation("loha", "CORE-FWD-1", "conv only", layer_kind="conv2d")])
    assert [r.status for r in narrowed] == ["xfail", "fail"]


def test_check_applies_the_expectations_to_a_real_run(tmp_path):
    path = tmp_path / "expected.toml"
    path.write_text(ENTRY, encoding="utf-8")
    report = check(
        "mutant_drivers:LoHaScaleBugDriver", tuners=["loha"], families=["forward"], isolate=False, verify=False,
        stop_on_first_fail=True, expectations=path,
    )  # fmt: skip
    assert {r.clause for r in report.results if r.status == "xfail"} == {"CORE-FWD-1"}
    assert report.summary["fail"] == 0 and report.summary["xfail"] >= 1


def test_a_bad_expectations_file_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "expected.toml"
    path.write_text(ENTRY.replace("CORE-FWD-1", "CORE-FWD-99"), encoding="utf-8")
    assert main(["check", "--impl", "reference", "--expectations", str(path)]) == EXIT_USAGE
    assert "CORE-FWD-99" in capsys.readouterr().err
