"""A short tour: adapt a tiny model with each tuner, train a step, merge, save, reload, compare.

Run: `python -m reference_tuners.demo [--tuner NAME]...`
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable

import torch
from torch import nn

from . import (
    BoneConfig,
    GraLoRAConfig,
    HRAConfig,
    IA3Config,
    LoHaConfig,
    MissConfig,
    PeftConfig,
    PeftModel,
    get_peft_model,
)

LINEARS = ["proj", "out"]
DEMO_CONFIGS: dict[str, Callable[[], PeftConfig]] = {
    "bone": lambda: BoneConfig(r=4, target_modules=LINEARS),
    "bat": lambda: BoneConfig(r=4, init_weights="bat", target_modules=LINEARS),
    "miss-mini": lambda: MissConfig(r=4, init_weights="mini", mini_r=2, target_modules=LINEARS),
    "gralora": lambda: GraLoRAConfig(r=4, gralora_k=2, hybrid_r=2, target_modules=LINEARS),
    "hra": lambda: HRAConfig(r=4, target_modules=[*LINEARS, "conv"]),
    "ia3": lambda: IA3Config(target_modules=[*LINEARS, "conv"], feedforward_modules=["out"]),
    "loha": lambda: LoHaConfig(r=4, alpha=8, target_modules=[*LINEARS, "conv"], use_effective_conv2d=True),
}


class TinyNet(nn.Module):
    """Conv2d → pool → Linear → ReLU → Linear: every layer kind the demo adapts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Linear(8, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean(dim=(-2, -1))
        return self.out(torch.relu(self.proj(h)))


def run(name: str) -> None:
    torch.manual_seed(0)
    base = TinyNet().double()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    model = get_peft_model(copy.deepcopy(base), DEMO_CONFIGS[name]())
    trainable, total = model.get_nb_trainable_parameters()
    print(f"[{name}] adapted {[k for k, _ in model.tuner_layers()]}: {trainable:,d} of {total:,d} parameters train")

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(x).square().mean().backward()
    optimizer.step()
    model.eval()
    adapted = model(x)
    print(f"[{name}] after one SGD step the output moved by {(adapted - base(x)).abs().max():.3e} from the base model")

    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        reloaded = PeftModel.from_pretrained(copy.deepcopy(base), directory)
        print(f"[{name}] saved and reloaded: max |Δ| = {(reloaded(x) - adapted).abs().max():.3e}")

    merged = model.merge_and_unload()
    print(f"[{name}] merged into plain {type(merged).__name__}: max |Δ| = {(merged(x) - adapted).abs().max():.3e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuner", action="append", choices=sorted(DEMO_CONFIGS), help="default: all")
    for name in parser.parse_args(argv).tuner or list(DEMO_CONFIGS):
        run(name)


if __name__ == "__main__":
    main()
