"""The benchmark harness: a smoke run at tiny sizes (every operation, outputs checked, record + tables + plot
written), the timer's interleaving and CUDA synchronisation, the memory metric and the goals. No timing
assertions."""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from benchmarks import timer
from benchmarks.cli import add_bench_parser, run_bench
from benchmarks.goals import evaluate
from benchmarks.metrics import saved_tensor_bytes
from benchmarks.operations import OPERATIONS
from benchmarks.report import regenerate
from benchmarks.run import run
from benchmarks.settings import Settings
from benchmarks.timer import Candidate, round_robin
from benchmarks.workloads import TUNERS, LayerWorkload, ModelWorkload, Size
from conformance.models import LLAMA

PYTEST_BENCHMARK_STATS = {"min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "rounds", "outliers", "ops"}
TINY = Size(
    layers=(LayerWorkload("linear", 64, 128), LayerWorkload("conv2d", 8, 8, kernel_size=3, image_side=4)),
    model=ModelWorkload(dict(LLAMA), seq_len=8),
    tokens=16,
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    settings = Settings(tokens=16, rounds=2, warmup=1, size="tiny", label="tiny", tuners=tuple(TUNERS), threads=1)
    with warnings.catch_warnings():  # IA3's unmerge warnings, Bone's deprecation
        warnings.simplefilter("ignore")
        record = run(settings, TINY, out, "pytest")
    return out, settings, record


def test_smoke_run_times_every_operation_of_every_tuner_and_implementation(smoke):
    _, settings, record = smoke
    timed = {(e["params"]["workload"], e["params"]["tuner"], e["params"]["operation"], e["name"])
             for e in record["benchmarks"]}  # fmt: skip
    linear, conv, model = TINY.layers[0].name, TINY.layers[1].name, TINY.model.name
    for tuner in TUNERS:
        for operation in OPERATIONS:
            for impl in ("reference", "peft"):
                assert (linear, tuner, operation, impl) in timed
            assert ((linear, tuner, operation, "base") in timed) == (operation not in ("merge", "unmerge"))
        assert (model, tuner, "train step", "base") in timed
        assert ((conv, tuner, "forward+backward", "reference") in timed) == TUNERS[tuner].conv2d
    for entry in record["benchmarks"]:
        assert PYTEST_BENCHMARK_STATS <= set(entry["stats"]) and entry["stats"]["rounds"] == settings.rounds


def test_smoke_run_outputs_are_finite_and_agree_at_equal_weights(smoke):
    _, _, record = smoke
    checked = [s for s in record["subjects"] if "check" in s]
    assert {s["implementation"] for s in checked} == {"reference", "peft"}
    for subject in checked:
        check = subject["check"]
        assert check["finite"], subject
        if "loss" not in check:  # a layer: same shape as the base output; the same values unless not copied
            assert check["shape_ok"] and check["agrees"] is not False, subject
            assert check["agrees"] or check["note"], subject
    trainable = {
        (s["workload"], s["tuner"], s["implementation"]): s["trainable_parameters"] for s in record["subjects"]
    }
    assert trainable[TINY.layers[0].name, "loha", "reference"] == 2 * 8 * (64 + 128)  # two rank-8 pairs, SPEC §6
    assert trainable[TINY.layers[0].name, "loha", "base"] == 0


def test_smoke_run_writes_json_markdown_and_png_and_report_rebuilds_them(smoke):
    out, _, record = smoke
    assert json.loads((out / "tiny.json").read_text(encoding="utf-8")) == record
    assert (out / "tiny.png").read_bytes().startswith(b"\x89PNG")
    markdown = (out / "tiny.md").read_text(encoding="utf-8")
    for workload in (*TINY.layers, TINY.model):
        assert f"## {workload.name}" in markdown
    assert "DIFFERS" not in markdown and "NOT FINITE" not in markdown
    (out / "tiny.md").write_text("stale", encoding="utf-8")
    assert regenerate(out) == [out / "tiny.md", out / "tiny.png"]
    assert (out / "tiny.md").read_text(encoding="utf-8") == markdown


def test_committed_benchmark_markdown_equals_its_regeneration(tmp_path):
    committed = Path(__file__).resolve().parents[1] / "reports" / "benchmarks"
    records = sorted(committed.glob("*.json"))
    assert records, "no committed benchmark record"
    shutil.copytree(committed / "notes", tmp_path / "notes")
    for record in records:
        shutil.copy(record, tmp_path)
    for md_path in (p for p in regenerate(tmp_path) if p.suffix == ".md"):
        assert md_path.read_text(encoding="utf-8") == (committed / md_path.name).read_text(encoding="utf-8")


def test_cuda_timing_synchronises_inside_the_timed_region(monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(timer.torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    monkeypatch.setattr(timer.time, "perf_counter", lambda: events.append("clock") or float(len(events)))
    candidates = {name: Candidate(run=lambda name=name: events.append(name)) for name in ("a", "b")}
    round_robin(candidates, rounds=3, warmup=0, device="cuda")
    runs = [i for i, event in enumerate(events) if event in candidates]
    assert len(runs) == 6
    for i in runs:  # queued work is waited for before the clock starts and before it stops
        assert events[i - 2 : i] == ["sync", "clock"] and events[i + 1 : i + 3] == ["sync", "clock"]


def test_round_robin_rotates_the_call_order_every_round():
    calls: list[str] = []
    candidates = {name: Candidate(run=lambda name=name: calls.append(name)) for name in "abc"}
    stats = round_robin(candidates, rounds=3, warmup=0)
    assert calls == list("abcbcacab")
    assert {s["rounds"] for s in stats.values()} == {3}


def test_saved_tensor_bytes_counts_each_storage_once_and_leaves_out_live_tensors():
    a = torch.randn(10, requires_grad=True)

    def graph() -> torch.Tensor:
        e = a.exp()  # saves its result e: one storage of 10 floats
        half = e[:5] * e[5:]  # saves two views of e's storage: counted once, as the whole storage
        return (half * a[:5]).sum()  # saves half (5 floats) and a view of a (alive: left out when listed)

    floats = 4
    assert saved_tensor_bytes(graph, [a]) == (10 + 5) * floats
    assert saved_tensor_bytes(graph, []) == (10 + 5 + 10) * floats


def _record(reference_ms: float, peft_ms: float, iqr_ms: float) -> dict:
    entries = [
        {"params": {"workload": "linear 1024→1024", "tuner": "hra", "operation": "forward+backward",
                    "implementation": impl}, "stats": {"median": ms / 1e3, "iqr": iqr_ms / 1e3}}
        for impl, ms in (("base", 10.0), ("reference", reference_ms), ("peft", peft_ms))
    ]  # fmt: skip
    return {"settings": {"device": "cpu", "dtype": "float32", "size": "small"}, "benchmarks": entries}


def test_goals_judge_the_reference_against_peft_within_noise_and_against_the_base():
    met = {g.goal: g.met for g in evaluate(_record(reference_ms=10.5, peft_ms=10.0, iqr_ms=1.0))}
    assert met["reference ≤ peft, every operation (within noise)"]  # 1.05× inside ±5% + ±5% noise
    assert not met["forward+backward: peft / reference"]  # peft is not 2× slower
    assert met["forward+backward: reference / base"]  # 1.05 ≤ 1.15
    met = {g.goal: g.met for g in evaluate(_record(reference_ms=12.0, peft_ms=30.0, iqr_ms=0.0))}
    assert met["forward+backward: peft / reference"] and not met["forward+backward: reference / base"]
    met = {g.goal: g.met for g in evaluate(_record(reference_ms=10.5, peft_ms=10.0, iqr_ms=0.0))}
    assert not met["reference ≤ peft, every operation (within noise)"]  # 5% slower, no noise measured


def test_full_size_is_refused_on_cpu(tmp_path):
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--size", "full", "--out", str(tmp_path)])
    assert run_bench(args) == 2
    assert not any(tmp_path.iterdir())
