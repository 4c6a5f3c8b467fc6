"""The `tunerspec` command: `tunerspec check` runs the conformance suite and writes the report; `tunerspec bench`
runs the benchmarks (`benchmarks.cli`); `tunerspec report` regenerates every `.md` from the committed JSON
(DESIGN.md "Command line")."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import Counter
from pathlib import Path

from benchmarks.cli import add_bench_parser, run_bench

from .drivers.base import TUNERS
from .expectations import load_expectations
from .plugin import load_driver
from .runs import DEFAULT_TIMEOUT_S

DEFAULT_DIR = Path("reports/conformance")
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunerspec", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="run the conformance suite against implementations")
    check.add_argument("--impl", action="append", help="built-in driver name or module:Class (default: reference)")
    check.add_argument("--tuner", action="append", choices=TUNERS, help="check only these tuners")
    check.add_argument("--profile", default="ci", choices=("dev", "ci", "thorough"))
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                       help="per-test limit; a test past it is that row's `error` (default: %(default)g)")  # fmt: skip
    check.add_argument(
        "--expectations",
        type=Path,
        metavar="FILE",
        help="TOML of known deviations: matched rows become xfail (stale entries: xpass + warning)",
    )
    check.add_argument("--report-dir", type=Path, help="default: reports/conformance (reports/conformance/runs "
                       "for a --tuner subset or with --expectations)")  # fmt: skip
    report = commands.add_parser("report", help="regenerate every .md from the JSON reports")
    report.add_argument("--report-dir", type=Path, default=DEFAULT_DIR)
    add_bench_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return run_bench(args)
    return _check(args, argv) if args.command == "check" else _report(args)


def _check(args: argparse.Namespace, argv: list[str] | None) -> int:
    from .check import check
    from .report import write_report

    impls = args.impl or ["reference"]
    for impl in impls:
        try:
            load_driver(impl)
        except Exception as exc:  # a missing package or a typo: a usage error (exit 2)
            print(f"tunerspec check: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.expectations is not None:
        try:
            load_expectations(args.expectations)
        except (OSError, ValueError) as exc:  # a missing file, a typo in a clause ID: a usage error (exit 2)
            print(f"tunerspec check: --expectations: {exc}", file=sys.stderr)
            return EXIT_USAGE
    partial = args.tuner or args.expectations is not None  # never written over the committed full reports
    report_dir = args.report_dir or (DEFAULT_DIR / "runs" if partial else DEFAULT_DIR)
    command = "tunerspec " + shlex.join(sys.argv[1:] if argv is None else argv)
    findings = 0
    for impl in impls:
        print(f"tunerspec check: {impl} (profile {args.profile}, seed {args.seed})", flush=True)
        result = check(
            impl, tuners=args.tuner, profile=args.profile, seed=args.seed, command=command, timeout=args.timeout,
            expectations=args.expectations,
        )  # fmt: skip
        json_path, md_path = write_report(result, report_dir)
        _print_summary(result)
        print(f"wrote {json_path} and {md_path}")
        findings += result.summary["fail"] + result.summary["error"]
    return EXIT_FINDINGS if findings else EXIT_OK


def _print_summary(result) -> None:
    counts = Counter((row.tuner, row.family, row.status) for row in result.results)
    statuses = ("pass", "fail", "error", "skip", "warn", "xfail", "xpass")
    print(f"{'tuner':8} {'family':12} " + " ".join(f"{s:>5}" for s in statuses))
    for tuner, family in sorted({(t, f) for t, f, _ in counts}):
        print(f"{tuner:8} {family:12} " + " ".join(f"{counts[(tuner, family, s)]:>5}" for s in statuses))


def _report(args: argparse.Namespace) -> int:
    from benchmarks.report import regenerate as regenerate_benchmarks

    from .report import regenerate

    for path in regenerate(args.report_dir):
        print(f"regenerated {path}")
    for path in regenerate_benchmarks():
        print(f"regenerated {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
