"""The mutation kill matrix: every catalog mutant against all contract families of its tuner, and which clauses
killed it (`python -m conformance.mutants`; `render_markdown` renders the result for `mutation.md`).

A clause kills a mutant when one of its rows is `fail`; an `error` row does not count (a mutant that only crashes
the harness is not killed). A clause counts as covered when some mutant's run turned one of its rows to `fail`.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ._version import __version__
from .check import check, git_commit
from .mutants import CATALOG, Mutant
from .report import Row
from .rows import SHOULD
from .spec.clauses import clauses, spec_sha256
from .spec.records import RECORDS


def mutant_result(mutant: Mutant, rows: Iterable[Row]) -> dict[str, Any]:
    """One mutant's entry: the clauses with a `fail` row (`killed_by`) and those with an `error` row."""
    rows = list(rows)
    killed_by = sorted({row.clause.removesuffix(SHOULD) for row in rows if row.status == "fail"})
    errors = sorted({row.clause.removesuffix(SHOULD) for row in rows if row.status == "error"})
    return {
        "spec": mutant.spec,
        "name": mutant.driver_class.name,
        "tuner": mutant.tuner,
        "kind": mutant.kind,
        "description": mutant.description,
        "expected_kills": list(mutant.kills),
        "killed_by": killed_by,
        "errors": errors,
        "killed": bool(killed_by),
    }


def applies_to(clause_id: str) -> list[str]:
    """The tuners whose runs have rows of the clause: every tuner for CORE, else those checking its prefix."""
    prefix = clause_id.split("-", 1)[0]
    return [tuner for tuner, record in RECORDS.items() if prefix == "CORE" or prefix in record.clause_prefixes]


def unkilled_clauses(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every SPEC clause no mutant's run turned to `fail`, with the tuners it applies to."""
    killed = {clause for result in results for clause in result["killed_by"]}
    return [{"clause": c, "tuners": applies_to(c)} for c in clauses() if c not in killed]


def run_matrix(
    mutants: Iterable[Mutant] = CATALOG,
    jobs: int = 1,
    profile: str = "ci",
    seed: int = 0,
    command: str | None = None,
    done: Iterable[dict[str, Any]] = (),
    on_update: Callable[[dict[str, Any]], None] = lambda data: None,
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run every mutant against all families of its tuner (each in a child process, no stopping, repros not
    verified) and return the matrix (`matrix`). Results in `done` (an earlier run's, same spec
    and tuner) are kept instead of rerun; `on_update` gets the matrix so far after each mutant (a long run can be
    resumed)."""
    mutants = list(mutants)
    kept = {(r["spec"], r["tuner"]): r for r in done}
    results = {(m.spec, m.tuner): kept[m.spec, m.tuner] for m in mutants if (m.spec, m.tuner) in kept}
    lock = threading.Lock()

    def run(mutant: Mutant) -> None:
        report = check(mutant.spec, tuners=[mutant.tuner], profile=profile, seed=seed, isolate=True, verify=False)
        result = {**mutant_result(mutant, report.results), "git_commit": git_commit()}
        verdict = f"killed by {', '.join(result['killed_by'])}" if result["killed"] else "NOT KILLED"
        progress(f"{mutant.spec} ({mutant.tuner}): {verdict}")
        with lock:
            results[mutant.spec, mutant.tuner] = result
            on_update(matrix(mutants, results, profile, seed, command))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(run, [m for m in mutants if (m.spec, m.tuner) not in results]))
    return matrix(mutants, results, profile, seed, command)


def matrix(
    mutants: list[Mutant], results: dict[tuple[str, str], dict], profile: str, seed: int, command: str | None
) -> dict[str, Any]:
    """The matrix file's content: header, the results so far in catalog order (`complete` once every mutant has
    one), kill rate and the clauses no mutant killed."""
    ordered = [results[m.spec, m.tuner] for m in mutants if (m.spec, m.tuner) in results]
    killed = sum(result["killed"] for result in ordered)
    unkilled = unkilled_clauses(ordered)
    return {
        "tunerspec": __version__,
        "spec_sha256": spec_sha256(),
        "profile": profile,
        "seed": seed,
        "command": command,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "complete": len(ordered) == len(mutants),
        "catalog_size": len(mutants),
        "mutants": ordered,
        "killed": killed,
        "total": len(ordered),
        "kill_rate": killed / len(ordered) if ordered else 0.0,
        "clauses": len(clauses()),
        "clauses_killed": len(clauses()) - len(unkilled),
        "unkilled_clauses": unkilled,
    }


def render_markdown(data: dict[str, Any]) -> str:
    """`mutation.md`: the header, the kill rate, one row per mutant with the clauses that killed it, and the
    clauses no mutant kills yet. Deterministic: the same data gives the same text."""
    lines = [
        "# Mutation kill matrix",
        "",
        f"tunerspec {data['tunerspec']}, SPEC sha256 `{data['spec_sha256'][:12]}`, profile `{data['profile']}`, "
        f"seed {data['seed']}, torch {data['torch']}, commit `{data['git_commit'] or 'unknown'}`."
        + ("" if data["complete"] else f" **Partial run**: {data['total']} of {data['catalog_size']} mutants so far."),
        "",
        f"Command: `{data['command']}`",
        *_provenance(data["mutants"], data["git_commit"]),
        "",
        f"**Kill rate: {data['killed']}/{data['total']} mutants ({100 * data['kill_rate']:.1f}%)**; clauses killed "
        f"by some mutant: {data['clauses_killed']}/{data['clauses']}.",
        "",
        "| mutant | tuner | kind | bug | killed by | error rows |",
        "|---|---|---|---|---|---|",
    ]
    for m in data["mutants"]:
        killed_by = ", ".join(m["killed_by"]) if m["killed"] else "**not killed**"
        cells = (f"`{m['spec'].split('.')[-1]}`", m["tuner"], m["kind"], m["description"], killed_by)
        lines.append("| " + " | ".join((*cells, ", ".join(m["errors"]) or "—")).replace("\n", " ") + " |")
    lines += ["", f"## Clauses no mutant kills yet ({len(data['unkilled_clauses'])})", ""]
    lines += ["| clause | tuners |", "|---|---|"]
    lines += [f"| {c['clause']} | {', '.join(c['tuners'])} |" for c in data["unkilled_clauses"]]
    return "\n".join(lines) + "\n"


def _provenance(results: list[dict[str, Any]], commit: str | None) -> list[str]:
    """A line naming the commits the results were run at, when (after `--resume`) not all at the header's."""
    counts = Counter(result.get("git_commit", commit) for result in results)  # absent: the header's
    if set(counts) <= {commit}:
        return []
    runs = ", ".join(f"`{(c or 'unknown')[:12]}` ({n})" for c, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return ["", f"Resumed run: the mutants' results come from these commits (mutants each): {runs}."]
