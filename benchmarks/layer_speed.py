"""One adapted Linear layer, reference vs peft vs the frozen base layer: forward and forward+backward
(x requires grad), train mode, interleaved rounds, medians.

Run: `python -m benchmarks.layer_speed [--tuner T]... [--rounds N] [--threads N]`
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import peft
import torch
from torch import nn

import reference_tuners as rt

from .timer import round_robin

# tuner → (reference config, peft config) factories, both non-identity where the tuner allows it.
CONFIGS: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
    "bone": (lambda: rt.BoneConfig(r=64, init_weights=False), lambda: peft.MissConfig(r=64, init_weights=False)),
    "bat": (lambda: rt.BoneConfig(r=64, init_weights="bat"), lambda: peft.MissConfig(r=64, init_weights="bat")),
    "miss": (lambda: rt.MissConfig(r=64, init_weights=False), lambda: peft.MissConfig(r=64, init_weights=False)),
    "gralora": (
        lambda: rt.GraLoRAConfig(r=32, gralora_k=2, init_weights=False),
        lambda: peft.GraloraConfig(r=32, gralora_k=2, init_weights=False),
    ),
    "hra": (lambda: rt.HRAConfig(r=8, init_weights=False), lambda: peft.HRAConfig(r=8, init_weights=False)),
    "ia3": (
        lambda: rt.IA3Config(feedforward_modules=[], init_ia3_weights=False),
        lambda: peft.IA3Config(feedforward_modules=[], init_ia3_weights=False),
    ),
    "loha": (lambda: rt.LoHaConfig(r=8, init_weights=False), lambda: peft.LoHaConfig(r=8, init_weights=False)),
}


class _Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.lin = layer


def _adapted(library, base: nn.Linear, config) -> nn.Module:
    config.target_modules = ["lin"]
    model = library.get_peft_model(_Holder(copy.deepcopy(base)), config)
    return model.base_model.model.lin.train()


def measure(tuner: str, features: int, shape: tuple[int, ...], rounds: int) -> list[dict]:
    torch.manual_seed(0)
    base = nn.Linear(features, features)
    base.requires_grad_(False)
    layers = {"base": base, "reference": _adapted(rt, base, CONFIGS[tuner][0]()), "peft": None}
    layers["peft"] = _adapted(peft, base, CONFIGS[tuner][1]())
    x = torch.randn(*shape)
    grad = torch.randn(*shape[:-1], features)
    x_grad = x.clone().requires_grad_(True)

    def forward(layer: nn.Module) -> Callable[[], object]:
        return lambda: layer(x)

    def forward_backward(layer: nn.Module) -> Callable[[], object]:
        def run() -> None:
            x_grad.grad = None
            layer(x_grad).backward(grad)

        return run

    rows = []
    for op, make in (("forward", forward), ("forward+backward", forward_backward)):
        timings = round_robin({name: make(layer) for name, layer in layers.items()}, rounds=rounds)
        rows.append({"tuner": tuner, "op": op, **{name: t.median for name, t in timings.items()}})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuner", action="append", choices=sorted(CONFIGS), help="default: all")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--tokens", type=int, nargs=2, default=(8, 256), metavar=("BATCH", "SEQ"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = (*args.tokens, args.features)
    features, threads = args.features, args.threads
    print(f"Linear {features}x{features}, x {shape} float32, {threads} threads, medians of {args.rounds}")
    print("| tuner | op | base ms | reference ms | peft ms | ref/base | peft/base | ref/peft |")
    print("|---|---|---|---|---|---|---|---|")
    for tuner in args.tuner or list(CONFIGS):
        for row in measure(tuner, args.features, shape, args.rounds):
            b, r, p = row["base"], row["reference"], row["peft"]
            print(
                f"| {tuner} | {row['op']} | {b * 1e3:.1f} | {r * 1e3:.1f} | {p * 1e3:.1f} "
                f"| {r / b:.2f} | {p / b:.2f} | {r / p:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
