"""`tunerspec check --impl reference --profile ci`, run once here (in-process, the ci budget of DESIGN): every row
passes or is an honest skip, the committed `reports/conformance/reference.json` has exactly these rows, and the
ci profile draws every layer kind, conv hyper-parameter, input rank, dtype, rank and variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance import coverage
from conformance.check import check
from conformance.report import Report, regenerate
from conformance.spec.records import RECORDS

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "reports" / "conformance" / "reference.json"
ROW_FIELDS = ("tuner", "clause", "family", "scope", "variant", "init", "layer_kind", "dtype", "peer", "status")
# The reasons the reference may skip a row for: no GPU here, and clauses that do not apply to a tuner (SPEC §0.2).
HONEST_SKIPS = (
    "CUDA is not available",
    "not applicable",
    "does not apply",
    "does not carry over to miss",
    "has its own SAVE clause",
    "the implementation has a native bone tuner",
)

CONV = ("conv1d", "conv2d", "conv3d")
REQUIRED = (
    {f"kind={kind}" for kind in ("linear", "hf_conv1d", *CONV)}
    | {f"dtype={dtype}" for dtype in ("float64", "float32", "bfloat16", "float16")}
    | {f"variant={variant.name}" for record in RECORDS.values() for variant in record.variants}
    | {"rank=1", "rank>1", "linear_input=empty"}
    | {f"linear_input_rank={n}" for n in (1, 2, 3, 4)}
    | {
        f"{kind}:{feature}"
        for kind in CONV
        for feature in (
            "stride>1", "dilation>1", "groups>1", "kernel=1", "kernel=>1", "padding=valid", "padding=explicit",
            "padding_mode=zeros", "padding_mode=reflect", "padding_mode=replicate", "padding_mode=circular",
            "input=batched", "input=unbatched", "input=batch0",
        )
    }
    | {f"{kind}:padding=same" for kind in ("conv1d", "conv2d")}
)  # fmt: skip


@pytest.fixture(scope="module")
def run() -> tuple[Report, set[str]]:
    with coverage.recording() as seen:
        report = check("reference", profile="ci", seed=0, isolate=False, command="tunerspec check")
    return report, set(seen)


def test_the_reference_passes_every_row(run):
    report, _ = run
    bad = [(r.tuner, r.clause, r.status, r.detail) for r in report.results if r.status not in ("pass", "skip")]
    assert not bad, bad[:10]
    skips = [(r.tuner, r.clause, r.detail) for r in report.results if r.status == "skip"]
    assert all(any(reason in detail for reason in HONEST_SKIPS) for *_, detail in skips), skips[:10]


def test_the_committed_report_has_these_rows(run):
    report, _ = run
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert committed["profile"] == "ci" and committed["seed"] == 0 and committed["command"] == "tunerspec check"
    key = lambda row: tuple(str(row[f]) for f in ROW_FIELDS)  # noqa: E731
    assert sorted(map(key, committed["results"])) == sorted(key(vars(row)) for row in report.results)


def test_the_ci_profile_covers_every_axis(run):
    _, seen = run
    assert not REQUIRED - seen, sorted(REQUIRED - seen)


def test_committed_markdown_equals_its_regeneration(tmp_path):
    """DESIGN: `tunerspec report` rebuilds every committed `.md` from its JSON (and notes) byte for byte."""
    committed = COMMITTED.parent
    for path in committed.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    for md_path in regenerate(tmp_path, notes_dir=committed / "notes"):
        assert md_path.read_text(encoding="utf-8") == (committed / md_path.name).read_text(encoding="utf-8")
