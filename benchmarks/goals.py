"""The speed goals of the 1024-wide CPU float32 case (issue 7), judged from a record's medians and quartiles."""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE, PEFT, BASE = "reference", "peft", "base"
FORWARD_BACKWARD = "forward+backward"
# forward+backward / frozen base: the bounds (LoHa r=8 and BAT have arithmetic floors ≈1.19× and ≈1.5×)
BASE_BOUNDS = {"bone": 1.15, "miss": 1.15, "gralora": 1.15, "hra": 1.15, "ia3": 1.15, "loha": 1.25, "bat": 1.55}
SPEEDUP_OVER_PEFT = {"hra": 2.0, "loha": 2.0}  # forward+backward, peft / reference at least


@dataclass(frozen=True)
class Goal:
    goal: str
    workload: str
    tuner: str
    measured: str
    bound: str
    met: bool


def applies(record: dict) -> bool:
    settings = record["settings"]
    return (settings["device"], settings["dtype"], settings["size"]) == ("cpu", "float32", "small")


def stats_index(record: dict) -> dict[tuple[str, str, str, str], dict]:
    """(workload, tuner, operation, implementation) → stats."""
    index = {}
    for entry in record["benchmarks"]:
        p = entry["params"]
        index[p["workload"], p["tuner"], p["operation"], p["implementation"]] = entry["stats"]
    return index


def relative_noise(stats: dict) -> float:
    """Half the interquartile range relative to the median."""
    return stats["iqr"] / (2 * stats["median"])


def not_slower(ref: dict, other: dict) -> tuple[float, float]:
    """(reference / other medians, the bound 1 + the two sides' relative noise): within noise when ratio ≤ bound."""
    return ref["median"] / other["median"], 1 + relative_noise(ref) + relative_noise(other)


def evaluate(record: dict) -> list[Goal]:
    """The goals on every Linear workload of the record; none unless it is the cpu float32 small case."""
    if not applies(record):
        return []
    index = stats_index(record)
    workloads = list(dict.fromkeys(w for (w, _, _, _) in index))  # run order
    goals = []
    for workload in (w for w in workloads if w.startswith("linear")):
        tuners = list(dict.fromkeys(t for (w, t, _, _) in index if w == workload))
        for tuner in tuners:
            goals += _tuner_goals(index, workload, tuner)
    return goals


def _tuner_goals(index: dict, workload: str, tuner: str) -> list[Goal]:
    goals = []
    operations = [op for (w, t, op, impl) in index if (w, t, impl) == (workload, tuner, REFERENCE)]
    compared = [(op, *not_slower(index[workload, tuner, op, REFERENCE], index[workload, tuner, op, PEFT]))
                for op in operations if (workload, tuner, op, PEFT) in index]  # fmt: skip
    if compared:
        worst = max(compared, key=lambda c: c[1] / c[2])
        met = all(ratio <= bound for _, ratio, bound in compared)
        goals.append(Goal("reference ≤ peft, every operation (within noise)", workload, tuner,
                          f"worst {worst[1]:.2f}× ({worst[0]})", f"≤ {worst[2]:.2f}×", met))  # fmt: skip
    ref = index.get((workload, tuner, FORWARD_BACKWARD, REFERENCE))
    peft = index.get((workload, tuner, FORWARD_BACKWARD, PEFT))
    if tuner in SPEEDUP_OVER_PEFT and ref and peft:
        speedup, bound = peft["median"] / ref["median"], SPEEDUP_OVER_PEFT[tuner]
        goals.append(Goal("forward+backward: peft / reference", workload, tuner, f"{speedup:.2f}×", f"≥ {bound:.2f}×",
                          speedup >= bound))  # fmt: skip
    base = index.get((workload, tuner, FORWARD_BACKWARD, BASE))
    if tuner in BASE_BOUNDS and ref and base:
        ratio, bound = ref["median"] / base["median"], BASE_BOUNDS[tuner]
        goals.append(Goal("forward+backward: reference / base", workload, tuner, f"{ratio:.2f}×", f"≤ {bound:.2f}×",
                          ratio <= bound))  # fmt: skip
    return goals
