"""`python -m benchmarks bench ...` (the same as `tunerspec bench ...`) and `python -m benchmarks report`."""

from __future__ import annotations

import argparse
import sys

from .cli import REPORT_DIR, add_bench_parser, run_bench
from .report import regenerate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(subparsers)
    subparsers.add_parser("report", help="rebuild every benchmark .md and .png from its JSON")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return run_bench(args)
    for path in regenerate(REPORT_DIR):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
