"""`tunerspec bench`: the subcommand's arguments and its entry point."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from conformance.plugin import BUILTIN_DRIVERS

from .implementations import UnknownImplementation, load_driver
from .settings import DTYPES, Settings
from .workloads import SIZES, TUNERS

REPORT_DIR = Path("reports/benchmarks")
DEFAULT_ROUNDS = 12


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="speed and memory benchmarks → reports/benchmarks/<label>.*")
    bench.add_argument("--impl", action="append", help="built-in driver name or module:Class (default: every "
                       "built-in implementation installed)")  # fmt: skip
    bench.add_argument("--tuner", action="append", choices=sorted(TUNERS), help="default: all")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    bench.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    bench.add_argument("--size", choices=sorted(SIZES), default="small", help="full: 4096-wide (not on cpu)")
    bench.add_argument("--tokens", type=int, help="tokens per batch (default: the size's)")
    bench.add_argument("--label", help="default: <device>-<dtype>-<size>")
    bench.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="timed rounds per measurement")
    bench.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    bench.add_argument("--out", type=Path, default=REPORT_DIR, help="report directory")


def installed_implementations() -> list[str]:
    """The built-in implementations whose driver loads here (lycoris needs its package and driver)."""
    names = []
    for name in BUILTIN_DRIVERS:
        try:
            load_driver(name)
        except UnknownImplementation as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        names.append(name)
    return names


def run_bench(args: argparse.Namespace) -> int:
    """0 after writing the report; 2 for a usage error (full size on cpu, no CUDA, unknown implementation)."""
    size = SIZES[args.size]
    if args.device == "cpu" and not size.cpu:
        print(f"--size {args.size} is refused on cpu (use --device cuda)", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here", file=sys.stderr)
        return 2
    settings = Settings(
        device=args.device,
        dtype=args.dtype,
        size=args.size,
        tokens=args.tokens or size.tokens,
        rounds=args.rounds,
        implementations=tuple(args.impl or installed_implementations()),
        tuners=tuple(args.tuner or TUNERS),
        label=args.label or f"{args.device}-{args.dtype}-{args.size}",
        threads=args.threads,
    )
    from .run import run  # matplotlib and tabulate (the `bench` extra): only for this subcommand

    command = "tunerspec bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    try:
        run(settings, size, args.out, command.strip())
    except UnknownImplementation as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0
