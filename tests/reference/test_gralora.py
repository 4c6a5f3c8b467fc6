"""Reference GraLoRA (SPEC §3): an independent float64 oracle written literally from SPEC's text (loops over the
blocks), SPEC §3.5's worked examples as golden tests, merge/unmerge, several adapters, gradients, dropout, half
precision, config rules, transformers Conv1D (tiny GPT-2), and file interchange with peft 0.21.2 both ways.

Where peft 0.21.2 departs from SPEC the reference is checked against SPEC (formula, worked example or a
hand-derived case), never against peft; each such test names the clause (see the `PEFT DIFFERS` comments).
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from typing import Any
from unittest import mock

import peft
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors.torch import load_file
from tiny_models import Holder, tiny_gpt2, tiny_llama, token_batch
from torch import nn
from transformers.pytorch_utils import Conv1D

from reference_tuners import PeftModel, get_peft_model
from reference_tuners.gralora import GraLoRAConfig, GraLoRALayer

F64 = torch.float64
# SPEC §8 ⟨N⟩: (rtol, atol factor a) for a single layer and for a small model.
N_LAYER = {
    F64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (1.6e-2, 3e-2),
    torch.float16: (2e-3, 2e-3),
}
N_MODEL = {F64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-4), torch.bfloat16: (5e-2, 5e-2), torch.float16: (5e-3, 5e-3)}
A_GEN, B_GEN = "gralora_A_general.weight", "gralora_B_general.weight"

pytestmark = pytest.mark.filterwarnings(
    "ignore:fan_in_fan_out:UserWarning",  # GRALORA-LAYER-2's override warning, where it is not under test
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",  # transformers, through peft
)


# ---------------------------------------------------------------------------------------------------------------
# helpers: tolerance (SPEC §8), models, the float64 oracle (SPEC §3.4)
# ---------------------------------------------------------------------------------------------------------------
def assert_close(actual, expected, *, clause: str, dtype=F64, scope: str = "layer", also=()) -> None:
    """SPEC §8: |actual − ref| ≤ a·S + r·|ref|, S = max(1, max|ref|, max|T| for T in `also`)."""
    __tracebackhide__ = True
    rtol, a = (N_LAYER if scope == "layer" else N_MODEL)[dtype]
    actual, expected = actual.detach().to(F64), expected.detach().to(F64)
    assert actual.shape == expected.shape, f"{clause}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if not expected.numel():
        return
    scale = max([1.0] + [t.detach().abs().max().item() for t in (expected, *also) if t.numel()])
    err = (actual - expected).abs()
    where = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    assert bool((err <= a * scale + rtol * expected.abs()).all()), (
        f"{clause}: max error {err.max().item():.3e} at {where} exceeds the {dtype} {scope} tolerance (S={scale:.3g})"
    )


def oracle_delta_weight(p: dict[str, torch.Tensor], sigma: float) -> torch.Tensor:
    """GRALORA-FWD-2 literally: ΔW[j·out/N + o, n·in/N + i] = σ Σ_{t<ρ} A[n, i, jρ+t] · B[j, nρ+t, o],
    plus σ B_gen A_gen (logical orientation, out × in)."""
    a, b = p["gralora_A"], p["gralora_B"]
    n_blocks, in_block, r = a.shape
    out_block, rho = b.shape[2], r // n_blocks
    rows = []
    for j in range(n_blocks):
        row = []
        for n in range(n_blocks):
            block = torch.zeros(out_block, in_block, dtype=a.dtype)
            for t in range(rho):
                block = block + torch.outer(b[j, n * rho + t, :], a[n, :, j * rho + t])  # block[o, i]
            row.append(block)
        rows.append(torch.cat(row, dim=1))
    delta = sigma * torch.cat(rows, dim=0)
    if A_GEN in p:
        delta = delta + sigma * p[B_GEN] @ p[A_GEN]
    return delta


def oracle_delta_output(x: torch.Tensor, p: dict[str, torch.Tensor], sigma: float) -> torch.Tensor:
    """GRALORA-FWD-1 literally: output chunk j is Δy_j = σ Σ_n Σ_{t<ρ} (x_n A_n)[…, jρ+t] · B_j[nρ+t, :],
    plus σ (x A_genᵀ) B_genᵀ."""
    a, b = p["gralora_A"], p["gralora_B"]
    n_blocks, in_block, r = a.shape
    out_block, rho = b.shape[2], r // n_blocks
    x_chunks = x.split(in_block, dim=-1)
    y_chunks = []
    for j in range(n_blocks):
        dy = torch.zeros(*x.shape[:-1], out_block, dtype=x.dtype)
        for n in range(n_blocks):
            xa = x_chunks[n] @ a[n]
            for t in range(rho):
                dy = dy + xa[..., j * rho + t, None] * b[j, n * rho + t, :]
        y_chunks.append(sigma * dy)
    dy = torch.cat(y_chunks, dim=-1)
    if A_GEN in p:
        dy = dy + sigma * (x @ p[A_GEN].T) @ p[B_GEN].T
    return dy


def swap_orientation(weight: torch.Tensor, base: nn.Module) -> torch.Tensor:
    """Stored ↔ logical orientation: transformers Conv1D stores Wᵀ (SPEC §0.4), a Linear W."""
    return weight.T if isinstance(base, Conv1D) else weight


def oracle_base(x: torch.Tensor, base: nn.Module) -> torch.Tensor:
    """base(x) = x Wᵀ + b in float64 (SPEC §0.4)."""
    return F.linear(x.to(F64), swap_orientation(base.weight, base).to(F64), base.bias.to(F64))


def adapt(base: nn.Module, adapter: str = "default", **config: Any) -> tuple[PeftModel, GraLoRALayer]:
    """Adapt a copy of `base` (key "m") with the reference."""
    autocast = config.pop("autocast_adapter_dtype", True)
    cfg = GraLoRAConfig(target_modules=["m"], **config)
    model = get_peft_model(Holder(copy.deepcopy(base)), cfg, adapter, autocast_adapter_dtype=autocast)
    return model, model.base_model.model.m


def params_of(layer: GraLoRALayer, name: str = "default") -> dict[str, torch.Tensor]:
    """Canonical names (GRALORA-PARAM-1) → live parameters."""
    return layer.adapter_parameters(name)


def detached(layer: GraLoRALayer, name: str = "default") -> dict[str, torch.Tensor]:
    return {k: v.detach().to(F64) for k, v in params_of(layer, name).items()}


def uniform_(tensors, generator: torch.Generator, low: float = -1.0, high: float = 1.0) -> None:
    """Every tensor i.i.d. U(low, high) from `generator` (SPEC §8 input domain)."""
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.rand(t.shape, generator=generator, dtype=F64).to(t.dtype) * (high - low) + low)


def make_base(kind: str, fan_in: int, fan_out: int, dtype=F64) -> nn.Module:
    base = nn.Linear(fan_in, fan_out) if kind == "linear" else Conv1D(fan_out, fan_in)
    return base.to(dtype)


def identity_params(layer: GraLoRALayer, name: str = "default") -> None:
    """A, B with ΔW = σ·I for in = out = r = d and any N: A[n, i, nρ+i] = 1 and B[j, jρ+t, t] = 1 (ρ = d/N),
    so only the diagonal blocks are non-zero, each σ·I_ρ (hand-derived from GRALORA-FWD-2)."""
    a, b = layer.gralora_A[name], layer.gralora_B[name]
    n_blocks, rho = a.shape[0], a.shape[1]
    with torch.no_grad():
        a.zero_()
        b.zero_()
        for n in range(n_blocks):
            a[n, :, n * rho : (n + 1) * rho] = torch.eye(rho)
            b[n, n * rho : (n + 1) * rho, :] = torch.eye(rho)


# ---------------------------------------------------------------------------------------------------------------
# 1. SPEC §3.5 worked examples and §7.2 counts (GRALORA-PARAM-1/2, GRALORA-COUNT-1, GRALORA-FWD-2)
# ---------------------------------------------------------------------------------------------------------------
WORKED = [
    pytest.param(dict(r=4, gralora_k=2), {"gralora_A": (2, 5, 4), "gralora_B": (2, 4, 10)}, 120, None, id="r4k2"),
    pytest.param(
        dict(r=4, gralora_k=2, hybrid_r=2),
        {"gralora_A": (2, 5, 4), "gralora_B": (2, 4, 10), A_GEN: (2, 10), B_GEN: (20, 2)},
        180,
        None,
        id="r4k2h2",
    ),
    pytest.param({}, {"gralora_A": (2, 5, 32), "gralora_B": (2, 32, 10)}, 960, 2.0, id="defaults"),
    pytest.param(dict(r=12, gralora_k=2), {"gralora_A": (2, 5, 12), "gralora_B": (2, 12, 10)}, 360, None, id="12-2-0"),
    pytest.param(
        dict(r=10, gralora_k=2, hybrid_r=2),
        {"gralora_A": (2, 5, 10), "gralora_B": (2, 10, 10), A_GEN: (2, 10), B_GEN: (20, 2)},
        360,
        None,
        id="10-2-2",
    ),
    pytest.param(
        dict(r=10, gralora_k=5, hybrid_r=2),
        {"gralora_A": (5, 2, 10), "gralora_B": (5, 10, 4), A_GEN: (2, 10), B_GEN: (20, 2)},
        360,
        None,
        id="10-5-2",
    ),
]


@pytest.mark.parametrize(("config", "shapes", "count", "sigma"), WORKED)
def test_worked_examples(config: dict, shapes: dict, count: int, sigma: float | None) -> None:
    """SPEC §3.5 (Linear 10→20): canonical shapes (GRALORA-PARAM-1), trainable count `(r + h)(in + out)`
    (GRALORA-COUNT-1), σ = 64/32 = 2.0 for the defaults (GRALORA-PARAM-2); with `h = 0` no general parameters."""
    model, layer = adapt(nn.Linear(10, 20), **config)
    params = params_of(layer)
    assert {k: tuple(v.shape) for k, v in params.items()} == shapes
    assert model.get_nb_trainable_parameters()[0] == count
    assert all(p.requires_grad for p in params.values())
    if sigma is not None:
        assert layer.settings["default"].scaling == sigma
    if A_GEN not in shapes:
        assert not any("general" in k for k, _ in layer.named_parameters())
        assert "default" not in layer.gralora_A_general and "default" not in layer.gralora_B_general


def test_worked_block_example() -> None:
    """SPEC §3.5 block example (N=2, r=4, ρ=2): the block of ΔW for output chunk 1 and input chunk 0 is
    σ (A_0[:, 2:4] · B_1[0:2, :])ᵀ — for the oracle (a golden test of it) and for the reference."""
    _, layer = adapt(nn.Linear(10, 20).double(), r=4, gralora_k=2, alpha=3, init_weights=False)
    uniform_(params_of(layer).values(), torch.Generator().manual_seed(0))
    p, sigma = detached(layer), 3 / 4
    expected = sigma * (p["gralora_A"][0][:, 2:4] @ p["gralora_B"][1][0:2, :]).T
    assert_close(oracle_delta_weight(p, sigma)[10:20, 0:5], expected, clause="GRALORA-FWD-2 (oracle)")
    assert_close(layer.delta_weight("default")[10:20, 0:5], expected, clause="GRALORA-FWD-2")


@pytest.mark.parametrize(("hybrid_r", "count"), [(0, 34_816), (4, 43_520)])
def test_tiny_llama_count(hybrid_r: int, count: int) -> None:
    """SPEC §7.2: GraLoRA r=16, k=4 on the tiny Llama's seven projections: 34,816 (43,520 with hybrid_r=4)."""
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = GraLoRAConfig(r=16, gralora_k=4, hybrid_r=hybrid_r, target_modules=targets)
    assert get_peft_model(tiny_llama(), config).get_nb_trainable_parameters()[0] == count


# ---------------------------------------------------------------------------------------------------------------
# 2. forward, ΔW, merge, unmerge and gradients vs the oracle (GRALORA-FWD-1…4, GRALORA-MERGE-1, CORE-GRAD-1/2)
# ---------------------------------------------------------------------------------------------------------------
@st.composite
def layer_cases(draw: st.DrawFn) -> dict[str, Any]:
    k = draw(st.integers(1, 4), label="k")
    return dict(
        kind=draw(st.sampled_from(["linear", "hf_conv1d"]), label="kind"),
        k=k,
        r=k * draw(st.integers(1, 3), label="rho"),
        hybrid_r=draw(st.integers(0, 3), label="hybrid_r"),
        alpha=draw(st.sampled_from([1, 3, 8, 0.5, 2.5]), label="alpha"),
        fan_in=k * draw(st.integers(1, 3), label="in/k"),
        fan_out=k * draw(st.integers(1, 3), label="out/k"),
        lead=tuple(draw(st.lists(st.integers(0, 3), max_size=3), label="leading dims")),  # 1-D … 4-D input
        seed=draw(st.integers(0, 2**31 - 1), label="seed"),
    )


def _case(**kw: Any) -> dict[str, Any]:
    base = dict(kind="linear", k=2, r=2, hybrid_r=0, alpha=1, fan_in=4, fan_out=4, lead=(2,), seed=0)
    return {**base, **kw}


@given(case=layer_cases())
@example(case=_case(k=1, r=1, fan_in=1, fan_out=1, lead=()))  # rank 1, a 1→1 layer, 1-D input
@example(case=_case(lead=(0,), hybrid_r=1))  # batch of zero
@example(case=_case(kind="hf_conv1d", k=4, r=12, hybrid_r=3, fan_in=4, fan_out=12, lead=(2, 1, 3)))  # 4-D, r > in/k
@example(case=_case(kind="hf_conv1d", k=3, r=3, fan_in=9, fan_out=3, lead=(3, 0), alpha=2.5))
@example(case=_case(k=2, r=6, hybrid_r=2, fan_in=6, fan_out=2, lead=(1,), alpha=0.5))
def test_matches_oracle(case: dict[str, Any]) -> None:
    """GRALORA-FWD-1 (forward = base(x) + the block sum), GRALORA-FWD-2 (ΔW), GRALORA-FWD-4 / CORE-FWD-2/3 (any
    leading dims, 1-D to 4-D, batch 0, flattening commutes), CORE-GRAD-1/2 (gradients = oracle autograd, none
    on the base), GRALORA-MERGE-1 / CORE-MERGE-4/6 (W ← W + ΔW in stored orientation, bias unchanged, merged
    output = unmerged, unmerge restores W).
    PEFT DIFFERS (GRALORA-FWD-4, CORE-FWD-2): peft 0.21.2 unpacks `B, L, in = x.shape`, so 1-D and ≥ 4-D inputs
    raise ValueError, and a batch of zero fails in its `reshape(B, L, -1)`; it works for non-empty 2-D and 3-D."""
    generator = torch.Generator().manual_seed(case["seed"])
    base = make_base(case["kind"], case["fan_in"], case["fan_out"])
    uniform_(base.parameters(), generator)
    model, layer = adapt(
        base, r=case["r"], gralora_k=case["k"], hybrid_r=case["hybrid_r"], alpha=case["alpha"], init_weights=False
    )
    params = params_of(layer)
    uniform_(params.values(), generator)
    sigma = case["alpha"] / (case["r"] + case["hybrid_r"])
    x = torch.rand(*case["lead"], case["fan_in"], generator=generator, dtype=F64) * 2 - 1
    assert layer.settings["default"].scaling == sigma  # GRALORA-PARAM-2

    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    x_ref, x_oracle = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y = model(x_ref)
    y_oracle = oracle_base(x_oracle, base) + oracle_delta_output(x_oracle, leaves, sigma)
    assert y.shape == (*case["lead"], case["fan_out"])
    assert_close(y, y_oracle, clause="GRALORA-FWD-1")
    delta = oracle_delta_weight(detached(layer), sigma)
    assert_close(layer.delta_weight("default"), delta, clause="GRALORA-FWD-2")
    assert_close(y, oracle_base(x, base) + x @ delta.T, clause="GRALORA-FWD-2 (x ΔWᵀ)")
    with torch.no_grad():
        flat = model(x.reshape(-1, case["fan_in"])).reshape(y.shape)
    assert_close(flat, y, clause="CORE-FWD-3")

    cotangent = torch.rand(y.shape, generator=generator, dtype=F64)
    (y * cotangent).sum().backward()
    (y_oracle * cotangent).sum().backward()
    assert_close(x_ref.grad, x_oracle.grad, clause="CORE-GRAD-1 (x)")
    for name, param in params.items():
        assert_close(param.grad, leaves[name].grad, clause=f"CORE-GRAD-1 ({name})")
    assert layer.base_layer.weight.grad is None, "CORE-GRAD-2"

    weight, bias = base.weight.detach().clone(), base.bias.detach().clone()
    with torch.no_grad():
        model.merge_adapter()
        merged = layer.base_layer.weight.detach().clone()
        assert_close(merged, weight + swap_orientation(delta, base), clause="GRALORA-MERGE-1")
        assert torch.equal(layer.base_layer.bias, bias), "GRALORA-MERGE-1: bias unchanged"
        assert_close(model(x), y, clause="CORE-MERGE-4")
        model.unmerge_adapter()
        assert_close(layer.base_layer.weight, weight, clause="CORE-MERGE-6", also=(merged,))


@pytest.mark.parametrize(("kind", "hybrid_r", "k"), [("linear", 0, 2), ("linear", 2, 3), ("hf_conv1d", 1, 2)])
def test_gradcheck(kind: str, hybrid_r: int, k: int) -> None:
    """CORE-GRAD-1 (⟨G⟩): autograd gradients equal central finite differences (eps 1e-6, atol 1e-5, rtol 1e-3)."""
    _, layer = adapt(make_base(kind, 6, 6), r=2 * k, gralora_k=k, hybrid_r=hybrid_r, alpha=3, init_weights=False)
    names = list(params_of(layer))
    inputs = [params_of(layer)[n].detach().clone().requires_grad_(True) for n in names]
    x = torch.randn(2, 3, 6, dtype=F64, requires_grad=True)

    def function(x: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        replaced = {}
        for name, tensor in zip(names, tensors, strict=True):
            container, _, rest = name.partition(".")
            replaced[f"{container}.default{'.' + rest if rest else ''}"] = tensor
        return torch.func.functional_call(layer, replaced, (x,))

    assert torch.autograd.gradcheck(function, (x, *inputs), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("hybrid_r", [0, 3])
def test_k1_is_lora(hybrid_r: int) -> None:
    """GRALORA-FWD-3: with N = 1, ΔW = σ (A[0] B[0])ᵀ + σ B_gen A_gen and the forward is LoRA's."""
    base = nn.Linear(5, 7).double()
    model, layer = adapt(base, r=4, gralora_k=1, hybrid_r=hybrid_r, alpha=5, init_weights=False)
    uniform_(params_of(layer).values(), torch.Generator().manual_seed(1))
    p, sigma = detached(layer), 5 / (4 + hybrid_r)
    expected = sigma * (p["gralora_A"][0] @ p["gralora_B"][0]).T
    if hybrid_r:
        expected = expected + sigma * p[B_GEN] @ p[A_GEN]
    assert_close(layer.delta_weight("default"), expected, clause="GRALORA-FWD-3")
    x = torch.randn(3, 5, dtype=F64)
    lora = x @ p["gralora_A"][0] @ p["gralora_B"][0]
    if hybrid_r:
        lora = lora + x @ p[A_GEN].T @ p[B_GEN].T
    assert_close(model(x), base(x) + sigma * lora, clause="GRALORA-FWD-3")


@pytest.mark.parametrize(
    ("k", "r", "hybrid_r", "fan_in", "fan_out"), [(2, 4, 0, 12, 12), (3, 3, 1, 12, 15), (4, 8, 0, 8, 8)]
)
def test_block_rank(k: int, r: int, hybrid_r: int, fan_in: int, fan_out: int) -> None:
    """GRALORA-FWD-2: every block (j, n) of the grid part has rank ≤ ρ, and ΔW has rank ≤ min(N·r + h, in, out),
    reached by generic (random) parameters."""
    _, layer = adapt(nn.Linear(fan_in, fan_out).double(), r=r, gralora_k=k, hybrid_r=hybrid_r, init_weights=False)
    uniform_(params_of(layer).values(), torch.Generator().manual_seed(2))
    rho, rows, cols = r // k, fan_out // k, fan_in // k
    with torch.no_grad():
        delta = layer.delta_weight("default")
        grid = delta - layer.settings["default"].scaling * (
            layer.gralora_B_general["default"].weight @ layer.gralora_A_general["default"].weight
            if hybrid_r
            else torch.zeros_like(delta)
        )
    for j in range(k):
        for n in range(k):
            block = grid[j * rows : (j + 1) * rows, n * cols : (n + 1) * cols]
            assert torch.linalg.matrix_rank(block) <= rho, (j, n)
    assert torch.linalg.matrix_rank(delta) == min(k * r + hybrid_r, fan_in, fan_out)


def test_several_adapters_add() -> None:
    """GRALORA-MULTI-1 (adapters add, order irrelevant, each with its own r, k, h, α), CORE-MERGE-4/6."""
    base = nn.Linear(12, 12).double()
    generator = torch.Generator().manual_seed(3)
    model, layer = adapt(base, r=4, gralora_k=2, alpha=3, init_weights=False)
    model.add_adapter("b", GraLoRAConfig(target_modules=["m"], r=6, gralora_k=3, hybrid_r=2, alpha=5))
    model.add_adapter("c", GraLoRAConfig(target_modules=["m"], r=4, gralora_k=4, hybrid_r=1, alpha=2))
    for name in ("default", "b", "c"):
        uniform_(params_of(layer, name).values(), generator)
    deltas = {n: oracle_delta_weight(detached(layer, n), s) for n, s in (("default", 3 / 4), ("b", 5 / 8), ("c", 0.4))}
    x = torch.randn(2, 3, 12, dtype=F64)
    weight = base.weight.detach().clone()
    with torch.no_grad():
        model.set_adapter(["default", "b", "c"])
        y = model(x)
        assert_close(y, base(x) + x @ sum(deltas.values()).T, clause="GRALORA-MULTI-1")
        model.set_adapter(["c", "default", "b"])
        assert_close(model(x), y, clause="GRALORA-MULTI-1 (order)")
        model.merge_adapter()
        merged = layer.base_layer.weight.detach().clone()
        assert_close(merged, weight + sum(deltas.values()), clause="GRALORA-MERGE-1")
        assert_close(model(x), y, clause="CORE-MERGE-4")
        model.unmerge_adapter()
        assert_close(layer.base_layer.weight, weight, clause="CORE-MERGE-6", also=(merged,))
        model.set_adapter("b")
        assert_close(model(x), base(x) + x @ deltas["b"].T, clause="GRALORA-MULTI-1")


def test_forward_does_not_build_delta_weight() -> None:
    """SPEC §0.5 (reference speed): the unmerged forward never materialises ΔW and never writes the base weight."""
    model, layer = adapt(nn.Linear(8, 8).double(), hybrid_r=2, r=4, init_weights=False)
    x = torch.randn(3, 8, dtype=F64)
    weight = layer.base_layer.weight.detach().clone()
    with mock.patch.object(GraLoRALayer, "delta_weight", side_effect=AssertionError("ΔW built")):
        y = model(x)
    assert_close(y, layer.base_layer(x) + x @ layer.delta_weight("default").T, clause="GRALORA-FWD-1")
    assert torch.equal(layer.base_layer.weight, weight)


# ---------------------------------------------------------------------------------------------------------------
# 3. initialisation and identity (GRALORA-INIT-1…3, GRALORA-ID-1, CORE-INIT-1)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hybrid_r", [0, 2])
@pytest.mark.parametrize("kind", ["linear", "hf_conv1d"])
def test_identity_at_init(kind: str, hybrid_r: int) -> None:
    """GRALORA-ID-1: `init_weights=True` gives exactly base(x); `False` does not."""
    base = make_base(kind, 6, 4)
    x = torch.randn(2, 3, 6, dtype=F64)
    for init in (True, False):
        model, _ = adapt(base, r=2, hybrid_r=hybrid_r, init_weights=init)
        with torch.no_grad():
            assert torch.equal(model(x), base(x)) is init, init


def _check_uniform(sample: torch.Tensor, bound: float, what: str) -> None:
    """⟨P⟩ (SPEC §8): hard bound up to rounding, samples reach the bound; mean and variance when n ≥ 10⁴."""
    flat = sample.detach().reshape(-1).double()
    assert flat.abs().max() <= bound * (1 + 2.0**-24), what
    assert flat.abs().max() >= 0.9 * bound, what
    n = flat.numel()
    if n >= 10_000:
        assert abs(flat.mean()) <= 6 * bound / math.sqrt(3 * n), what
        standard_error = math.sqrt(4 / 45) * bound**2 / math.sqrt(n)
        assert abs(flat.var() - bound**2 / 3) <= 6 * standard_error, what


@pytest.mark.parametrize("init", [True, False])
def test_init_distributions(init: bool) -> None:
    """GRALORA-INIT-1: A U(±1/√(in/N)), A_gen U(±1/√in); GRALORA-INIT-2: B = B_gen = 0 (init True);
    GRALORA-INIT-3: B U(±1/√r), B_gen U(±1/√h) (init False). Linear 512→256, N=2, r=32, h=48."""
    torch.manual_seed(0)
    fan_in, fan_out, k, r, h = 512, 256, 2, 32, 48
    _, layer = adapt(nn.Linear(fan_in, fan_out), r=r, gralora_k=k, hybrid_r=h, init_weights=init)
    p = params_of(layer)
    _check_uniform(p["gralora_A"], 1 / math.sqrt(fan_in / k), "gralora_A")
    _check_uniform(p[A_GEN], 1 / math.sqrt(fan_in), A_GEN)
    if init:
        assert torch.equal(p["gralora_B"], torch.zeros(k, r, fan_out // k))
        assert torch.equal(p[B_GEN], torch.zeros(fan_out, h))
    else:
        _check_uniform(p["gralora_B"], 1 / math.sqrt(r), "gralora_B")
        _check_uniform(p[B_GEN], 1 / math.sqrt(h), B_GEN)


def test_init_is_reproducible() -> None:
    """CORE-INIT-1: the same torch RNG state gives equal adapter parameters."""
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(params_of(adapt(nn.Linear(6, 4), r=2, hybrid_r=2, init_weights=False)[1]))
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


# ---------------------------------------------------------------------------------------------------------------
# 4. dropout (GRALORA-DROP-1, CORE-DROP-1/2, CORE-FWD-7, CORE-MERGE-14)
# ---------------------------------------------------------------------------------------------------------------
def _binomial_ok(successes: int, trials: int, p: float) -> bool:
    """Two-sided normal approximation at ≈ 1e-6 (5 standard deviations)."""
    return abs(successes - trials * p) <= 5 * math.sqrt(trials * p * (1 - p))


@pytest.mark.parametrize("hybrid_r", [0, 8])
def test_dropout_is_inverted_and_one_mask_feeds_both_paths(hybrid_r: int) -> None:
    """CORE-DROP-2, GRALORA-DROP-1: with ΔW = σ·I on the block grid (N = 2) and, for h > 0, B_gen A_gen = I as well,
    σ = 1, the train-mode adapter output is m ⊙ x/(1−p) · (1 + [h > 0]) with ONE Bernoulli(1−p) mask m shared by
    the block and the hybrid path; the base path sees the undropped x; eval mode applies no dropout.
    PEFT DIFFERS (GRALORA-DROP-1, SHOULD): peft 0.21.2 calls its dropout module once per path, so the two paths
    see independent masks (its Δ takes the values 0, x/(1−p) and 2x/(1−p))."""
    torch.manual_seed(0)  # ⟨P⟩: a fixed seed for the masks
    d, p = 8, 0.3
    model, layer = adapt(
        nn.Linear(d, d).double(), r=d, gralora_k=2, hybrid_r=hybrid_r, alpha=d + hybrid_r, gralora_dropout=p
    )
    identity_params(layer)
    if hybrid_r:
        with torch.no_grad():
            layer.gralora_A_general["default"].weight.copy_(torch.eye(d))
            layer.gralora_B_general["default"].weight.copy_(torch.eye(d))
    paths = 2 if hybrid_r else 1
    x = torch.rand(200, d, dtype=F64) + 1  # no zero entries
    model.eval()
    with torch.no_grad():
        base = layer.base_layer(x)
        assert_close(model(x), base + paths * x, clause="CORE-DROP-1 (eval: no dropout)")
        model.train()
        delta = model(x) - base
    kept = delta.abs() > 1e-9
    assert_close(delta[kept], paths * x[kept] / (1 - p), clause="GRALORA-DROP-1 (kept: scaled 1/(1−p), one mask)")
    assert torch.all(delta[~kept].abs() <= 1e-12), "CORE-DROP-2: dropped elements contribute 0"
    assert _binomial_ok(int(kept.sum()), kept.numel(), 1 - p), "CORE-DROP-2: keep frequency"


@pytest.mark.parametrize("hybrid_r", [0, 2])
def test_dropout_one_makes_adapter_contribute_zero(hybrid_r: int) -> None:
    """CORE-DROP-2: p = 1 in train mode gives exactly base(x), with finite (zero) gradients; CORE-MERGE-14:
    merging in train mode still adds the full ΔW and unmerge restores W."""
    base = nn.Linear(6, 4).double()
    model, layer = adapt(base, r=2, hybrid_r=hybrid_r, gralora_dropout=1.0, init_weights=False)
    model.train()
    x = torch.randn(3, 6, dtype=F64)
    y = model(x)
    assert torch.equal(y.detach(), base(x).detach())
    y.sum().backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params_of(layer).values())
    weight = base.weight.detach().clone()
    with torch.no_grad():
        model.merge_adapter()
        merged = layer.base_layer.weight.detach().clone()
        assert_close(merged, weight + oracle_delta_weight(detached(layer), 64 / (2 + hybrid_r)), clause="CORE-MERGE-14")
        model.unmerge_adapter()
    assert_close(layer.base_layer.weight, weight, clause="CORE-MERGE-14", also=(merged,))


def test_train_without_dropout_equals_eval_and_eval_is_deterministic() -> None:
    """CORE-DROP-1 (p = 0: train = eval), CORE-FWD-7 (eval: bitwise deterministic, no dropout with p > 0)."""
    x = torch.randn(4, 6, dtype=F64)
    model, _ = adapt(nn.Linear(6, 4).double(), r=2, hybrid_r=1, init_weights=False)
    model.eval()
    with torch.no_grad():
        y_eval = model(x)
        model.train()
        assert torch.equal(model(x), y_eval)
    model, _ = adapt(nn.Linear(6, 4).double(), r=2, hybrid_r=1, gralora_dropout=0.5, init_weights=False)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


# ---------------------------------------------------------------------------------------------------------------
# 5. dtype (GRALORA-DTYPE-1, CORE-DTYPE-1…3, CORE-FWD-8)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["linear", "hf_conv1d"])
def test_half_precision(kind: str, dtype: torch.dtype, autocast: bool) -> None:
    """CORE-DTYPE-1 (half → float32 adapters under `autocast_adapter_dtype`), GRALORA-DTYPE-1 / CORE-DTYPE-2
    (forward within the half-precision ⟨N⟩ of the float64 oracle on the values held; ΔW in the adapter dtype,
    merged into the base dtype), CORE-FWD-8 (output in x's dtype), CORE-DTYPE-3 (backward, merge, unmerge
    finite)."""
    generator = torch.Generator().manual_seed(5)
    base = make_base(kind, 8, 12, dtype)
    uniform_(base.parameters(), generator)
    model, layer = adapt(
        base, r=4, gralora_k=2, hybrid_r=2, alpha=3, init_weights=False, autocast_adapter_dtype=autocast
    )
    adapter_dtype = torch.float32 if autocast else dtype
    assert all(p.dtype == adapter_dtype for p in params_of(layer).values()), "CORE-DTYPE-1"
    uniform_(params_of(layer).values(), generator)
    p, sigma = detached(layer), 0.5
    x = (torch.rand(2, 3, 8, generator=generator, dtype=F64) * 2 - 1).to(dtype)
    y = model(x)
    assert y.dtype == dtype, "CORE-FWD-8"
    expected = oracle_base(x, base) + oracle_delta_output(x.to(F64), p, sigma)
    assert_close(y, expected, clause="GRALORA-DTYPE-1", dtype=dtype)
    y.float().square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in params_of(layer).values()), "CORE-DTYPE-3 (backward)"
    delta = layer.delta_weight("default")
    assert delta.dtype == adapter_dtype, "GRALORA-DTYPE-1"
    weight = base.weight.detach().clone()
    with torch.no_grad():
        model.merge_adapter()
        merged = layer.base_layer.weight.detach().clone()
        assert merged.dtype == dtype and torch.isfinite(merged).all(), "CORE-DTYPE-3 (merge)"
        oracle_merged = weight.to(F64) + swap_orientation(oracle_delta_weight(p, sigma), base)
        assert_close(merged, oracle_merged, clause="GRALORA-MERGE-1", dtype=dtype)
        assert_close(model(x), y, clause="CORE-MERGE-4", dtype=dtype)
        model.unmerge_adapter()
    assert_close(layer.base_layer.weight, weight, clause="CORE-MERGE-6", dtype=dtype, also=(merged,))


def test_under_torch_autocast() -> None:
    """CORE-DTYPE-3 under `torch.autocast` (CPU, bfloat16): runs, finite, the base layer's output dtype, and within
    the bfloat16 ⟨N⟩ of the float64 oracle."""
    generator = torch.Generator().manual_seed(6)
    base = nn.Linear(8, 6)
    uniform_(base.parameters(), generator)
    model, layer = adapt(base, r=4, hybrid_r=2, alpha=3, init_weights=False)
    uniform_(params_of(layer).values(), generator)
    x = torch.rand(3, 8, generator=generator) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        y, y_base = model(x), base(x)
    assert y.dtype == y_base.dtype == torch.bfloat16 and torch.isfinite(y).all()
    expected = oracle_base(x, base) + oracle_delta_output(x.to(F64), detached(layer), 0.5)
    assert_close(y, expected, clause="CORE-DTYPE-3", dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------------
# 6. config and injection rules (GRALORA-CFG-1…5, GRALORA-LAYER-1/2, CORE-CFG-3…7, CORE-BIAS-1, CORE-INJ-2)
# ---------------------------------------------------------------------------------------------------------------
TABLE = dict(
    r=32,
    hybrid_r=0,
    target_modules=None,
    alpha=64,
    gralora_dropout=0.0,
    gralora_k=2,
    fan_in_fan_out=False,
    bias="none",
    modules_to_save=None,
    init_weights=True,
    layers_to_transform=None,
    layers_pattern=None,
)
BASE_FIELDS = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision"}


def test_config_fields_and_defaults() -> None:
    """GRALORA-CFG-1: exactly §3.1's table plus the base fields (no `exclude_modules`); `peft_type` "GRALORA";
    defaults equal peft's."""
    config = GraLoRAConfig()
    data = config.to_dict()
    assert set(data) == set(TABLE) | BASE_FIELDS | {"inference_mode"}
    assert {k: data[k] for k in TABLE} == TABLE
    assert config.peft_type == "GRALORA"
    theirs = peft.GraloraConfig()
    assert {k: getattr(theirs, k) for k in TABLE} == TABLE


def test_config_sets_and_json_round_trip() -> None:
    """CORE-CFG-3/7: a list `target_modules` becomes a set, a string stays; JSON → config → JSON is equal."""
    config = GraLoRAConfig(target_modules=["a", "b"], r=6, gralora_k=3, hybrid_r=1, alpha=2.5, layers_to_transform=1)
    assert config.target_modules == {"a", "b"}
    again = GraLoRAConfig.from_dict(json.loads(config.to_json_string()))
    assert again.to_dict() == config.to_dict()
    assert GraLoRAConfig(target_modules="a|b").target_modules == "a|b"


@pytest.mark.parametrize(
    ("kwargs", "subjects"),
    [
        (dict(gralora_k=0), ["gralora_k", "0"]),  # GRALORA-CFG-2
        (dict(gralora_k=-2, r=4), ["gralora_k", "-2"]),
        (dict(r=5, gralora_k=2), ["gralora_k", "5", "2"]),  # GRALORA-CFG-3
        (dict(r=6, gralora_k=4), ["gralora_k", "6", "4"]),
        (dict(r=0), ["r", "0"]),  # GRALORA-CFG-4
        (dict(r=-2), ["r", "-2"]),
        (dict(hybrid_r=-1), ["hybrid_r", "-1"]),
        (dict(gralora_dropout=1.5), ["gralora_dropout", "1.5"]),  # CORE-CFG-6
        (dict(gralora_dropout=-0.1), ["gralora_dropout", "-0.1"]),
        (dict(target_modules="m", layers_to_transform=[0]), ["layers_to_transform"]),  # CORE-CFG-5
        (dict(target_modules="m", layers_pattern="h"), ["layers_pattern"]),
    ],
)
def test_config_errors_at_construction(kwargs: dict, subjects: list[str]) -> None:
    """GRALORA-CFG-2/3 (at construction, as required), GRALORA-CFG-4 and CORE-CFG-5/6 (allowed at construction):
    ValueError naming the field and the offending values.
    PEFT DIFFERS: peft 0.21.2 checks r ≤ 0 and hybrid_r < 0 only at injection (allowed), never rejects a negative
    `gralora_dropout` (CORE-CFG-6; > 1 fails in torch's Dropout with a message that does not name the field),
    and never rejects a string `target_modules` with `layers_to_transform` / `layers_pattern` (CORE-CFG-5)."""
    with pytest.raises(ValueError) as info:
        GraLoRAConfig(**kwargs)
    message = str(info.value).lower()
    assert all(s.lower() in message for s in subjects), message


def test_config_boundaries_accepted() -> None:
    """GRALORA-CFG-4: hybrid_r = 0 and dropout 0 / 1 are valid; CORE-MATCH-8: `layers_pattern` without
    `layers_to_transform` is ignored, not rejected."""
    GraLoRAConfig(hybrid_r=0, gralora_dropout=1.0)
    GraLoRAConfig(r=3, gralora_k=3, gralora_dropout=0.0)
    model, _ = adapt(nn.Linear(4, 4), r=2, layers_pattern="layers")
    assert isinstance(model.base_model.model.m, GraLoRALayer)


@pytest.mark.parametrize(("field", "value"), [("r", 0), ("hybrid_r", -1), ("gralora_dropout", 2.0), ("gralora_k", 0)])
def test_fields_set_after_construction_are_checked_at_injection(field: str, value: Any) -> None:
    """CORE-CFG-4: a config-only error is raised no later than injection, before any layer changes."""
    config = GraLoRAConfig(target_modules=["m"], r=2)
    setattr(config, field, value)
    model = Holder(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=field):
        get_peft_model(model, config)
    assert type(model.m) is nn.Linear


@pytest.mark.parametrize(
    ("shape", "subjects"),
    [((6, 8), ["in_features", "6", "4"]), ((8, 6), ["out_features", "6", "4"]), ((4, 4), None)],
)
def test_block_divisibility_checked_at_injection(shape: tuple[int, int], subjects: list[str] | None) -> None:
    """GRALORA-CFG-5: `in % k` and `out % k` are rejected at injection (ValueError naming the feature and both
    numbers) before any module changes; no other size constraint exists (here r = 8 > in/k = 1)."""
    model = nn.Sequential()
    model.add_module("a", nn.Linear(8, 8))
    model.add_module("b", nn.Linear(*shape))
    config = GraLoRAConfig(target_modules=["a", "b"], r=8, gralora_k=4)
    if subjects is None:
        get_peft_model(model, config)
        return
    with pytest.raises(ValueError) as info:
        get_peft_model(model, config)
    assert all(s in str(info.value) for s in subjects), str(info.value)
    assert type(model.a) is nn.Linear and type(model.b) is nn.Linear


def test_bad_k_on_an_adapted_layer_changes_nothing() -> None:
    """GRALORA-CFG-5, CORE-CFG-4: adding an adapter whose k does not divide an adapted layer's features raises
    before that layer changes.
    PEFT DIFFERS (CORE-CFG-4): peft 0.21.2 records the new adapter's r, alpha, k, hybrid_r and dropout on the
    layer before raising."""
    model, layer = adapt(nn.Linear(8, 8), r=2)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match="in_features"):
        model.add_adapter("bad", GraLoRAConfig(target_modules=["m"], r=3, gralora_k=3))
    assert list(layer.settings) == ["default"] and "bad" not in model.peft_config
    assert layer.state_dict().keys() == state.keys()


@pytest.mark.parametrize(("bias", "trainable"), [("none", set()), ("gralora_only", {"m.base_layer.bias"})])
def test_bias_option(bias: str, trainable: set[str]) -> None:
    """CORE-BIAS-1/2: `bias` is accepted and selects which base biases train; another value raises
    NotImplementedError at injection."""
    model, _ = adapt(nn.Linear(4, 4), r=2, bias=bias)
    biases = {k.removeprefix("base_model.model.") for k, p in model.named_parameters() if p.requires_grad}
    assert {k for k in biases if k.endswith("bias")} == trainable
    with pytest.raises(NotImplementedError, match="gralora"):
        adapt(nn.Linear(4, 4), r=2, bias="gralora")


@pytest.mark.parametrize(
    "module", [nn.Embedding(4, 4), nn.Conv2d(4, 4, 1), nn.Conv1d(4, 4, 1)], ids=lambda m: type(m).__name__
)
def test_unsupported_kind_rejected(module: nn.Module) -> None:
    """GRALORA-LAYER-1 / CORE-INJ-2: anything but Linear and transformers Conv1D is rejected naming its type,
    and left as it was."""
    model = Holder(module)
    with pytest.raises((TypeError, ValueError), match=type(module).__name__):
        get_peft_model(model, GraLoRAConfig(target_modules=["m"], r=2))
    assert model.m is module


@pytest.mark.parametrize("kind", ["linear", "hf_conv1d"])
def test_fan_in_fan_out_follows_the_layer(kind: str) -> None:
    """GRALORA-LAYER-2: the orientation comes from the layer; a disagreeing `fan_in_fan_out` warns (naming the
    module) and is overridden for that layer only; an agreeing one does not warn."""
    base = make_base(kind, 6, 4)
    x = torch.randn(3, 6, dtype=F64)
    agreeing = kind == "hf_conv1d"
    with pytest.warns(UserWarning, match="fan_in_fan_out") as record:
        model, layer = adapt(base, r=2, fan_in_fan_out=not agreeing, init_weights=False)
    assert any("'m'" in str(w.message) for w in record)
    assert model.peft_config["default"].fan_in_fan_out is (not agreeing)
    with torch.no_grad():
        expected = oracle_base(x, base) + x @ oracle_delta_weight(detached(layer), 64 / 2).T
        assert_close(model(x), expected, clause="GRALORA-LAYER-2")
        model.merge_adapter()
        assert_close(model(x), expected, clause="GRALORA-LAYER-2 (merged)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapt(base, r=2, fan_in_fan_out=agreeing)


# ---------------------------------------------------------------------------------------------------------------
# 7. transformers Conv1D through a tiny GPT-2 (GRALORA-LAYER-1, CORE-DEF-1, GRALORA-MERGE-1)
# ---------------------------------------------------------------------------------------------------------------
def test_gpt2_default_target_conv1d() -> None:
    """CORE-DEF-1: `target_modules=None` on GPT-2 adapts `c_attn` (transformers Conv1D, in 32 → out 96); the layer
    forward equals the oracle in logical orientation, the merge writes W_stored + ΔWᵀ (GRALORA-MERGE-1), and the
    merged model's output equals the unmerged one (CORE-MERGE-4, small-model ⟨N⟩)."""
    gpt2 = tiny_gpt2().double()
    model = get_peft_model(gpt2, GraLoRAConfig(r=4, gralora_k=4, hybrid_r=2, init_weights=False))
    keys = [k for k, m in model.base_model.model.named_modules() if isinstance(m, GraLoRALayer)]
    assert keys == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    layer = model.base_model.model.get_submodule(keys[0])
    assert layer.kind == "hf_conv1d" and (layer.in_features, layer.out_features) == (32, 96)
    uniform_(params_of(layer).values(), torch.Generator().manual_seed(8), -0.3, 0.3)
    x = torch.randn(2, 5, 32, dtype=F64)
    delta = oracle_delta_weight(detached(layer), 64 / 6)
    stored = layer.base_layer.weight.detach().clone()
    ids = token_batch(64)
    with torch.no_grad():
        assert_close(layer(x), oracle_base(x, layer.base_layer) + x @ delta.T, clause="GRALORA-FWD-1 (Conv1D)")
        logits = model(ids).logits
        model.merge_adapter()
        assert_close(layer.base_layer.weight, stored + delta.T, clause="GRALORA-MERGE-1 (Conv1D stored)")
        assert_close(model(ids).logits, logits, clause="CORE-MERGE-4", scope="model")
        model.unmerge_adapter()
    assert_close(layer.base_layer.weight, stored, clause="CORE-MERGE-6", also=(stored + delta.T,))


# ---------------------------------------------------------------------------------------------------------------
# 8. interchange with peft 0.21.2 (CORE-SAVE-10, GRALORA-SAVE-1)
# ---------------------------------------------------------------------------------------------------------------
class Net(nn.Module):
    """A torch Linear (8 → 12) feeding a transformers Conv1D (12 → 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 12)
        self.conv = Conv1D(8, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.tanh(self.lin(x)))


TARGETS = ["lin", "conv"]
VARIANTS = [
    pytest.param(k, h, init, id=f"k{k}-h{h}-init{init}") for k in (1, 2, 4) for h in (0, 2) for init in (True, False)
]
X_NET = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1), dtype=F64)


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().double()


def _config(k: int, h: int, init: bool) -> dict[str, Any]:
    return dict(r=4, gralora_k=k, hybrid_r=h, alpha=6, init_weights=init, target_modules=TARGETS)


def _adapter_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.named_parameters() if ".gralora_" in k}


def _perturb(model: nn.Module, seed: int) -> None:
    """Make every adapter tensor non-zero so that outputs and gradients depend on all of them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in _adapter_params(model).values():
            p.add_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 0.2 - 0.1)


def _expected_keys(h: int) -> set[str]:
    names = ["gralora_A", "gralora_B"] + ([A_GEN, B_GEN] if h else [])
    return {f"base_model.model.{key}.{name}" for key in TARGETS for name in names}


def _assert_same_params(ours: nn.Module, theirs: nn.Module) -> None:
    ours, theirs = _adapter_params(ours), _adapter_params(theirs)
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key


@pytest.mark.parametrize(("k", "h", "init"), VARIANTS)
def test_reference_checkpoint_loads_in_peft(k: int, h: int, init: bool, tmp_path) -> None:
    """CORE-SAVE-10, GRALORA-SAVE-1: reference saves (canonical keys, "peft_type": "GRALORA") → peft loads with
    bitwise-equal parameters and equal outputs on 2-D and 3-D inputs (fp64)."""
    ref = get_peft_model(_net(), GraLoRAConfig(**_config(k, h, init)))
    _perturb(ref, seed=k + 10 * h)
    ref.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "GRALORA"
    assert set(load_file(tmp_path / "adapter_model.safetensors")) == _expected_keys(h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(_net(), tmp_path)
    _assert_same_params(ref, loaded)
    with torch.no_grad():
        for x in (X_NET, X_NET[0]):
            assert_close(loaded(x), ref(x), clause="CORE-SAVE-10", scope="model")


@pytest.mark.parametrize(("k", "h", "init"), VARIANTS)
def test_peft_checkpoint_loads_in_reference(k: int, h: int, init: bool, tmp_path) -> None:
    """CORE-SAVE-10: peft saves → reference loads with bitwise-equal parameters and equal outputs (fp64)."""
    torch.manual_seed(4)
    theirs = peft.get_peft_model(_net(), peft.GraloraConfig(**_config(k, h, init)))
    _perturb(theirs, seed=k + 10 * h)
    theirs.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft writes config keys the reference does not know
        loaded = PeftModel.from_pretrained(_net(), tmp_path)
    _assert_same_params(loaded, theirs)
    with torch.no_grad():
        for x in (X_NET, X_NET[0]):
            assert_close(loaded(x), theirs(x), clause="CORE-SAVE-10", scope="model")


@pytest.mark.parametrize(("k", "h"), [(1, 0), (2, 2), (4, 2)])
def test_outputs_gradients_and_merge_agree_with_peft(k: int, h: int) -> None:
    """GRALORA-FWD-1, CORE-GRAD-1, GRALORA-MERGE-1: at equal weights (copied by canonical name) outputs, adapter
    gradients and merged weights (hybrid part and Conv1D orientation included) agree with peft (fp64)."""
    config = _config(k, h, False)
    ref = get_peft_model(_net(), GraLoRAConfig(**config))
    theirs = peft.get_peft_model(_net(), peft.GraloraConfig(**config))
    ours, their_params = _adapter_params(ref), _adapter_params(theirs)
    with torch.no_grad():
        for key, value in ours.items():
            their_params[key].copy_(value)
    cotangent = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(6), dtype=F64)
    outputs = []
    for model in (ref, theirs):
        out = model(X_NET)
        (out * cotangent).sum().backward()
        outputs.append(out.detach())
    assert_close(outputs[0], outputs[1], clause="GRALORA-FWD-1", scope="model")
    for key, value in ours.items():
        assert_close(value.grad, their_params[key].grad, clause=f"CORE-GRAD-1 ({key})", scope="model")
    with torch.no_grad():
        ref.merge_adapter()
        theirs.merge_adapter()
        for key in TARGETS:
            mine = ref.base_model.model.get_submodule(key).base_layer.weight
            other = theirs.base_model.model.get_submodule(key).base_layer.weight
            assert_close(mine, other, clause="GRALORA-MERGE-1", scope="model")


@pytest.mark.parametrize(("k", "h", "init"), [(2, 0, True), (4, 2, False)])
def test_gpt2_interchange(k: int, h: int, init: bool, tmp_path) -> None:
    """CORE-SAVE-10 on tiny GPT-2 with default targets (Conv1D `c_attn`), both ways through files."""
    ids = token_batch(64)
    config = dict(r=4, gralora_k=k, hybrid_r=h, init_weights=init)
    ref = get_peft_model(tiny_gpt2().double(), GraLoRAConfig(**config))
    theirs = peft.get_peft_model(tiny_gpt2().double(), peft.GraloraConfig(**config))
    for model, seed in ((ref, 1), (theirs, 2)):
        _perturb(model, seed)
    ref.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_peft = peft.PeftModel.from_pretrained(tiny_gpt2().double(), tmp_path / "ours")
        in_ref = PeftModel.from_pretrained(tiny_gpt2().double(), tmp_path / "theirs")
    _assert_same_params(ref, in_peft)
    _assert_same_params(in_ref, theirs)
    with torch.no_grad():
        assert_close(in_peft(ids).logits, ref(ids).logits, clause="CORE-SAVE-10", scope="model")
        assert_close(in_ref(ids).logits, theirs(ids).logits, clause="CORE-SAVE-10", scope="model")


def test_config_json_interchange(tmp_path) -> None:
    """CORE-SAVE-10: peft's adapter_config.json for GraLoRA becomes an equal reference config, and back."""
    theirs = peft.GraloraConfig(target_modules=["a"], r=6, gralora_k=3, hybrid_r=2, alpha=2.5, gralora_dropout=0.1)
    theirs.save_pretrained(tmp_path / "theirs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keys peft has and SPEC's table does not
        ours = GraLoRAConfig.from_pretrained(tmp_path / "theirs")
    assert isinstance(ours, GraLoRAConfig)
    assert {k: getattr(ours, k) for k in TABLE} == {k: getattr(theirs, k) for k in TABLE}
    ours.save_pretrained(tmp_path / "ours")
    back = peft.GraloraConfig.from_pretrained(tmp_path / "ours")
    assert {k: getattr(back, k) for k in TABLE} == {k: getattr(theirs, k) for k in TABLE}
