"""The example port (`examples/port/`): its driver stays short, and the conformance suite finds in it exactly the
deviations its expectations file declares, and nothing that crashes."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import pytest

from conformance.check import check

ROOT = Path(__file__).resolve().parents[1]
PORT = ROOT / "examples" / "port"
DRIVER = "examples.port.driver:PortDriver"
FAMILIES = ["structure", "unmerge"]  # every layer kind, and the family of the declared deviation


def test_driver_is_under_50_lines():
    lines = (PORT / "driver.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 50, f"examples/port/driver.py has {len(lines)} lines; the walkthrough promises under 50"


def test_check_finds_exactly_the_expected_deviations(monkeypatch: pytest.MonkeyPatch):
    """With the expectations file, every finding is `xfail` and every entry matched a finding: no `fail`, no `error`
    (a crash of the port or the harness), no `xpass` and no warning about a stale or unused entry."""
    monkeypatch.syspath_prepend(str(ROOT))  # how the README runs it: from the repository root
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = check(
            DRIVER, tuners=["ia3"], families=FAMILIES, isolate=False, verify=False,
            expectations=PORT / "expectations.toml",
        )  # fmt: skip
    counts = Counter(row.status for row in report.results)
    assert counts["pass"] > 0 and counts["xfail"] > 0, f"the walkthrough shows passes and a known deviation: {counts}"
    findings = [f"{row.status} {row.clause}: {row.detail}" for row in report.results
                if row.status in ("fail", "error", "xpass")]  # fmt: skip
    assert not findings, f"rows the expectations file does not account for: {findings}"
    stale = [str(w.message) for w in caught if "expectation" in str(w.message)]
    assert not stale, f"expectations no row fails: {stale}"
