"""The full kill matrix, outside CI:

    python -m conformance.mutants [--jobs N] [--out reports/conformance/mutation.json] [--only SUBSTRING ...]

runs every catalog mutant against all contract families of its tuner (one child process each, no stopping at the
first kill, repros not verified), prints one progress line per mutant to stderr, and writes the matrix as JSON to
`--out` and its Markdown (`conformance.mutation.render_markdown`) next to it with the suffix `.md`, both rewritten
after every mutant. `--resume` keeps the results `--out` already holds (each with the commit it was run at; the `.md`
names them when they differ) and runs only the mutants it lacks. A full run takes a while (up to minutes per mutant:
hypothesis shrinks every failing row); use `--jobs` and `--resume`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..mutation import render_markdown, run_matrix
from . import CATALOG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.mutants", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (each in its own child process)")
    parser.add_argument("--out", default="reports/conformance/mutation.json", help="the JSON file to write")
    parser.add_argument("--only", nargs="*", default=[], help="run only the mutants whose spec contains one of these")
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="keep the results --out holds; run the others")
    args = parser.parse_args(argv)
    mutants = [m for m in CATALOG if not args.only or any(s in m.spec for s in args.only)]
    command = shlex.join(["python", "-m", "conformance.mutants", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out)
    done = kept_results(out) if args.resume and out.exists() else []
    data = run_matrix(
        mutants, args.jobs, args.profile, args.seed, command, done=done, on_update=lambda data: write(out, data)
    )
    write(out, data)
    print(f"kill rate {data['killed']}/{data['total']}; unkilled clauses {len(data['unkilled_clauses'])}; wrote {out}")
    return 0


def kept_results(out: Path) -> list[dict]:
    """The results an earlier matrix file holds, each naming the commit it was run at (older files: the header's)."""
    data = json.loads(out.read_text(encoding="utf-8"))
    return [{"git_commit": data["git_commit"], **result} for result in data["mutants"]]


def write(out: Path, data: dict) -> None:
    """The matrix as JSON at `out` and as Markdown beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(render_markdown(data), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
