"""The contracts as plain pytest: `pytest -n 2` (pytest-xdist) gives the same rows as a serial run, `--junitxml`
records each row's clause and status, and the report header names the run."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET


def _pytest(tmp_path, name, *extra):
    rows, junit = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--pyargs", "conformance.contracts.test_disable",
         "--impl", "reference", "--tuner", "ia3", "--tuner", "loha", "--hypothesis-profile=tunerspec-ci",
         "--tunerspec-seed=0", f"--tunerspec-rows={rows}", f"--junitxml={junit}", *extra],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    logged = [json.loads(line) for line in rows.read_text(encoding="utf-8").splitlines()]
    found = sorted(json.dumps(e["row"], sort_keys=True) for e in logged if e["event"] == "done")
    return done.stdout, found, ET.parse(junit)


def test_xdist_gives_the_serial_rows_and_junitxml_names_each_rows_clause(tmp_path):
    serial_out, serial, junit = _pytest(tmp_path, "serial")
    _, parallel, _ = _pytest(tmp_path, "parallel", "-n", "2")
    assert serial and parallel == serial
    assert "tunerspec: implementation reference 0.1.0 (--impl reference)" in serial_out and "seed 0" in serial_out
    properties = [
        {p.get("name"): p.get("value") for p in case.iter("property")} for case in junit.getroot().iter("testcase")
    ]
    rows = [json.loads(row) for row in serial]
    assert sorted((p["tunerspec_clause"], p["tunerspec_status"]) for p in properties) == sorted(
        (row["clause"], row["status"]) for row in rows
    )
