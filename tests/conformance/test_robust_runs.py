"""Runs that survive a broken implementation (`conformance.runs`): a child process that crashes or hangs costs
only the row it was running, which becomes `error` naming what happened; the other rows are the same as in an
undisturbed run. Also the row log itself (`conformance.rowlog`)."""

import json
from pathlib import Path

import pytest

from conformance import rowlog
from conformance.check import check

FAMILY = "safe_merge"  # small, and every row merges


def _keys(report):
    return {row.key: row for row in report.results}


@pytest.fixture(scope="module")
def undisturbed():
    return _keys(check("reference", tuners=["ia3"], families=[FAMILY], isolate=False, verify=False))


@pytest.mark.parametrize(
    ("driver", "timeout", "detail"),
    [
        ("mutant_drivers:CrashOnceDriver", None, "crashed the process (SIGSEGV) while this row ran"),
        ("mutant_drivers:HangOnceDriver", 15, "hung: no answer within the per-test timeout of 15 s"),
    ],
)
def test_a_dead_child_costs_only_its_running_row(driver, timeout, detail, undisturbed, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERSPEC_TEST_MARKER", str(tmp_path / "first-merge-done"))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the children import `mutant_drivers`
    messages = []
    report = check(driver, tuners=["ia3"], families=[FAMILY], verify=False, timeout=timeout, progress=messages.append)
    rows = _keys(report)
    assert rows.keys() == undisturbed.keys()
    errors = [row for row in report.results if row.status == "error"]
    assert len(errors) == 1 and errors[0].detail.startswith(detail), errors
    assert all(rows[key].status == row.status for key, row in undisturbed.items() if key != errors[0].key)
    assert any("fresh process" in message for message in messages), messages


def test_the_row_log_reads_back_the_running_row_and_ignores_a_torn_line(tmp_path):
    log = tmp_path / "rows.jsonl"
    rowlog.append(log, rowlog.START, "t::a", row={"clause": "A"})
    rowlog.append(log, rowlog.DONE, "t::a", row={"clause": "A", "status": "pass"})
    rowlog.append(log, rowlog.START, "t::b", row={"clause": "B"})
    rowlog.append(log, rowlog.HUNG, "t::b", seconds=5)
    with open(log, "a") as fh:
        fh.write(json.dumps({"event": rowlog.DONE})[:7])  # the process died mid-line
    state = rowlog.read(log)
    assert state.rows == [{"clause": "A", "status": "pass"}] and state.done == {"t::a"}
    assert state.running == ("t::b", {"clause": "B"}) and state.hung_after == 5
