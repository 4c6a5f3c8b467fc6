"""Hypothesis strategies for base layers and inputs, and the torch modules they describe.

Shapes stay small (§8's input domain: ≤ 64 per axis, entries of order 1); tensors come from a
`torch.Generator` seeded by a drawn integer, so shrinking works on shapes and configs.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

from .spec.layer import Layer

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
seeds = st.integers(min_value=0, max_value=2**31 - 1)


@st.composite
def layers(draw: st.DrawFn, kind: str, max_features: int = 12) -> Layer:
    """A base-layer geometry of `kind`; convolutions vary groups, kernel, stride, padding, dilation, mode."""
    if kind in ("linear", "hf_conv1d"):
        # a shared factor makes common divisors frequent (GraLoRA's k, BAT's r need them)
        factor = draw(st.sampled_from([1, 2, 4]), label="common_factor")
        n_in = factor * draw(st.integers(1, max_features // 2), label="in_features_over_factor")
        n_out = factor * draw(st.integers(1, max_features // 2), label="out_features_over_factor")
        return Layer(kind, n_in, n_out)
    dims = int(kind[4])
    groups = draw(st.sampled_from([1, 1, 2]), label="groups")
    n_in = groups * draw(st.integers(1, 3), label="channels_per_group")
    n_out = groups * draw(st.integers(1, 3), label="out_per_group")
    kernel = tuple(draw(st.lists(st.integers(1, 3), min_size=dims, max_size=dims), label="kernel_size"))
    stride = tuple(draw(st.lists(st.integers(1, 2), min_size=dims, max_size=dims), label="stride"))
    dilation = tuple(draw(st.lists(st.integers(1, 2), min_size=dims, max_size=dims), label="dilation"))
    choices = ["valid", (0,) * dims, (1,) * dims] + (["same"] if set(stride) == {1} else [])
    padding = draw(st.sampled_from(choices), label="padding")
    mode = draw(st.sampled_from(PADDING_MODES), label="padding_mode") if padding != "valid" else "zeros"
    return Layer(kind, n_in, n_out, kernel, stride, padding, dilation, groups, mode)


@st.composite
def input_shapes(draw: st.DrawFn, layer: Layer, edge_cases: bool = False) -> tuple[int, ...]:
    """An ordinary input: `(batch, in)` or `(batch, seq, in)` for linear kinds, a batched input for convolutions
    (batch 1–2, spatial sizes large enough for the kernel and for reflect padding). `edge_cases`: also the inputs
    whose handling is a clause of its own — 1-D to 4-D and empty (CORE-FWD-2), unbatched and batch-0 convolution
    input (CORE-FWD-4) — drawn by CORE-FWD-1 and those clauses' tests, so that an implementation that rejects them
    fails those clauses and not every clause that happens to draw such an input."""
    smallest = 0 if edge_cases else 1
    if not layer.is_conv:
        ranks = (0, 3) if edge_cases else (1, 2)
        lead = draw(st.lists(st.integers(smallest, 3), min_size=ranks[0], max_size=ranks[1]), label="leading_dims")
        return (*lead, layer.in_features)
    spatial = []
    for i, k in enumerate(layer.kernel_size):
        reach = layer.dilation[i] * (k - 1) + 1
        pad = 0 if isinstance(layer.padding, str) else layer.padding[i]
        least = max(reach - 2 * pad, pad + 1, 1)
        if layer.padding == "same":
            least = max(least, reach // 2 + 1)
        spatial.append(draw(st.integers(least, least + 3), label=f"size_{i}"))
    batch = draw(st.sampled_from([None, 0, 1, 2] if edge_cases else [1, 2]), label="batch")
    lead = () if batch is None else (batch,)
    return (*lead, layer.in_features, *spatial)


def build_base(layer: Layer, dtype: str, seed: int, bias: bool = True) -> nn.Module:
    """The torch module a `Layer` describes, with O(1) weights drawn from `seed`."""
    if layer.kind == "linear":
        module = nn.Linear(layer.in_features, layer.out_features, bias=bias)
    elif layer.kind == "hf_conv1d":
        from transformers.pytorch_utils import Conv1D

        module = Conv1D(layer.out_features, layer.in_features)
    else:
        conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[layer.kind]
        module = conv(
            layer.in_features, layer.out_features, layer.kernel_size, stride=layer.stride, padding=layer.padding,
            dilation=layer.dilation, groups=layer.groups, padding_mode=layer.padding_mode, bias=bias,
        )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.rand(param.shape, generator=generator, dtype=torch.float64) * 2 - 1)
    return module.to(DTYPES[dtype])


def base_code(layer: Layer, dtype: str, seed: int, input_shape: tuple[int, ...] | None = None) -> str:
    """Python source (torch and transformers only) binding `model`, a module holding `build_base(layer, dtype,
    seed)` under the key `layer`, and `x`, the input `random_tensor(input_shape, dtype, seed + 1)`."""
    if layer.kind == "linear":
        module = f"nn.Linear({layer.in_features}, {layer.out_features})"
    elif layer.kind == "hf_conv1d":
        module = f"transformers.pytorch_utils.Conv1D({layer.out_features}, {layer.in_features})"
    else:
        module = (
            f"nn.{layer.kind.capitalize()}({layer.in_features}, {layer.out_features}, {layer.kernel_size}, "
            f"stride={layer.stride}, padding={layer.padding!r}, dilation={layer.dilation}, groups={layer.groups}, "
            f"padding_mode={layer.padding_mode!r})"
        )
    lines = [
        "import torch, transformers",
        "from torch import nn",
        "class Holder(nn.Module):",
        "    def __init__(self, layer):",
        "        super().__init__()",
        "        self.layer = layer",
        "    def forward(self, x):",
        "        return self.layer(x)",
        f"base = {module}",
        f"generator = torch.Generator().manual_seed({seed})",
        "with torch.no_grad():",
        "    for p in base.parameters():",
        "        p.copy_(torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1)",
        f"model = Holder(base.to(torch.{dtype}))",
    ]
    if input_shape is not None:
        lines += [
            f"generator = torch.Generator().manual_seed({seed + 1})",
            f"x = torch.rand({tuple(input_shape)}, generator=generator, dtype=torch.float64) * 2 - 1",
            f"x = x.to(torch.{dtype})",
        ]
    return "\n".join(lines)


def logical_weight(module: nn.Module, layer: Layer) -> torch.Tensor:
    """A float64 copy of W in logical orientation (transformers Conv1D stores Wᵀ)."""
    weight = module.weight.detach().double().clone()  # a snapshot: in-place merges must not change it
    return weight.T if layer.kind == "hf_conv1d" else weight


def random_tensor(shape: tuple[int, ...], dtype: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).to(DTYPES[dtype])
