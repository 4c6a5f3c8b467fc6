"""Tables (Markdown) and the overhead plot (PNG) of a benchmark record, built from its JSON alone, deterministically.
A hand-written `notes/<label>.md` beside the JSON is appended as the closing note."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter
from tabulate import tabulate

from .goals import BASE, FORWARD_BACKWARD, evaluate, stats_index
from .record import is_bench_record

MIB = 2**20
PLOTTED = (FORWARD_BACKWARD, "train step")  # the operation plotted per workload


def implementations(record: dict) -> list[str]:
    return list(record["implementations"])


def _ms(stats: dict | None) -> str:
    """Median ± half the interquartile range, in ms."""
    if stats is None:
        return "–"
    return f"{stats['median'] * 1e3:.2f} ±{stats['iqr'] * 5e2:.2f}"


def _ratio(a: dict | None, b: dict | None) -> str:
    return "–" if a is None or b is None else f"{a['median'] / b['median']:.2f}"


def timing_table(record: dict, workload: str) -> str:
    """tuner × operation: medians (ms), each implementation over the base, and every pair of implementations."""
    index = stats_index(record)
    impls = implementations(record)
    headers = ["tuner", "operation", "base ms ↓", *(f"{i} ms ↓" for i in impls), *(f"{i} ×base ↓" for i in impls),
               *(f"{a}/{b} ↓" for a, b in combinations(impls, 2))]  # fmt: skip
    rows = []
    for w, tuner, operation in dict.fromkeys((w, t, op) for (w, t, op, _) in index):
        if w != workload:
            continue
        cell = {name: index.get((w, tuner, operation, name)) for name in (BASE, *impls)}
        rows.append([tuner, operation, _ms(cell[BASE]), *(_ms(cell[i]) for i in impls),
                     *(_ratio(cell[i], cell[BASE]) for i in impls),
                     *(_ratio(cell[a], cell[b]) for a, b in combinations(impls, 2))])  # fmt: skip
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def _check(facts: dict) -> str:
    check = facts.get("check")
    if check is None:
        return "–"
    if "loss" in check:
        return f"loss {check['loss']:.4g}, {'finite' if check['finite'] else 'NOT FINITE'}"
    if not (check["finite"] and check["shape_ok"]):
        verdict = "NOT FINITE" if check["shape_ok"] else "WRONG SHAPE"
    else:
        verdict = {True: "agrees", False: "DIFFERS", None: "finite, not compared"}[check["agrees"]]
    detail = f"{verdict}: max rel. diff {check['max_rel_diff']:.1e} to {check['compared_to']}"
    return detail + (f" ({check['note']})" if check.get("note") else "")


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / MIB:.2f}"


def subjects_table(record: dict) -> str:
    headers = ["workload", "tuner", "implementation", "runs as", "trainable params", "saved for backward MiB ↓",
               "peak MiB ↓", "output check"]  # fmt: skip
    rows = [[f["workload"], f["tuner"], f["implementation"], f["implementation_tuner"] or "–",
             f"{f['trainable_parameters']:,}", _mib(f.get("saved_bytes")), _mib(f.get("peak_bytes")), _check(f)]
            for f in record["subjects"]]  # fmt: skip
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def goals_table(record: dict) -> str | None:
    goals = evaluate(record)
    if not goals:
        return None
    rows = [[g.goal, g.workload, g.tuner, g.measured, g.bound, "yes" if g.met else "**no**"] for g in goals]
    met = sum(g.met for g in goals)
    table = tabulate(rows, ["goal", "workload", "tuner", "measured", "bound", "met?"], tablefmt="github")
    return f"{met} of {len(goals)} goals met.\n\n{table}"


def _header(record: dict) -> list[str]:
    s, m = record["settings"], record["machine_info"]
    versions = ", ".join(f"{name} {v}" for name, v in record["implementations"].items())
    load = " / ".join(f"{x:.2f}" for x in m["load_average"])
    load_after = " / ".join(f"{x:.2f}" for x in m.get("load_average_after", []))
    return [
        f"# Benchmarks: {s['label']}",
        "",
        f"`{record['command']}` — {record['datetime']}, commit {record['commit_info']['id'] or 'unknown'}, "
        f"wall {record['wall_s']} s.",
        "",
        f"- device {s['device']}"
        + (f" ({m['cuda']['device']})" if "cuda" in m else "")
        + f", dtype {s['dtype']}, size {s['size']}, {s['tokens']} tokens per batch; TF32 matmul "
        f"{record['math_modes']['tf32_matmul']}, cuDNN {record['math_modes']['tf32_cudnn']}",
        f"- {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, load average {load} before, {load_after} "
        f"after; torch {m['torch']}, Python {m['python_version']}, {m['platform']}",
        f"- implementations: {versions}",
        "",
        f"Times are medians of {s['rounds']} rounds (after {s['warmup']} warm-up rounds) in which the base layer and "
        "every implementation run interleaved, one call each in a rotating order; `±` is half the interquartile "
        "range. `×base` divides by the frozen base layer's median in the same run, `a/b` one implementation's median "
        "by another's (below 1: `a` is faster). ↓ lower is better. Operations: *forward* in train mode (grad "
        "enabled), *forward+backward* with `x.requires_grad=True`, *eval forward* in eval mode without grad, "
        "*merged forward* the same with the adapter merged, *merge*/*unmerge* the weight update alone; every "
        "implementation runs the same adapter weights (the first one's init plus seeded noise) with its upstream "
        "defaults. peft runs Bone and BAT as MiSS (`runs as`).",
    ]


def render_markdown(record: dict, notes: str | None = None) -> str:
    lines = _header(record)
    goals = goals_table(record)
    if goals:
        lines += ["", "## Goals (1024-wide Linear, CPU float32)", "", goals]
    workloads = list(dict.fromkeys(e["params"]["workload"] for e in record["benchmarks"]))
    for workload in workloads:
        lines += ["", f"## {workload}", "", timing_table(record, workload)]
    lines += ["", "## Parameters, memory, output checks", "",
              "Saved for backward: the unique storages autograd keeps after one train-mode forward with "
              "`x.requires_grad=True`, leaving out parameters and the input. Peak: CUDA only, one forward+backward "
              "above the memory allocated before it. Output check: eval-mode outputs at equal weights against the "
              "first implementation (end to end: the loss after the timed training steps).", "",
              subjects_table(record)]  # fmt: skip
    if record["skipped"]:
        lines += ["", "## Not measured", ""]
        lines += [f"- {s['workload']} · {s['tuner']} · {s['implementation']}: {s['reason']}" for s in record["skipped"]]
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> None:
    """Per workload, the plotted operation's median over the base's, per tuner and implementation (log scale)."""
    index = stats_index(record)
    impls = implementations(record)
    panels = [(w, op) for w, op in dict.fromkeys((w, op) for (w, _, op, _) in index) if op in PLOTTED]
    fig = Figure(figsize=(9, 2.6 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    width = 0.8 / len(impls)
    for ax, (workload, operation) in zip(axes[:, 0], panels, strict=True):
        tuners = list(dict.fromkeys(t for (w, t, op, _) in index if (w, op) == (workload, operation)))
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for j, tuner in enumerate(tuners):
                stats, base = (
                    index.get((workload, tuner, operation, impl)),
                    index.get((workload, tuner, operation, BASE)),
                )
                if stats and base:
                    xs.append(j + (k - (len(impls) - 1) / 2) * width)
                    ys.append(stats["median"] / base["median"])
            ax.bar(xs, ys, width, label=impl)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g×"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g×"))
        ax.set_xticks(range(len(tuners)), tuners)
        ax.set_ylabel("over base ↓")
        ax.set_title(f"{workload}: {operation}", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"{record['settings']['label']}: overhead vs the frozen base (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})


def write(json_path: Path) -> list[Path]:
    """`<label>.md` and `<label>.png` beside `<label>.json`, with `notes/<label>.md` if present."""
    record = json.loads(json_path.read_text(encoding="utf-8"))
    notes_path = json_path.parent / "notes" / f"{json_path.stem}.md"
    notes = notes_path.read_text(encoding="utf-8") if notes_path.exists() else None
    md_path, png_path = json_path.with_suffix(".md"), json_path.with_suffix(".png")
    md_path.write_text(render_markdown(record, notes), encoding="utf-8")
    plot(record, png_path)
    return [md_path, png_path]


def regenerate(report_dir: str | Path = "reports/benchmarks") -> list[Path]:
    """Rebuild the Markdown and plot of every benchmark record in `report_dir`; returns the paths written."""
    written = []
    for json_path in sorted(Path(report_dir).glob("*.json")):
        if is_bench_record(json.loads(json_path.read_text(encoding="utf-8"))):
            written += write(json_path)
    return written
