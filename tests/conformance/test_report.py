"""The report schema (DESIGN.md "Command line and report schema"), its file handling and its Markdown."""

import json
import os
import random
import re

import pytest

from conformance import report as rep
from conformance.matrix import render_matrix
from conformance.report import (
    Report,
    Row,
    load_notes,
    note_for,
    regenerate,
    render_markdown,
    report_paths,
    write_report,
)

# DESIGN.md's schema, written out here (not read from the module) so that a change of either is caught.
HEADER_KEYS = [
    "implementation", "driver", "driver_source", "version", "tunerspec", "spec_sha256", "torch", "python",
    "packages", "platform", "device", "math_modes", "profile", "seed", "tuners", "driver_options", "api_map",
    "command", "git_commit",
]  # fmt: skip
ROW_KEYS = [
    "tuner", "clause", "family", "scope", "variant", "init", "layer_kind", "dtype", "peer", "status", "detail",
    "repro", "repro_verified",
]  # fmt: skip
SUMMARY_KEYS = ["pass", "fail", "error", "skip", "xfail", "xpass", "warn", "skipped_surfaces"]

REPRO = "import torch\nfrom peft import HRAConfig\nprint(torch.__version__)\n"


def row(clause="HRA-FWD-1", status="pass", *, tuner="hra", family="forward", detail="", **axes):
    """A row with layer-scope float64 linear defaults; `axes` overrides any other field."""
    fields = dict(scope="layer", variant="plain", init="random", layer_kind="linear", dtype="float64", peer=None)
    fields |= axes
    return Row(tuner=tuner, clause=clause, family=family, status=status, detail=detail, **fields)


def header(**overrides):
    h = dict(
        implementation="peft",
        driver="peft",
        driver_source="conformance.drivers.peft:PeftDriver",
        version="0.21.2",
        tunerspec="0.1.0",
        spec_sha256="ab" * 32,
        torch="2.13.0",
        python="3.11.7",
        packages={"transformers": "4.57.1", "hypothesis": "6.140.0"},
        platform="Linux-x86_64",
        device="cpu",
        math_modes={"tf32": False, "deterministic_algorithms": False},
        profile="ci",
        seed=0,
        tuners=["bone", "miss", "gralora", "hra", "ia3", "loha"],
        driver_options={},
        api_map={"adapt": "peft.get_peft_model"},
        command="tunerspec check --impl peft",
        git_commit="0123456789abcdef0123456789abcdef01234567",
    )
    return h | overrides


def sample_rows():
    """Every status; two HRA-FWD-2 failures sharing a cause (only numbers differ), one with another cause;
    a lifecycle surface not offered by loha; a SHOULD row; an interchange row with a peer."""
    return [
        row("HRA-FWD-1"),
        row("HRA-FWD-1", dtype="float32"),
        row("HRA-FWD-2", "fail", layer_kind="conv2d", detail="max |err| 0.31 at (0, 2, 1, 1) > tol 1e-10",
            repro=REPRO, repro_verified=True),
        row("HRA-FWD-2", "fail", layer_kind="conv3d", detail="max |err| 0.07 at (1, 0, 0, 2, 3) > tol 1e-10",
            repro=REPRO + "# conv3d\n"),
        row("HRA-FWD-2", "error", layer_kind="conv1d", detail="RuntimeError: expected 3-D input"),
        row("HRA-MERGE-2", "xfail", family="unmerge", detail="expected failure: upstream issue 123"),
        row("HRA-R-3", "pass", detail=""),
        row("HRA-R-3.should", "warn", detail="forward accepted a zero column of U", repro=None),
        row("IA3-FWD-1", "xpass", tuner="ia3", variant="feedforward", init="identity",
            detail="expectation no longer fails"),
        row("CORE-SAVE-10", "pass", tuner="ia3", family="interchange", scope="layer", variant=None, init=None,
            dtype=None, peer="reference"),
        row("LOHA-FWD-1", tuner="loha", layer_kind="conv2d"),
        row("CORE-LIFE-1", "skip", tuner="loha", family="lifecycle", scope=None, variant=None, init=None,
            layer_kind=None, dtype=None, detail="surface not offered: lifecycle"),
        row("CORE-LIFE-1", "pass", tuner="hra", family="lifecycle", scope=None, variant=None, init=None,
            layer_kind=None, dtype=None),
    ]  # fmt: skip


def make_report(rows=None, **overrides):
    return Report(**header(**overrides), results=sample_rows() if rows is None else rows)


# ----------------------------------------------------------------------------------------------- schema


def test_json_round_trip_is_exact_and_in_schema_order():
    report = make_report()
    text = report.to_json()
    data = json.loads(text)
    assert list(data) == [*HEADER_KEYS, "summary", "results"]
    assert list(data["summary"]) == SUMMARY_KEYS
    assert all(list(r) == ROW_KEYS for r in data["results"])
    again = Report.from_dict(data)
    assert again.to_dict() == data
    assert again.to_json() == text
    assert text.endswith("}\n") and text.startswith('{\n  "implementation": "peft",\n')


def test_from_dict_rejects_a_hand_edited_summary_and_unknown_or_missing_keys():
    data = make_report().to_dict()
    with pytest.raises(ValueError, match="summary"):
        Report.from_dict(data | {"summary": data["summary"] | {"pass": 99}})
    with pytest.raises(ValueError, match="unknown keys \\['extra'\\]"):
        Report.from_dict(data | {"extra": 1})
    with pytest.raises(ValueError, match="missing keys \\['git_commit'\\]"):
        Report.from_dict({k: v for k, v in data.items() if k != "git_commit"})
    bad_row = data["results"][0] | {"status": "passed"}
    with pytest.raises(ValueError, match="passed"):
        Report.from_dict(data | {"results": [bad_row]})


def test_summary_counts_every_status_and_the_surfaces_not_offered():
    summary = make_report().summary
    assert summary == {
        "pass": 6, "fail": 2, "error": 1, "skip": 1, "xfail": 1, "xpass": 1, "warn": 1, "skipped_surfaces": [],
    }  # fmt: skip
    # lifecycle is offered for hra (a lifecycle row passed), so only loha lacks it
    assert make_report().not_offered_by_tuner() == {"loha": ["lifecycle"]}
    # a layers-only implementation: every lifecycle row is skipped, for an unclaimed tuner too
    rows = [r for r in sample_rows() if r.family != "lifecycle"] + [
        row("CORE-LIFE-1", "skip", tuner="bone", family="lifecycle", detail="tuner not claimed"),
        row("CORE-LIFE-1", "skip", tuner="loha", family="lifecycle", detail="surface not offered: lifecycle"),
        row("CORE-SAVE-1", "skip", tuner="loha", family="files", detail="surface not offered: files"),
    ]
    assert make_report(rows).summary["skipped_surfaces"] == ["lifecycle"]  # files: ia3's interchange row ran
    assert make_report(rows).not_offered_by_tuner() == {"loha": ["lifecycle", "files"]}
    assert make_report([]).summary == dict.fromkeys(SUMMARY_KEYS[:-1], 0) | {"skipped_surfaces": []}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(status="passed"), "status 'passed' is not one of"),
        (dict(status="PASS"), "status 'PASS'"),
        (dict(layer_kind="Conv2d"), "layer_kind 'Conv2d'"),  # never case-folded
        (dict(dtype="fp32"), "dtype 'fp32'"),
        (dict(tuner="lora"), "tuner 'lora'"),
        (dict(family="math"), "family 'math'"),
        (dict(clause="hra-fwd-1"), "not a clause ID"),
        (dict(status="warn"), "SHOULD part only"),
        (dict(clause="HRA-R-3.should", status="fail"), "never `fail`"),
        (dict(detail="two\nlines"), "one line"),
        (dict(status="skip", detail="surface not offered: files"), "family's surface 'layers'"),
        (dict(status="fail", family="files", detail="surface not offered: files"), "must be a skip"),
        (dict(repro_verified=True), "repro_verified without a repro"),
    ],
)
def test_row_rejects_what_the_schema_does_not_allow(change, message):
    fields = dict(zip(ROW_KEYS, ["hra", "HRA-FWD-1", "forward", "layer", "plain", "random", "linear", "float64",
                                 None, "pass", "", None, False], strict=True))  # fmt: skip
    Row(**fields)  # the unchanged row is valid
    with pytest.raises(ValueError, match=re.escape(message)):
        Row(**fields | change)


def test_report_rejects_two_rows_for_one_combination_and_checks_its_header():
    with pytest.raises(ValueError, match="two rows for one"):
        make_report([row("HRA-FWD-1"), row("HRA-FWD-1", "fail")])
    make_report([row("HRA-FWD-1"), row("HRA-FWD-1", peer="reference")])  # a different combination
    with pytest.raises(ValueError, match="profile"):
        make_report(profile="fast")
    with pytest.raises(ValueError, match="tuner ids"):
        make_report(tuners=["lora"])


def test_rows_sort_by_tuner_then_spec_clause_order_then_axes():
    rows = [
        row("LOHA-FWD-1", tuner="loha"),
        row("HRA-R-3.should", "warn"),
        row("HRA-FWD-1", dtype="float32"),
        row("HRA-R-3"),
        row("HRA-FWD-1", dtype="float64"),
        row("HRA-FWD-1", scope="model"),
        row("CORE-FWD-1"),
        row("BONE-FWD-1", tuner="miss"),
        row("BONE-FWD-1", tuner="bone"),
    ]
    got = [(r.tuner, r.clause, r.scope, r.dtype) for r in rep.sort_rows(rows)]
    assert got == [
        ("bone", "BONE-FWD-1", "layer", "float64"),
        ("miss", "BONE-FWD-1", "layer", "float64"),
        ("hra", "CORE-FWD-1", "layer", "float64"),  # CORE clauses come first in SPEC's index
        ("hra", "HRA-R-3", "layer", "float64"),  # §4.3 (R-*) precedes §4.4 (FWD-*)
        ("hra", "HRA-R-3.should", "layer", "float64"),
        ("hra", "HRA-FWD-1", "layer", "float64"),
        ("hra", "HRA-FWD-1", "layer", "float32"),
        ("hra", "HRA-FWD-1", "model", "float64"),
        ("loha", "LOHA-FWD-1", "layer", "float64"),
    ]
    custom = rep.sort_rows(rows, clause_order=["HRA-FWD-1", "HRA-R-3"])
    assert [r.clause for r in custom if r.tuner == "hra"][:3] == ["HRA-FWD-1"] * 3
    assert [r.clause for r in custom if r.tuner == "hra"][-1] == "CORE-FWD-1"  # not in the order: last
    assert make_report(list(reversed(rows))).to_dict()["results"] == make_report(rows).to_dict()["results"]


# ----------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("device", "profile", "name"),
    [
        ("cpu", "ci", "peft"),
        ("cuda", "ci", "peft-cuda"),
        ("cpu", "thorough", "peft-thorough"),
        ("cuda", "dev", "peft-cuda-dev"),
    ],
)
def test_report_paths_append_device_unless_cpu_and_profile_unless_ci(tmp_path, device, profile, name):
    assert report_paths(tmp_path, "peft", device, profile) == (tmp_path / f"{name}.json", tmp_path / f"{name}.md")


def test_report_paths_refuse_names_that_cannot_be_file_names(tmp_path):
    for args in (("../peft", "cpu", "ci"), ("peft", "cuda:0", "ci"), ("Peft", "cpu", "ci")):
        with pytest.raises(ValueError, match="report file"):
            report_paths(tmp_path, *args)


def test_write_report_writes_both_files_and_leaves_no_temporary_files(tmp_path):
    report = make_report(device="cuda")
    json_path, md_path = write_report(report, tmp_path / "out")
    assert (json_path, md_path) == report_paths(tmp_path / "out", "peft", "cuda", "ci")
    assert json_path.read_text(encoding="utf-8") == report.to_json()
    assert md_path.read_text(encoding="utf-8") == render_markdown(report, {})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["peft-cuda.json", "peft-cuda.md"]


def test_an_interrupted_write_leaves_the_old_files_intact(tmp_path, monkeypatch):
    old = make_report([row("HRA-FWD-1")])
    _, md_path = write_report(old, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_rename)
    with pytest.raises(OSError, match="disk full"):
        write_report(make_report(), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file left either

    # a failure after the JSON's rename leaves the Markdown file whole and no temp file behind
    monkeypatch.undo()
    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("interrupted")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="interrupted"):
        write_report(make_report(), tmp_path)
    assert md_path.read_bytes() == before["peft.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peft.json", "peft.md"]


def test_load_notes(tmp_path):
    assert load_notes(tmp_path, "peft") == {}
    (tmp_path / "peft.toml").write_text(
        '"HRA-FWD-2" = "peft\'s conv forward ignores dilation"\n"HRA-R-3.should" = """forward does\n  not check"""\n',
        encoding="utf-8",
    )
    assert load_notes(tmp_path, "peft") == {
        "HRA-FWD-2": "peft's conv forward ignores dilation",
        "HRA-R-3.should": "forward does not check",
    }
    (tmp_path / "bad.toml").write_text('"HRA-FWD-99" = "typo"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="HRA-FWD-99"):
        load_notes(tmp_path, "bad")
    (tmp_path / "bad.toml").write_text('"HRA-FWD-2" = 3\n', encoding="utf-8")
    with pytest.raises(ValueError, match="must be a string"):
        load_notes(tmp_path, "bad")


def test_a_tuner_table_in_the_notes_explains_that_tuners_rows_only(tmp_path):
    (tmp_path / "peft.toml").write_text(
        '"CORE-MERGE-4" = "shared cause"\n[loha]\n"CORE-MERGE-4" = "LoHa conv ignores padding_mode"\n',
        encoding="utf-8",
    )
    notes = load_notes(tmp_path, "peft")
    assert notes == {"CORE-MERGE-4": "shared cause", "loha:CORE-MERGE-4": "LoHa conv ignores padding_mode"}
    loha, hra = (row("CORE-MERGE-4", "fail", tuner=t, family="merge") for t in ("loha", "hra"))
    assert note_for(loha, notes) == "LoHa conv ignores padding_mode" and note_for(hra, notes) == "shared cause"
    (tmp_path / "bad.toml").write_text('[loha]\n"LOHA-FWD-99" = "typo"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="LOHA-FWD-99"):
        load_notes(tmp_path, "bad")


def test_regenerate_rerenders_every_report_with_its_notes(tmp_path):
    notes_dir = tmp_path / "notes"
    notes_dir.mkdir()
    (notes_dir / "peft.toml").write_text('"HRA-FWD-2" = "peft\'s conv forward ignores dilation"\n', encoding="utf-8")
    (notes_dir / "peft-cuda.toml").write_text('"HRA-R-3.should" = "cuda only: no check"\n', encoding="utf-8")
    for device in ("cpu", "cuda"):
        write_report(make_report(device=device), tmp_path)
    for md in tmp_path.glob("*.md"):
        md.write_text("stale\n", encoding="utf-8")
    assert regenerate(tmp_path) == [tmp_path / "peft-cuda.md", tmp_path / "peft.md", tmp_path / "README.md"]
    cpu, cuda = (tmp_path / "peft.md").read_text(encoding="utf-8"), (tmp_path / "peft-cuda.md").read_text("utf-8")
    assert cpu == render_markdown(make_report(), {"HRA-FWD-2": "peft's conv forward ignores dilation"})
    assert "ignores dilation" in cuda and "cuda only: no check" in cuda and "cuda only" not in cpu
    assert regenerate(tmp_path) and (tmp_path / "peft.md").read_text(encoding="utf-8") == cpu  # idempotent
    assert not list(tmp_path.glob(".*"))


def test_regenerate_refuses_a_report_whose_file_name_disagrees_with_its_header(tmp_path):
    json_path, _ = write_report(make_report(), tmp_path)
    json_path.rename(tmp_path / "peft-cuda.json")
    with pytest.raises(ValueError, match=r"names it peft\.json"):
        regenerate(tmp_path)


def test_regenerate_refuses_a_json_file_that_is_not_a_conformance_report(tmp_path):
    (tmp_path / "coverage.json").write_text('{"mutants": []}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"coverage\.json: not a valid conformance report"):
        regenerate(tmp_path)


# ----------------------------------------------------------------------------------------------- markdown


def findings(md):
    return md.split("\n## Findings\n", 1)[1].split("\n## All rows\n", 1)[0]


def groups(md):
    """Findings section → {heading: body}."""
    parts = re.split(r"^### (.+)$", findings(md), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_markdown_is_deterministic_and_independent_of_row_order():
    notes = {"HRA-FWD-2": "peft's conv forward ignores dilation"}
    md = render_markdown(make_report(), notes)
    assert md == render_markdown(make_report(), notes)
    for seed in range(5):
        shuffled = sample_rows()
        random.Random(seed).shuffle(shuffled)
        assert render_markdown(make_report(shuffled), notes) == md
    assert md.endswith("\n") and not md.endswith("\n\n")


def test_markdown_header_names_what_ran_on_what():
    md = render_markdown(make_report(device="cuda", profile="thorough", seed=7), {})
    head = md.split("\n## Summary\n")[0]
    for text in ("peft", "0.21.2", "conformance.drivers.peft:PeftDriver", "torch 2.13.0", "python 3.11.7",
                 "**cuda**", "**thorough**", "seed 7", "tf32=false", "deterministic_algorithms=false",
                 "`tunerspec check --impl peft`", "0123456789abcdef0123456789abcdef01234567", "ab" * 32,
                 "transformers 4.57.1", "peft.get_peft_model"):  # fmt: skip
        assert text in head, text


def test_markdown_summary_tables_count_per_tuner_and_family():
    md = render_markdown(make_report(), {})
    summary = md.split("\n## Summary\n", 1)[1].split("\n## Findings\n")[0]
    assert "| tuner | pass | fail | error | skip | xfail | xpass | warn | rows |" in summary
    assert "| hra | 4 | 2 | 1 | · | 1 | · | 1 | 9 |" in summary
    assert "| **all** | 6 | 2 | 1 | 1 | 1 | 1 | 1 | 13 |" in summary
    assert "| hra | forward | layers | 3 | 2 | 1 | · | · | · | 1 | 7 |" in summary
    assert "| loha | lifecycle | lifecycle | · | · | · | 1 | · | · | · | 1 |" in summary
    assert "Surfaces not offered: none.\n\nNot offered for some tuners only:\n\n- loha: lifecycle\n" in summary


def test_markdown_groups_findings_by_root_cause():
    gs = groups(render_markdown(make_report(), {}))
    # fail×2 differing only in numbers: one group; the error (another detail) its own; xfail is not a finding
    assert list(gs) == [  # in report order: SPEC's §4.3 (HRA-R-*) precedes §4.4 (HRA-FWD-*)
        "HRA-R-3.should (" + rep.clauses()["HRA-R-3"].name + ") — 1 warn",
        "HRA-FWD-2 (" + rep.clauses()["HRA-FWD-2"].name + ") — 1 error",  # conv1d sorts before conv2d
        "HRA-FWD-2 (" + rep.clauses()["HRA-FWD-2"].name + ") — 2 fail",
        "IA3-FWD-1 (" + rep.clauses()["IA3-FWD-1"].name + ") — 1 xpass",
    ]
    fails = list(gs.values())[2]
    assert "| hra | HRA-FWD-2 | **fail** | layer | plain | random | conv2d | float64 | — |" in fails
    assert "| hra | HRA-FWD-2 | **fail** | layer | plain | random | conv3d | float64 | — |" in fails
    assert "Example (hra, HRA-FWD-2, conv2d, float64): `max |err| 0.31 at (0, 2, 1, 1) > tol 1e-10`" in fails
    assert "HRA-MERGE-2" not in findings(render_markdown(make_report(), {}))


def test_markdown_notes_explain_and_merge_groups_sharing_a_cause():
    note = "peft's conv forward ignores dilation"
    gs = groups(render_markdown(make_report(), {"HRA-FWD-2": note, "IA3-FWD-1": note}))
    assert len(gs) == 2  # the fail, the error and the xpass: one cause; the warn: another
    (other, _), (title, body) = gs.items()
    assert title.startswith("HRA-FWD-2 (") and "IA3-FWD-1 (" in title and title.endswith("— 2 fail, 1 error, 1 xpass")
    assert f"**Explanation:** {note}" in body
    # the example is the row whose repro was verified, its detail beside its repro
    assert "Example (hra, HRA-FWD-2, conv2d, float64): `max |err| 0.31" in body and "verified: yes" in body
    assert other.startswith("HRA-R-3.should")


def test_markdown_shows_each_group_repro_in_a_python_block_with_its_verification():
    warn, error, fails, _ = groups(render_markdown(make_report(), {})).values()
    assert "Repro (verified: yes, it ran standalone in a clean subprocess):\n\n```python\n" in fails
    assert "```python\n" + REPRO + "```" in fails  # the verified one of the two
    assert "Repro: none recorded." in warn and "Repro: none recorded." in error
    unverified = [row("HRA-FWD-2", "fail", detail="x", repro="s = '''```'''\nprint(s)")]
    body = findings(render_markdown(make_report(unverified), {}))
    assert "Repro (verified: no):\n\n````python\ns = '''```'''\nprint(s)\n````" in body  # a longer fence


def test_markdown_lists_every_row_with_what_where_and_how():
    report = make_report()
    table = render_markdown(report, {}).split("\n## All rows\n", 1)[1]
    lines = [line for line in table.splitlines() if line.startswith("| ") and line[2:5] not in ("cla", "---")]
    assert len(lines) == len(report.results)
    assert "| HRA-FWD-2 | forward | layer | plain | random | conv2d | float64 | — | **fail** | " in table
    assert "`max \\|err\\| 0.31 at (0, 2, 1, 1) > tol 1e-10` |" in table  # pipes escaped inside the table
    assert "| CORE-SAVE-10 | interchange | layer | — | — | linear | — | reference | pass |  |" in table
    assert table.index("### hra") < table.index("### ia3") < table.index("### loha")


def test_strip_numbers_keeps_identifiers_and_clause_ids():
    assert rep.strip_numbers("err 0.31 at (0, 2) in float64 conv2d, tol 1e-10, HRA-FWD-2, -3.5e+2, 0x7f") == (
        "err # at (#) in float64 conv2d, tol #, HRA-FWD-2, #"
    )


def test_the_matrix_counts_each_implementations_rows_per_tuner_and_family(tmp_path):
    reference = make_report([row("HRA-FWD-1"), row("HRA-FWD-2", layer_kind="conv2d")], implementation="reference",
                            driver="reference", version="0.1.0")  # fmt: skip
    peft = make_report(
        [
            row("HRA-FWD-1"),
            row("HRA-FWD-2", "fail", layer_kind="conv2d"),
            row("CORE-LIFE-1", "skip", family="lifecycle", detail="surface not offered: lifecycle"),
        ]
    )
    text = render_matrix([peft, reference])
    assert "| tuner | reference | peft |" in text  # the reference first, then by name
    assert "| hra | 2 ✓ | 1 pass · **1 fail** |" in text
    hra = text[text.index("## hra") :]
    assert "| forward | 2 ✓ | 1 pass · **1 fail** |" in hra and "| lifecycle | — | skip |" in hra
    assert "| ia3 | — | — |" in text
    for report in (reference, peft):
        write_report(report, tmp_path)
    assert regenerate(tmp_path)[-1] == tmp_path / "README.md"
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == render_matrix([reference, peft])
