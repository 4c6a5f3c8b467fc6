"""Reference Bone/BAT and MiSS (SPEC §2): interchange with peft 0.21.2's MiSS, SPEC §2.8's worked examples, an
independent float64 oracle written from SPEC's text (index formula for T(B), tile loops for BAT), merge/unmerge,
mixed modes, dropout, dtypes, the `bias` option and config validation.

peft 0.21.2 has no Bone (its MiSS is the same mathematics; Bone checkpoints reach it through
`convert_checkpoint`, see test_convert.py). Where peft departs from SPEC the reference is checked against SPEC's
formula or a hand-derived case, never against peft; each such test names the clause (`PEFT DIFFERS` comments).
"""

from __future__ import annotations

import copy
import dataclasses
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
from tiny_models import Holder, tiny_llama
from torch import nn
from transformers.pytorch_utils import Conv1D

from reference_tuners import PeftConfig, PeftModel, get_peft_model
from reference_tuners import bone as bone_module
from reference_tuners.bone import BoneConfig, BoneLayer, MissConfig, MissLayer

F64 = torch.float64
# SPEC §8, (rtol, atol factor) per dtype: ⟨N⟩ single layer, ⟨N⟩ small model, ⟨A⟩ A-INV (BAT unmerge).
TOL = {
    "N": {
        F64: (1e-10, 1e-10),
        torch.float32: (1e-5, 1e-5),
        torch.bfloat16: (1.6e-2, 3e-2),
        torch.float16: (2e-3, 2e-3),
    },
    "N-model": {
        F64: (1e-9, 1e-9),
        torch.float32: (1e-4, 1e-4),
        torch.bfloat16: (5e-2, 5e-2),
        torch.float16: (5e-3,) * 2,
    },
    "A-INV": {
        F64: (1e-6, 1e-6),
        torch.float32: (1e-4, 1e-4),
        torch.bfloat16: (1e-1, 1e-1),
        torch.float16: (1e-2, 1e-2),
    },
}
TUNERS = {"bone": (BoneConfig, "bone_block"), "miss": (MissConfig, "miss_block")}
INIT = {"plain": False, "zero": True, "bat": "bat", "mini": "mini"}
# SPEC §2.1 / §2.9 tables (field: default).
BONE_TABLE = dict(
    r=64,
    target_modules=None,
    exclude_modules=None,
    init_weights=True,
    layers_to_transform=None,
    layers_pattern=None,
    bias="none",
    modules_to_save=None,
)
MISS_TABLE = dict(BONE_TABLE, miss_dropout=0.0, mini_r=1)
BASE_FIELDS = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision"}

pytestmark = pytest.mark.filterwarnings(
    "ignore:Bone is deprecated:FutureWarning",
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",  # transformers, through peft
)


# ---------------------------------------------------------------------------------------------------------------
# helpers: tolerance (SPEC §8), models, the float64 oracle (SPEC §2.4–§2.6, §2.9)
# ---------------------------------------------------------------------------------------------------------------
def assert_close(actual, expected, *, clause: str, cls: str = "N", dtype=F64, also=()) -> None:
    """SPEC §8: |actual − ref| ≤ a·S + r·|ref|, S = max(1, max|ref|, max|T| for T in `also`)."""
    __tracebackhide__ = True
    rtol, a = TOL[cls][dtype]
    actual, expected = actual.detach().to(F64), expected.detach().to(F64)
    assert actual.shape == expected.shape, f"{clause}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max([1.0] + [t.detach().abs().max().item() for t in (expected, *also) if t.numel()])
    err = (actual - expected).abs()
    ok = err <= a * scale + rtol * expected.abs()
    assert bool(ok.all()), f"{clause}: max error {err.max().item():.3e} exceeds {cls} {dtype} (S={scale:.3g})"


def make_base(kind: str, cin: int, cout: int, bias: bool = True, dtype=F64) -> nn.Module:
    base = nn.Linear(cin, cout, bias=bias) if kind == "linear" else Conv1D(cout, cin)  # Conv1D stores Wᵀ
    return base.to(dtype)


def logical_w(base: nn.Module) -> torch.Tensor:
    """SPEC §0.4: logical orientation (a transformers Conv1D stores Wᵀ)."""
    return base.weight.T if isinstance(base, Conv1D) else base.weight


def mode_config(tuner: str, mode: str, r: int, mini_r: int = 1) -> dict[str, Any]:
    """Config fields selecting `mode` ("plain", "zero", "bat", "mini"); MiSS also gets `mini_r`."""
    return dict(r=r, init_weights=INIT[mode], **({"mini_r": mini_r} if tuner == "miss" else {}))


def adapt(base: nn.Module, tuner: str = "bone", name: str = "default", **config: Any):
    """Adapt a copy of `base` (key "m") with the reference; returns (model, layer)."""
    config_cls, _ = TUNERS[tuner]
    model = get_peft_model(Holder(copy.deepcopy(base)), config_cls(target_modules=["m"], **config), name)
    return model, model.base_model.model.m


def add(model, tuner: str, name: str, **config: Any) -> None:
    config_cls, _ = TUNERS[tuner]
    model.add_adapter(name, config_cls(target_modules=["m"], **config))


def uniform(shape, gen: torch.Generator, bound: float = 1.0, dtype=F64) -> torch.Tensor:
    return ((torch.rand(shape, generator=gen, dtype=F64) * 2 - 1) * bound).to(dtype)


def block_values(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Plain/mini blocks U(±1); BAT blocks U(±0.8/r), so ‖B[p]‖₂ ≤ ‖B[p]‖_F ≤ 0.8 and cond(I + B[p]) ≤ 9 (SPEC §8)."""
    return uniform(shape, gen, 0.8 / shape[-1] if len(shape) == 3 else 1.0)


def set_block(layer, name: str, value: torch.Tensor) -> None:
    with torch.no_grad():
        layer.blocks[name].copy_(value)


def randomise(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(uniform(p.shape, gen, dtype=p.dtype))


def oracle_t(block: torch.Tensor, out: int, fan_in: int) -> torch.Tensor:
    """BONE-FWD-1, MISS-MINI-2: ΔW[o, i] = B[i mod r, o mod w] for B of shape (r, w) (w = out: plain)."""
    r, w = block.shape
    return block[torch.arange(fan_in) % r][:, torch.arange(out) % w].T


def oracle_chunk_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """SPEC §2.4's second form: right-pad x with zeros to ⌈in/r⌉·r, cut into chunks of r, sum the chunks."""
    padded = torch.cat([x, x.new_zeros(*x.shape[:-1], -x.shape[-1] % r)], dim=-1)
    return padded.reshape(*x.shape[:-1], -1, r).sum(-2)


def oracle_bat(weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """SPEC §2.5: every tile W_{p,c} becomes W_{p,c}(I + B[p]) + B[p]."""
    r = block.shape[-1]
    eye = torch.eye(r, dtype=weight.dtype)
    rows = []
    for p in range(weight.shape[0] // r):
        tiles = [weight[p * r : (p + 1) * r, c * r : (c + 1) * r] for c in range(weight.shape[1] // r)]
        rows.append(torch.cat([t @ (eye + block[p]) + block[p] for t in tiles], dim=1))
    return torch.cat(rows, dim=0)


def oracle_unbat(weight: torch.Tensor, block: torch.Tensor, inverse_dtype=F64) -> torch.Tensor:
    """BONE-BAT-3: every tile becomes (W_{p,c} − B[p])(I + B[p])⁻¹ (the inverse computed in `inverse_dtype`)."""
    r = block.shape[-1]
    out = weight.clone()
    for p in range(weight.shape[0] // r):
        inverse = torch.linalg.inv((torch.eye(r, dtype=weight.dtype) + block[p]).to(inverse_dtype)).to(weight.dtype)
        for c in range(weight.shape[1] // r):
            tile = (slice(p * r, (p + 1) * r), slice(c * r, (c + 1) * r))
            out[tile] = (weight[tile] - block[p]) @ inverse
    return out


def oracle_weight(weight: torch.Tensor, adapters: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """BONE-MULTI-2: apply the adapters in order (plain/mini: W + T(B); BAT: 𝒯(W))."""
    for mode, block in adapters:
        if mode == "bat":
            weight = oracle_bat(weight, block)
        else:
            weight = weight + oracle_t(block, *weight.shape)
    return weight


def oracle_forward(x, weight, bias, adapters) -> torch.Tensor:
    """y = op(x; W_eff, b) = x W_effᵀ + b (Linear-type layers)."""
    y = x @ oracle_weight(weight, adapters).T
    return y if bias is None else y + bias


def state(layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W logical, b) of the base layer, as float64 copies."""
    bias = layer.base_layer.bias
    return logical_w(layer.base_layer).detach().clone(), None if bias is None else bias.detach().clone()


# ---------------------------------------------------------------------------------------------------------------
# 1. interchange with peft's MiSS (CORE-SAVE-10, MISS-SAVE-1; peft supports torch Linear only)
# ---------------------------------------------------------------------------------------------------------------
class Net(nn.Module):
    """in % r ≠ 0 for r = 3 (lin0: 8), a layer without bias, out divisible by r = 2 and mini_r = 3."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(8, 12)
        self.lin1 = nn.Linear(12, 6, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.tanh(self.lin0(x)))


NET_VARIANTS = {
    "plain": dict(r=3, init_weights=False),
    "bat": dict(r=2, init_weights="bat"),
    "mini": dict(r=3, init_weights="mini", mini_r=3),
}
X_NET = uniform((2, 3, 8), torch.Generator().manual_seed(1))


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().double()


def _blocks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.named_parameters() if ".miss_block." in k}


def _perturb(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in _blocks(model).values():
            p.copy_(block_values(tuple(p.shape), gen))


@pytest.mark.parametrize("variant", NET_VARIANTS)
def test_reference_checkpoint_loads_in_peft(variant: str, tmp_path) -> None:
    """CORE-SAVE-10, MISS-SAVE-1: reference saves → peft loads: bitwise-equal blocks and equal outputs, also after
    merging; at equal weights both give the same block gradients."""
    ref = get_peft_model(_net(), MissConfig(target_modules=["lin0", "lin1"], **NET_VARIANTS[variant]))
    _perturb(ref, seed=2)
    ref.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MISS"
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys == {"base_model.model.lin0.miss_block", "base_model.model.lin1.miss_block"}
    theirs = peft.PeftModel.from_pretrained(_net(), tmp_path, is_trainable=True)
    ours, their_blocks = _blocks(ref), _blocks(theirs)
    assert ours.keys() == their_blocks.keys()
    for key, value in ours.items():
        assert torch.equal(value, their_blocks[key]), key
    cotangent = uniform((2, 3, 6), torch.Generator().manual_seed(3))
    outputs = []
    for model in (ref, theirs):
        y = model(X_NET)
        (y * cotangent).sum().backward()
        outputs.append(y.detach())
    assert_close(outputs[1], outputs[0], clause="CORE-SAVE-10", cls="N-model")
    for key, value in ours.items():
        assert_close(their_blocks[key].grad, value.grad, clause="CORE-GRAD-1", cls="N-model")
    with torch.no_grad():
        ref.base_model.merge_adapter()
        theirs.base_model.merge_adapter()
        assert_close(theirs(X_NET), ref(X_NET), clause="CORE-MERGE-4", cls="N-model")


@pytest.mark.parametrize("variant", NET_VARIANTS)
def test_peft_checkpoint_loads_in_reference(variant: str, tmp_path) -> None:
    """CORE-SAVE-10: peft saves → reference loads: bitwise-equal blocks, equal outputs."""
    theirs = peft.get_peft_model(_net(), peft.MissConfig(target_modules=["lin0", "lin1"], **NET_VARIANTS[variant]))
    _perturb(theirs, seed=4)
    theirs.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft writes config keys SPEC's table does not have
        ref = PeftModel.from_pretrained(_net(), tmp_path)
    assert isinstance(ref.peft_config["default"], MissConfig)
    ours, their_blocks = _blocks(ref), _blocks(theirs)
    assert ours.keys() == their_blocks.keys()
    for key, value in their_blocks.items():
        assert torch.equal(ours[key], value), key
    with torch.no_grad():
        assert_close(ref(X_NET), theirs(X_NET), clause="CORE-SAVE-10", cls="N-model")


def test_peft_config_defaults_and_json() -> None:
    """MISS-CFG-1: SPEC's defaults equal peft's; peft's adapter_config.json for MiSS reads as an equal config."""
    theirs = peft.MissConfig(r=5, target_modules=["a"], init_weights="mini", mini_r=2, miss_dropout=0.25)
    data = json.loads(json.dumps(theirs.to_dict(), default=sorted))  # sets are written as lists
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = PeftConfig.from_dict({k: (sorted(v) if isinstance(v, set) else v) for k, v in data.items()})
    assert isinstance(ours, MissConfig)
    for key in MISS_TABLE:
        assert getattr(ours, key) == getattr(theirs, key), key
    defaults = peft.MissConfig()
    assert {k: getattr(defaults, k) for k in MISS_TABLE} == MISS_TABLE


# ---------------------------------------------------------------------------------------------------------------
# 2. SPEC §2.8 worked examples, §7.2 counts, init (BONE-PARAM-1/2, BONE-COUNT-1, MISS-COUNT-1, BONE-INIT-1/2)
# ---------------------------------------------------------------------------------------------------------------
WORKED = [
    pytest.param("bone", dict(r=4), (4, 20), 80, id="bone-r4"),
    pytest.param("bone", dict(r=2, init_weights="bat"), (10, 2, 2), 40, id="bat-r2"),
    pytest.param("miss", dict(r=3, init_weights="mini", mini_r=5), (3, 5), 15, id="mini-r3-5"),
    pytest.param("miss", dict(r=4, init_weights=False), (4, 20), 80, id="miss-r4"),
    pytest.param("miss", dict(r=2, init_weights="bat"), (10, 2, 2), 40, id="miss-bat-r2"),
]


@pytest.mark.parametrize(("tuner", "config", "shape", "count"), WORKED)
def test_worked_example_shapes_and_counts(tuner: str, config: dict, shape: tuple, count: int) -> None:
    """SPEC §2.8 (Linear 10→20 with bias): block shape and trainable count; in/out features (CORE-INJ-3)."""
    model, layer = adapt(nn.Linear(10, 20), tuner, **config)
    params = layer.adapter_parameters("default")
    assert list(params) == [TUNERS[tuner][1]]
    assert tuple(params[TUNERS[tuner][1]].shape) == shape
    assert model.get_nb_trainable_parameters()[0] == count
    assert (layer.in_features, layer.out_features) == (10, 20)


def test_worked_example_tiling() -> None:
    """SPEC §2.8: in=5, r=2 → columns 0, 2, 4 of ΔW equal B[0]ᵀ and columns 1, 3 equal B[1]ᵀ (BONE-FWD-2)."""
    base = nn.Linear(5, 3, bias=False).double()
    nn.init.zeros_(base.weight)  # the merged weight is then ΔW itself
    model, layer = adapt(base, r=2, init_weights=False)
    block = layer.bone_block["default"].detach().clone()
    expected = torch.stack([block[0], block[1], block[0], block[1], block[0]], dim=1)
    assert torch.equal(oracle_t(block, 3, 5), expected)  # the oracle agrees with the example
    model.merge_adapter()
    assert torch.equal(layer.base_layer.weight, expected)
    x = uniform((4, 5), torch.Generator().manual_seed(0))
    assert_close(oracle_chunk_sum(x, 2) @ block, x @ expected.T, clause="BONE-FWD-1 (both forms)")


def test_worked_example_bat_tiles() -> None:
    """SPEC §2.8: BAT on a 4×4 weight, r=2 — tiles W_{0,0}, W_{0,1} use B[0], tiles W_{1,0}, W_{1,1} use B[1].
    Hand-derived with W = 1 (all ones, J): J(I + B) + B for B[0] = [[0,1],[0,0]] is [[1,3],[1,2]], for
    B[1] = [[0,0],[2,0]] it is [[3,1],[5,1]]."""
    base = nn.Linear(4, 4, bias=False).double()
    nn.init.ones_(base.weight)
    block = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [2.0, 0.0]]], dtype=F64)
    expected = torch.tensor([[1, 3, 1, 3], [1, 2, 1, 2], [3, 1, 3, 1], [5, 1, 5, 1]], dtype=F64)
    assert torch.equal(oracle_bat(base.weight.detach(), block), expected)
    model, layer = adapt(base, r=2, init_weights="bat")
    set_block(layer, "default", block)
    x = torch.eye(4, dtype=F64)
    with torch.no_grad():
        assert torch.equal(model(x), expected.T)  # row k of the output is column k of W_eff
        model.merge_adapter()
    assert torch.equal(layer.base_layer.weight, expected)
    model.unmerge_adapter()
    assert_close(layer.base_layer.weight, base.weight, clause="BONE-BAT-3", cls="A-INV", also=(expected,))


@pytest.mark.parametrize(
    ("tuner", "config", "count"),
    [
        ("bone", dict(r=16), 18_432),
        ("miss", dict(r=16), 18_432),
        ("bone", dict(r=16, init_weights="bat"), 18_432),
        ("miss", dict(r=16, init_weights="mini", mini_r=8), 1_792),
    ],
    ids=["bone", "miss", "bat", "mini"],
)
def test_tiny_llama_counts(tuner: str, config: dict, count: int) -> None:
    """SPEC §7.2: trainable counts on the tiny Llama's seven projections (BONE-COUNT-1, MISS-COUNT-1)."""
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(tiny_llama(), TUNERS[tuner][0](target_modules=targets, **config))
    assert model.get_nb_trainable_parameters()[0] == count


def test_random_init_bound() -> None:
    """BONE-INIT-2 (⟨P⟩, SPEC §8): U(±1/√out) on the (r, out) block; hard bound, moments for n ≥ 10⁴."""
    torch.manual_seed(0)
    _, layer = adapt(nn.Linear(128, 256), r=64, init_weights=False)
    flat = layer.bone_block["default"].detach().reshape(-1).double()
    bound, n = 1 / math.sqrt(256), flat.numel()
    assert n >= 10_000
    assert flat.abs().max() <= bound * (1 + 2.0**-24)
    assert flat.abs().max() >= 0.99 * bound
    assert abs(flat.mean()) <= 6 * bound / math.sqrt(3 * n)
    assert abs(flat.var() - bound**2 / 3) <= 6 * math.sqrt(4 / 45) * bound**2 / math.sqrt(n)


@pytest.mark.parametrize("dtype", [F64, torch.bfloat16], ids=["float64", "bfloat16"])
@pytest.mark.parametrize("kind", ["linear", "hf_conv1d"])
@pytest.mark.parametrize(
    ("tuner", "init"), [("bone", True), ("bone", "bat"), ("miss", True), ("miss", "bat"), ("miss", "mini")]
)
def test_identity_at_init(tuner: str, init, kind: str, dtype: torch.dtype) -> None:
    """BONE-INIT-1, MISS-MINI-1 (zero blocks), BONE-ID-1 (⟨Z⟩ in every dtype, here also a bfloat16 base with
    float32 blocks: output = base(x) exactly); `False` is not identity."""
    base = make_base(kind, 6, 4, dtype=dtype)
    x = uniform((3, 6), torch.Generator().manual_seed(0), dtype=dtype)
    model, layer = adapt(base, tuner, r=2, init_weights=init, **({"mini_r": 2} if init == "mini" else {}))
    assert not layer.blocks["default"].any()
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
        model, _ = adapt(base, tuner, r=2, init_weights=False)
        assert not torch.equal(model(x), base(x))


def test_init_is_reproducible() -> None:
    """CORE-INIT-1: the same torch RNG state gives equal blocks."""
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(adapt(nn.Linear(6, 5), "miss", r=3, init_weights=False)[1].miss_block["default"].detach())
    assert torch.equal(*runs)


# ---------------------------------------------------------------------------------------------------------------
# 3. one layer vs the oracle: forward, gradients, merge, unmerge (hypothesis)
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    tuner: str
    mode: str  # plain, bat, mini
    kind: str
    r: int
    cin: int
    cout: int
    mini_r: int
    lead: tuple[int, ...]
    bias: bool
    seed: int


@st.composite
def layer_cases(draw: st.DrawFn) -> Case:
    tuner = draw(st.sampled_from(["bone", "miss"]), label="tuner")
    mode = draw(st.sampled_from(["plain", "bat", "mini"] if tuner == "miss" else ["plain", "bat"]), label="mode")
    kind = draw(st.sampled_from(["linear", "hf_conv1d"]), label="kind")
    r = draw(st.integers(1, 4), label="r")
    mini_r = draw(st.integers(1, 3), label="mini_r") if mode == "mini" else 1
    if mode == "bat":
        cin, cout = r * draw(st.integers(1, 3), label="in/r"), r * draw(st.integers(1, 3), label="out/r")
    else:
        cin = draw(st.integers(r, 10), label="in")
        cout = mini_r * draw(st.integers(1, 3), label="out/mini_r") if mode == "mini" else draw(st.integers(1, 8))
    lead = tuple(draw(st.lists(st.integers(0, 3), max_size=3), label="leading dims"))
    bias = kind == "hf_conv1d" or draw(st.booleans(), label="bias")
    return Case(tuner, mode, kind, r, cin, cout, mini_r, lead, bias, draw(st.integers(0, 2**31 - 1), label="seed"))


@given(case=layer_cases())
@example(case=Case("bone", "plain", "linear", 1, 1, 1, 1, (0,), True, 0))  # rank 1, batch of zero
@example(case=Case("bone", "plain", "linear", 3, 7, 4, 1, (), False, 1))  # 1-D input, in % r ≠ 0
@example(case=Case("miss", "mini", "hf_conv1d", 4, 9, 6, 3, (2, 1, 3), True, 2))  # 4-D input
@example(case=Case("bone", "bat", "hf_conv1d", 2, 4, 6, 1, (2,), True, 3))
@example(case=Case("miss", "bat", "linear", 3, 9, 3, 1, (1, 2), False, 4))
def test_layer_matches_oracle(case: Case) -> None:
    """BONE-FWD-1/2 (in % r ≠ 0 included), BONE-BAT-1/2/3/5, MISS-MINI-2, MISS-MATH-1, CORE-FWD-2 (1-D…4-D, batch
    0), CORE-GRAD-1/2 (x and the block), BONE-MERGE-1 / CORE-MERGE-4 (merged weight and output, bias unchanged) and
    the unmerge (⟨N⟩ plain and mini, A-INV for BAT), on Linear and transformers Conv1D."""
    gen = torch.Generator().manual_seed(case.seed)
    base = make_base(case.kind, case.cin, case.cout, case.bias)
    randomise(base, gen)
    model, layer = adapt(base, case.tuner, **mode_config(case.tuner, case.mode, case.r, case.mini_r))
    block = block_values(tuple(layer.blocks["default"].shape), gen)
    set_block(layer, "default", block)
    weight, bias = state(layer)
    x = uniform((*case.lead, case.cin), gen)

    x_ref, x_oracle, leaf = x.clone().requires_grad_(), x.clone().requires_grad_(), block.clone().requires_grad_()
    y = model(x_ref)
    y_oracle = oracle_forward(x_oracle, weight, bias, [(case.mode, leaf)])
    assert y.shape == (*case.lead, case.cout)
    assert_close(y, y_oracle, clause="BONE-FWD-1 / BONE-BAT-1 / MISS-MINI-2")
    cotangent = uniform(y.shape, gen)
    (y * cotangent).sum().backward()
    (y_oracle * cotangent).sum().backward()
    assert_close(x_ref.grad, x_oracle.grad, clause="CORE-GRAD-1 (x)")
    assert_close(layer.blocks["default"].grad, leaf.grad, clause="CORE-GRAD-1 / BONE-BAT-5 (block)")
    assert layer.base_layer.weight.grad is None

    with torch.no_grad():
        model.merge_adapter()
        merged = logical_w(layer.base_layer).clone()
        assert_close(merged, oracle_weight(weight, [(case.mode, block)]), clause="BONE-MERGE-1 / BONE-BAT-2")
        assert bias is None or torch.equal(layer.base_layer.bias, bias)
        assert_close(model(x), y_oracle, clause="CORE-MERGE-4")
        model.unmerge_adapter()
    restored = logical_w(layer.base_layer)
    cls = "A-INV" if case.mode == "bat" else "N"
    assert_close(restored, weight, clause="BONE-MERGE-1 / BONE-BAT-3", cls=cls, also=(merged,))
    if case.mode == "bat":
        assert_close(restored, oracle_unbat(merged, block), clause="BONE-BAT-3 / BONE-DTYPE-1 (float64 inverse)")


@pytest.mark.parametrize("mode", ["plain", "mini"])
def test_delta_does_not_depend_on_weight(mode: str) -> None:
    """BONE-FWD-3: changing W leaves y − base(x) unchanged; rank T(B) ≤ r."""
    gen = torch.Generator().manual_seed(0)
    model, layer = adapt(make_base("linear", 7, 6), "miss", r=3, init_weights=INIT[mode], mini_r=2)
    set_block(layer, "default", block_values(tuple(layer.miss_block["default"].shape), gen))
    x = uniform((4, 7), gen)
    with torch.no_grad():
        first = model(x) - layer.base_layer(x)
        layer.base_layer.weight.mul_(-3).add_(1)
        assert_close(model(x) - layer.base_layer(x), first, clause="BONE-FWD-3")
    delta = oracle_t(layer.miss_block["default"].detach(), 6, 7)
    assert torch.linalg.matrix_rank(delta) <= 3


@pytest.mark.parametrize(
    ("mode", "kind"), [("plain", "linear"), ("mini", "hf_conv1d"), ("bat", "linear"), ("bat", "hf_conv1d")]
)
def test_gradcheck(mode: str, kind: str) -> None:
    """CORE-GRAD-1 / BONE-BAT-5 (⟨G⟩): autograd equals central finite differences (eps 1e-6, atol 1e-5, rtol 1e-3)."""
    gen = torch.Generator().manual_seed(1)
    cin, r = (4, 2) if mode == "bat" else (5, 2)
    _, layer = adapt(make_base(kind, cin, 4), "miss", r=r, init_weights=INIT[mode], mini_r=2)
    block = block_values(tuple(layer.miss_block["default"].shape), gen).requires_grad_()
    bias = layer.base_layer.bias.detach().clone().requires_grad_()
    x = uniform((3, cin), gen).requires_grad_()

    def function(x: torch.Tensor, block: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"miss_block.default": block, "base_layer.bias": bias}, (x,))

    assert torch.autograd.gradcheck(function, (x, block, bias), eps=1e-6, atol=1e-5, rtol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# 4. several adapters: plain sum, BAT order, mixed modes (BONE-MULTI-1/2, BONE-BAT-1/2)
# ---------------------------------------------------------------------------------------------------------------
def _multi(specs: list[tuple[str, dict]], fan_in: int = 6, out: int = 6, kind: str = "linear", seed: int = 0):
    """A MiSS layer with one adapter per spec (named a0, a1, …), every block random."""
    gen = torch.Generator().manual_seed(seed)
    base = make_base(kind, fan_in, out)
    randomise(base, gen)
    model, layer = adapt(base, "miss", name="a0", **specs[0][1])
    for i, (_, config) in enumerate(specs[1:], start=1):
        add(model, "miss", f"a{i}", **config)
    blocks = {}
    for i, (mode, _) in enumerate(specs):
        blocks[f"a{i}"] = (mode, block_values(tuple(layer.miss_block[f"a{i}"].shape), gen))
        set_block(layer, f"a{i}", blocks[f"a{i}"][1])
    return model, layer, blocks, uniform((2, 3, fan_in), gen)


def _check_order(model, layer, blocks, x, order: list[str], clause: str) -> torch.Tensor:
    """Forward with active `order` = oracle; merging in that order gives the oracle weight and the same output;
    unmerging restores W (A-INV when a BAT adapter is involved)."""
    model.base_model.set_adapter(order)
    weight, bias = state(layer)
    adapters = [blocks[n] for n in order]
    cls = "A-INV" if any(mode == "bat" for mode, _ in adapters) else "N"
    with torch.no_grad():
        y = model(x)
        assert_close(y, oracle_forward(x, weight, bias, adapters), clause=clause)
        model.base_model.merge_adapter()
        assert layer.merged_adapters == order
        merged = logical_w(layer.base_layer).clone()
        assert_close(merged, oracle_weight(weight, adapters), clause=clause + " (merge)")
        assert_close(model(x), y, clause="CORE-MERGE-4")
        model.base_model.unmerge_adapter()
    assert_close(logical_w(layer.base_layer), weight, clause="CORE-MERGE-6", cls=cls, also=(merged,))
    return y


def test_plain_adapters_add_up() -> None:
    """BONE-MULTI-1: plain and mini adapters with their own r add up; the order is irrelevant; each sees the
    original x (in=7: r=2, 3 and 4 pad differently)."""
    specs = [("plain", dict(r=2, init_weights=False)), ("plain", dict(r=3, init_weights=False))]
    specs.append(("mini", dict(r=4, init_weights="mini", mini_r=3)))
    model, layer, blocks, x = _multi(specs, fan_in=7)
    forward = _check_order(model, layer, blocks, x, ["a0", "a1", "a2"], "BONE-MULTI-1")
    backward = _check_order(model, layer, blocks, x, ["a2", "a1", "a0"], "BONE-MULTI-1")
    assert_close(backward, forward, clause="BONE-MULTI-1 (order irrelevant)")


def test_bat_order_matters() -> None:
    """BONE-BAT-1/2: active BAT adapters apply in order, each to the previous result; merging [a1, a2] equals the
    forward with active [a1, a2]; [a2, a1] differs."""
    specs = [("bat", dict(r=2, init_weights="bat")), ("bat", dict(r=3, init_weights="bat"))]
    model, layer, blocks, x = _multi(specs)
    first = _check_order(model, layer, blocks, x, ["a0", "a1"], "BONE-BAT-1")
    second = _check_order(model, layer, blocks, x, ["a1", "a0"], "BONE-BAT-1")
    assert (first - second).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["linear", "hf_conv1d"])
@pytest.mark.parametrize(
    "order",
    [["a0", "a1", "a2", "a3"], ["a1", "a0", "a3", "a2"], ["a3", "a1", "a2"], ["a2", "a1", "a0"]],
    ids=["plain-bat-mini-bat", "bat-plain-bat-mini", "bat-bat-mini", "mini-bat-plain"],
)
def test_mixed_modes(order: list[str], kind: str) -> None:
    """BONE-MULTI-2: mixed modes on one layer apply the active list in order to the effective weight (plain/mini
    W + T(B), BAT 𝒯(W)); merge follows the same order. PEFT DIFFERS: peft 0.21.2 keeps one mode per layer (that of
    the first adapter) and fails with a RuntimeError in forward when a BAT adapter joins a plain one, neither
    following the rule nor rejecting the adapter at `add_adapter`."""
    specs = [
        ("plain", dict(r=3, init_weights=False)),
        ("bat", dict(r=2, init_weights="bat")),
        ("mini", dict(r=2, init_weights="mini", mini_r=3)),
        ("bat", dict(r=3, init_weights="bat")),
    ]
    model, layer, blocks, x = _multi(specs, kind=kind)
    _check_order(model, layer, blocks, x, order, "BONE-MULTI-2")


@pytest.mark.parametrize("mode", ["plain", "mini"])
def test_plain_forward_builds_no_weight_and_no_padding(mode: str) -> None:
    """SPEC §0.5 (fast path): plain and mini forwards never build ΔW = T(B) nor a zero-padded copy of x (here
    in % r ≠ 0); test_layer_matches_oracle shows they equal the naive x T(B)ᵀ."""
    model, layer = adapt(make_base("linear", 7, 6), "miss", r=3, init_weights=INIT[mode], mini_r=2)
    set_block(layer, "default", block_values(tuple(layer.miss_block["default"].shape), torch.Generator()))
    x = uniform((4, 7), torch.Generator().manual_seed(0))
    no_weight = mock.patch.object(bone_module, "tiled", side_effect=AssertionError("ΔW built in forward"))
    no_padding = mock.patch.object(F, "pad", side_effect=AssertionError("x padded in forward"))
    with no_weight, no_padding, torch.no_grad():
        y = model(x)
    expected = oracle_forward(x, *state(layer), [(mode, layer.miss_block["default"].detach())])
    assert_close(y, expected, clause="BONE-FWD-1")


def test_bat_forward_builds_one_weight() -> None:
    """SPEC §0.5 (fast path): with BAT adapters active the layer runs one `op(x; W_eff, b)` whatever their number,
    trailing plain adapters add s(x) B on the input side, and the result equals the oracle (test_mixed_modes)."""
    specs = [("bat", dict(r=2, init_weights="bat")), ("bat", dict(r=3, init_weights="bat"))]
    specs.append(("plain", dict(r=3, init_weights=False)))
    model, layer, _, x = _multi(specs)
    model.base_model.set_adapter(["a0", "a1", "a2"])
    with mock.patch.object(type(layer), "op", autospec=True, side_effect=type(layer).op) as op:
        with torch.no_grad():
            model(x)
    assert op.call_count == 1


# ---------------------------------------------------------------------------------------------------------------
# 5. BAT unmerge: singular blocks, precision, half precision (BONE-BAT-3/4, BONE-DTYPE-1, CORE-MERGE-7)
# ---------------------------------------------------------------------------------------------------------------
def _bat_layer(tuner: str = "bone", dtype=F64, autocast: bool = True, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    base = make_base("linear", 4, 4, dtype=dtype)
    randomise(base, gen)
    config_cls, _ = TUNERS[tuner]
    model = get_peft_model(
        Holder(base), config_cls(target_modules=["m"], r=2, init_weights="bat"), autocast_adapter_dtype=autocast
    )
    layer = model.base_model.model.m
    set_block(layer, "default", block_values((2, 2, 2), gen).to(layer.blocks["default"].dtype))
    return model, layer


@pytest.mark.parametrize("tuner", ["bone", "miss"])
def test_singular_block_unmerge_raises(tuner: str) -> None:
    """BONE-BAT-4: I + B[p] singular → unmerge raises ValueError naming the adapter, which stays merged and recorded
    with the weight untouched (also through `unmerge_adapter` and the disable context, CORE-LIFE-6). PEFT DIFFERS:
    peft 0.21.2 raises torch's LinAlgError, but only after dropping the adapter from `merged_adapters`, so the still
    merged weight is no longer recorded as merged."""
    model, layer = _bat_layer(tuner)
    with torch.no_grad():
        layer.blocks["default"][1] = -torch.eye(2, dtype=F64)
    model.merge_adapter()
    merged = layer.base_layer.weight.detach().clone()
    for attempt in (layer.unmerge, model.unmerge_adapter):
        with pytest.raises(ValueError, match="default") as info:
            attempt()
        assert "singular" in str(info.value)
        assert layer.merged_adapters == ["default"]
        assert torch.equal(layer.base_layer.weight, merged)
    with pytest.raises(ValueError, match="default"), model.disable_adapter(), torch.no_grad():
        model(torch.ones(1, 4, dtype=F64))
    assert layer.merged_adapters == ["default"] and torch.equal(layer.base_layer.weight, merged)


def test_non_finite_unmerge_and_safe_merge() -> None:
    """BONE-BAT-4 (a non-finite block: the unmerge would write NaN → ValueError, weights untouched) and
    CORE-MERGE-7 (safe merge rejects it naming the adapter and writes nothing)."""
    model, layer = _bat_layer()
    with torch.no_grad():
        layer.bone_block["default"][0, 0, 0] = float("nan")
    weight = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="default"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, weight) and not layer.merged
    model.merge_adapter()
    merged = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="default"):
        model.unmerge_adapter()
    assert layer.merged_adapters == ["default"]
    assert torch.equal(layer.base_layer.weight.isnan(), merged.isnan())
    assert torch.equal(layer.base_layer.weight.nan_to_num(), merged.nan_to_num())


def test_singular_second_adapter_keeps_both_merged() -> None:
    """BONE-BAT-4 with LIFO (CORE-MERGE-5): the last merged adapter fails first, so nothing is unmerged."""
    model, layer = _bat_layer()
    add(model, "bone", "other", r=2, init_weights="bat")
    with torch.no_grad():
        layer.bone_block["other"][0] = -torch.eye(2, dtype=F64)
    model.merge_adapter(["default", "other"])
    merged = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="other"):
        model.unmerge_adapter()
    assert layer.merged_adapters == ["default", "other"] and torch.equal(layer.base_layer.weight, merged)


def test_float64_unmerge_uses_float64_inverse() -> None:
    """BONE-DTYPE-1 (⟨N⟩): float64 blocks invert I + B[p] in float64, so the unmerge equals the float64 oracle to
    ⟨N⟩ (1e-10); a float32 inverse misses that by orders of magnitude. PEFT DIFFERS: peft 0.21.2 always inverts in
    float32 (its float64 BAT round trip is off by ~3e-8)."""
    gen = torch.Generator().manual_seed(0)
    model, layer = adapt(make_base("linear", 8, 8), r=4, init_weights="bat")
    randomise(layer.base_layer, gen)
    block = block_values((2, 4, 4), gen) * 1.2  # cond(I + B[p]) up to 1.96 / 0.04: still ≤ 10 for these draws
    assert max(torch.linalg.cond(torch.eye(4, dtype=F64) + b).item() for b in block) <= 10
    set_block(layer, "default", block)
    model.merge_adapter()
    merged = layer.base_layer.weight.detach().clone()
    model.unmerge_adapter()
    expected = oracle_unbat(merged, block)
    assert_close(layer.base_layer.weight, expected, clause="BONE-DTYPE-1")
    rough = oracle_unbat(merged, block, inverse_dtype=torch.float32)
    assert (rough - expected).abs().max() > 1e-9  # the check above separates the two precisions


@pytest.mark.parametrize(
    ("dtype", "autocast"), [(torch.float16, False), (torch.bfloat16, False), (torch.bfloat16, True)]
)
def test_half_precision_bat(dtype: torch.dtype, autocast: bool) -> None:
    """BONE-DTYPE-1, CORE-DTYPE-1/2/3: half-precision bases, with or without float32 adapters; forward in x's dtype
    and close to the oracle; merge stores the base dtype; the unmerge inverts in float32 (torch has no half-precision
    inverse on CPU) and restores W within A-INV."""
    model, layer = _bat_layer(dtype=dtype, autocast=autocast, seed=3)
    block = layer.bone_block["default"]
    assert block.dtype == (torch.float32 if autocast else dtype)
    weight, bias = state(layer)
    x = uniform((3, 4), torch.Generator().manual_seed(4), dtype=dtype)
    expected = oracle_forward(x.double(), weight.double(), bias.double(), [("bat", block.detach().double())])
    with torch.no_grad():
        y = model(x)
        assert y.dtype == dtype
        assert_close(y, expected, clause="CORE-DTYPE-2", dtype=dtype)
        model.merge_adapter()
        merged = layer.base_layer.weight.detach().clone()
        assert merged.dtype == dtype
        model.unmerge_adapter()
    assert_close(layer.base_layer.weight, weight, clause="BONE-BAT-3", cls="A-INV", dtype=dtype, also=(merged,))


@pytest.mark.parametrize("mode", ["plain", "mini"])
def test_half_precision_plain_and_mini(mode: str) -> None:
    """CORE-DTYPE-2/3, CORE-MERGE-6, CORE-FWD-6: float16 base and blocks (no autocast); the merge leaves the block
    as it was. PEFT DIFFERS: peft 0.21.2 merging a float16/bfloat16 mini block on CPU replaces it by its expanded
    (r, out) copy, and the following unmerge fails with a RuntimeError."""
    gen = torch.Generator().manual_seed(5)
    base = make_base("linear", 7, 6, dtype=torch.float16)
    model = get_peft_model(
        Holder(base),
        MissConfig(target_modules=["m"], r=3, init_weights=INIT[mode], mini_r=2),
        autocast_adapter_dtype=False,
    )
    layer = model.base_model.model.m
    set_block(layer, "default", block_values(tuple(layer.miss_block["default"].shape), gen).half())
    block = layer.miss_block["default"].detach().clone()
    weight, bias = state(layer)
    x = uniform((2, 7), gen, dtype=torch.float16)
    with torch.no_grad():
        y = model(x)
        assert y.dtype == torch.float16
        expected = oracle_forward(x.double(), weight.double(), bias.double(), [(mode, block.double())])
        assert_close(y, expected, clause="CORE-DTYPE-2", dtype=torch.float16)
        model.merge_adapter()
        assert torch.equal(layer.miss_block["default"], block)
        merged = layer.base_layer.weight.detach().clone()
        model.unmerge_adapter()
    assert_close(layer.base_layer.weight, weight, clause="CORE-MERGE-6", dtype=torch.float16, also=(merged,))


# ---------------------------------------------------------------------------------------------------------------
# 6. MiSS: mini, dropout (MISS-MINI-3, MISS-MATH-1, MISS-DROP-1, CORE-DROP-1/2, CORE-MERGE-14)
# ---------------------------------------------------------------------------------------------------------------
def test_mini_with_full_width_is_plain() -> None:
    """MISS-MINI-3: "mini" with mini_r = out equals plain Bone with bone_block = miss_block (forward and merge)."""
    gen = torch.Generator().manual_seed(0)
    base = make_base("linear", 7, 4)
    mini, mini_layer = adapt(base, "miss", r=3, init_weights="mini", mini_r=4)
    plain, plain_layer = adapt(base, "bone", r=3, init_weights=True)
    block = block_values((3, 4), gen)
    set_block(mini_layer, "default", block)
    set_block(plain_layer, "default", block)
    x = uniform((5, 7), gen)
    with torch.no_grad():
        assert_close(mini(x), plain(x), clause="MISS-MINI-3")
        mini.merge_adapter()
        plain.merge_adapter()
    assert_close(mini_layer.base_layer.weight, plain_layer.base_layer.weight, clause="MISS-MINI-3")


def test_miss_equals_bone() -> None:
    """MISS-MATH-1: the same block gives bitwise the same outputs in Bone and MiSS, in every shared mode."""
    gen = torch.Generator().manual_seed(0)
    base = make_base("linear", 6, 4)
    randomise(base, gen)
    x = uniform((3, 6), gen)
    for init in (False, "bat"):
        outputs = []
        for tuner in ("bone", "miss"):
            model, layer = adapt(base, tuner, r=2, init_weights=init)
            set_block(layer, "default", block_values(tuple(layer.blocks["default"].shape), torch.Generator()))
            with torch.no_grad():
                outputs.append(model(x))
        assert torch.equal(*outputs), init


def _binomial_ok(successes: int, trials: int, p: float) -> bool:
    """Two-sided normal approximation at ≈ 1e-6 (5 standard deviations)."""
    return abs(successes - trials * p) <= 5 * math.sqrt(trials * p * (1 - p))


@pytest.mark.parametrize("mode", ["plain", "mini"])
def test_dropout_acts_on_x_before_chunk_summing(mode: str) -> None:
    """MISS-DROP-1, CORE-DROP-2 (⟨P⟩): inverted dropout on the adapter's input before padding and chunk-summing.
    With in = 2r, x = 1 and B picking chunk positions, each output value is (k₁ + k₂)/(1 − p) with kⱼ ∈ {0, 1}
    the kept flags of the two chunks' elements; single chunks (value 1/(1 − p)) occur, so the mask is per element,
    not per chunk sum; kept elements have frequency 1 − p; the base path sees the undropped x."""
    p, r = 0.4, 3
    out = 3 if mode == "plain" else 6
    model, layer = adapt(
        make_base("linear", 2 * r, out), "miss", r=r, init_weights=INIT[mode], mini_r=3, miss_dropout=p
    )
    set_block(layer, "default", torch.eye(r, dtype=F64))  # Δy[…, o] = s(dropout(x))[o mod r]
    x = torch.ones(200, 2 * r, dtype=F64)
    model.train()
    with torch.no_grad():
        delta = (model(x) - layer.base_layer(x)) * (1 - p)
    counts = delta.round()
    assert_close(delta, counts, clause="MISS-DROP-1")
    assert set(counts.unique().tolist()) == {0.0, 1.0, 2.0}
    assert _binomial_ok(int(counts[:, :r].sum()), 2 * r * 200, 1 - p)
    if mode == "mini":
        assert torch.equal(counts[:, :3], counts[:, 3:])  # one mask, tiled with the block (MISS-MINI-2)


@pytest.mark.parametrize(("mode", "p"), [("plain", 1.0), ("mini", 1.0), ("bat", 0.9)])
def test_dropout_extremes_and_bat(mode: str, p: float) -> None:
    """CORE-DROP-2: p = 1 makes the adapter path contribute exactly 0 (plain, mini); MISS-DROP-1: no effect in BAT
    (train = eval, bitwise); CORE-DROP-1 / CORE-FWD-7: eval mode applies no dropout and is deterministic;
    CORE-MERGE-14: merging in train mode is dropout-free."""
    gen = torch.Generator().manual_seed(0)
    base = make_base("linear", 6, 6)
    model, layer = adapt(base, "miss", r=2, init_weights=INIT[mode], mini_r=3, miss_dropout=p)
    block = block_values(tuple(layer.miss_block["default"].shape), gen)
    set_block(layer, "default", block)
    x = uniform((4, 6), gen)
    weight, bias = state(layer)
    with torch.no_grad():
        expected = oracle_forward(x, weight, bias, [(mode, block)])
        model.eval()
        assert torch.equal(model(x), model(x))
        assert_close(model(x), expected, clause="CORE-DROP-1")
        model.train()
        assert torch.equal(model(x), base(x) if mode != "bat" else model.eval()(x))
        model.train()
        model.merge_adapter()
        assert_close(layer.base_layer.weight, oracle_weight(weight, [(mode, block)]), clause="CORE-MERGE-14")


def test_zero_dropout_train_equals_eval() -> None:
    """CORE-DROP-1: with miss_dropout = 0 the train-mode forward equals the eval-mode one."""
    model, _ = adapt(make_base("linear", 5, 4), "miss", r=2, init_weights=False)
    x = uniform((3, 5), torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model.eval()(x)
        assert torch.equal(model.train()(x), y)


# ---------------------------------------------------------------------------------------------------------------
# 7. the `bias` option through Bone on a small torch model (CORE-BIAS-1…4, CORE-TRAIN-1/6, CORE-SAVE-3)
# ---------------------------------------------------------------------------------------------------------------
class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(6, 6)
        self.lin1 = nn.Linear(6, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.lin1(torch.relu(self.lin0(x)))))


def _bias_model(bias: str, tuner: str = "bone") -> PeftModel:
    torch.manual_seed(0)
    return get_peft_model(SmallNet(), TUNERS[tuner][0](target_modules=["lin0", "lin1"], r=2, bias=bias))


@pytest.mark.parametrize(
    ("bias", "biases"),
    [
        ("none", set()),
        ("all", {"lin0.base_layer.bias", "lin1.base_layer.bias", "head.bias"}),
        ("bone_only", {"lin0.base_layer.bias", "lin1.base_layer.bias"}),
    ],
)
def test_bias_option(bias: str, biases: set[str], tmp_path) -> None:
    """CORE-BIAS-1/2, CORE-TRAIN-1/6: exactly the blocks and the selected biases are trainable; CORE-SAVE-3: the
    file holds them under `<key>.base_layer.bias` (adapted) and `<key>.bias` (other modules); a reload restores
    trained biases."""
    model = _bias_model(bias)
    trainable = {k.removeprefix("base_model.model.") for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"lin0.bone_block.default", "lin1.bone_block.default"} | biases
    bias_count = sum(model.get_parameter("base_model.model." + k).numel() for k in biases)
    assert model.get_nb_trainable_parameters()[0] == 2 * 6 + 2 * 4 + bias_count
    with torch.no_grad():
        for name in biases:
            model.get_parameter("base_model.model." + name).add_(0.5)
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    blocks = {"base_model.model.lin0.bone_block", "base_model.model.lin1.bone_block"}
    assert keys == blocks | {"base_model.model." + k for k in biases}
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(SmallNet(), tmp_path)
    x = uniform((3, 6), torch.Generator().manual_seed(1), dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_bias_invalid_and_one_adapter_only() -> None:
    """CORE-BIAS-1 (other values → NotImplementedError at injection; any "…_only" accepted, e.g. "MiSS_only"),
    CORE-BIAS-3 (a second adapter with bias ≠ "none" → ValueError), CORE-BIAS-4 (disabling warns)."""
    with pytest.raises(NotImplementedError, match="foo"):
        _bias_model("foo")
    model = _bias_model("MiSS_only", "miss")
    with pytest.raises(ValueError, match="bias"):
        model.add_adapter("other", MissConfig(target_modules=["lin0"], r=2, bias="all"))
    model.add_adapter("other", MissConfig(target_modules=["lin0"], r=2))
    with pytest.warns(UserWarning, match="bias"), model.disable_adapter():
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _bias_model("none", "miss").disable_adapter():
            pass


# ---------------------------------------------------------------------------------------------------------------
# 8. config and injection rules (BONE-CFG-1…5, MISS-CFG-1…3, CORE-CFG-3…9, BONE-LAYER-3, CORE-INJ-2)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config_cls", "table", "peft_type"), [(BoneConfig, BONE_TABLE, "BONE"), (MissConfig, MISS_TABLE, "MISS")]
)
def test_config_fields_and_defaults(config_cls, table: dict, peft_type: str) -> None:
    """BONE-CFG-1, MISS-CFG-1: exactly the table plus the base fields; `peft_type`."""
    config = config_cls()
    data = config.to_dict()
    assert set(data) == set(table) | BASE_FIELDS | {"inference_mode"}
    assert {k: data[k] for k in table} == table
    assert config.peft_type == peft_type


def test_bone_config_warns_deprecation() -> None:
    """BONE-CFG-4 (SHOULD): constructing a Bone config warns (FutureWarning) that MiSS supersedes it and that
    checkpoints convert (MISS-CONV-1); MISS-CFG-1: a MiSS config does not warn."""
    with pytest.warns(FutureWarning, match="MiSS") as record:
        BoneConfig()
    assert "convert_checkpoint" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MissConfig()


def test_config_json_round_trip_and_type_selection() -> None:
    """CORE-CFG-3/7/9: lists become sets; JSON → config → JSON is equal; `peft_type` selects the class."""
    for config in (
        BoneConfig(target_modules=["a", "b"], exclude_modules=["c"], init_weights="bat", r=4),
        MissConfig(target_modules=["a"], init_weights="mini", mini_r=3, miss_dropout=0.5, layers_to_transform=[1]),
    ):
        assert config.target_modules in ({"a", "b"}, {"a"})
        again = PeftConfig.from_dict(json.loads(config.to_json_string()))
        assert type(again) is type(config) and again.to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("config_cls", "kwargs", "field"),
    [
        (BoneConfig, dict(init_weights="mini"), "init_weights"),
        (BoneConfig, dict(init_weights="foo"), "init_weights"),
        (BoneConfig, dict(init_weights=None), "init_weights"),
        (MissConfig, dict(init_weights="BAT"), "init_weights"),
        (MissConfig, dict(init_weights=1), "init_weights"),
        (BoneConfig, dict(r=0), "r"),
        (MissConfig, dict(r=-3), "r"),
        (MissConfig, dict(miss_dropout=1.5), "miss_dropout"),
        (MissConfig, dict(miss_dropout=-0.1), "miss_dropout"),
        (MissConfig, dict(init_weights="mini", mini_r=0), "mini_r"),
        (BoneConfig, dict(target_modules="m", layers_to_transform=[0]), "layers_to_transform"),
        (MissConfig, dict(target_modules="m", layers_pattern="layers"), "layers_pattern"),
    ],
)
def test_config_errors(config_cls, kwargs: dict, field: str) -> None:
    """BONE-CFG-2/3/5, MISS-CFG-2/3, CORE-CFG-5/6: ValueError (at construction) naming the field. PEFT DIFFERS:
    peft 0.21.2 accepts any truthy `init_weights` (e.g. "foo") as the zero-initialised plain variant (MISS-CFG-2),
    and a `mini_r` ≤ 0 fails at injection with ZeroDivisionError / RuntimeError instead of ValueError (MISS-CFG-3);
    its out-of-range `miss_dropout` error (from nn.Dropout) does not name the field (CORE-CFG-6)."""
    with pytest.raises(ValueError) as info:
        config_cls(**kwargs)
    assert field.lower() in str(info.value).lower()


def test_config_boundaries_accepted() -> None:
    """The limits are valid: dropout 0 and 1; mini_r = 0 is irrelevant outside "mini"; BONE-CFG-3 / CORE-MATCH-8:
    `layers_pattern` without `layers_to_transform` is accepted and ignored at injection."""
    MissConfig(miss_dropout=1.0)
    MissConfig(miss_dropout=0.0, mini_r=0)
    model = nn.Sequential()
    model.add_module("layers", nn.ModuleList([Holder(nn.Linear(4, 4)) for _ in range(2)]))
    get_peft_model(model, BoneConfig(target_modules=["m"], layers_pattern="layers", r=2))
    assert all(isinstance(model.layers[i].m, BoneLayer) for i in range(2))


@pytest.mark.parametrize(
    ("field", "value"),
    [("r", 0), ("init_weights", "mini"), ("miss_dropout", 2.0), ("mini_r", -1), ("layers_to_transform", [0])],
)
def test_fields_set_after_construction_are_checked_at_injection(field: str, value) -> None:
    """CORE-CFG-4: config-only errors are raised no later than injection, before any layer changes."""
    config = MissConfig(target_modules=["m"] if field != "layers_to_transform" else "m", init_weights="mini")
    if field == "init_weights":
        config = BoneConfig(target_modules=["m"])
    setattr(config, field, value)
    model = Holder(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=field):
        get_peft_model(model, config)
    assert type(model.m) is nn.Linear


@pytest.mark.parametrize(
    ("tuner", "config", "base", "subject"),
    [
        ("bone", dict(r=5), nn.Linear(4, 8), "in_features"),
        ("miss", dict(r=5), Conv1D(8, 4), "in_features"),
        ("bone", dict(r=3, init_weights="bat"), nn.Linear(6, 4), "blocks"),
        ("miss", dict(r=3, init_weights="bat"), nn.Linear(4, 6), "blocks"),
        ("miss", dict(r=2, init_weights="mini", mini_r=4), nn.Linear(4, 6), "mini_r"),
    ],
    ids=["r>in", "r>in-conv1d", "bat-out", "bat-in", "mini"],
)
def test_shape_errors_at_injection(tuner: str, config: dict, base: nn.Module, subject: str) -> None:
    """BONE-CFG-5, MISS-CFG-3 (CORE-CFG-4): shape-dependent errors at injection, naming the rule's subject and the
    module, before any module changes (a fitting earlier target stays a plain module too)."""
    model = nn.Sequential(nn.Linear(12, 12), base)
    with pytest.raises(ValueError, match=subject) as info:
        get_peft_model(model, TUNERS[tuner][0](target_modules=["0", "1"], **config))
    assert "'1'" in str(info.value)
    assert type(model[0]) is nn.Linear and type(model[1]) is type(base)


@pytest.mark.parametrize("module", [nn.Conv2d(2, 2, 1), nn.Embedding(4, 4), nn.Conv1d(2, 2, 1)])
def test_unsupported_kinds_rejected(module: nn.Module) -> None:
    """BONE-LAYER-3 / CORE-INJ-2: other layer kinds are rejected naming their type; the module stays."""
    model = Holder(module)
    with pytest.raises((TypeError, ValueError), match=type(module).__name__):
        get_peft_model(model, MissConfig(target_modules=["m"], r=1))
    assert model.m is module


def test_delete_adapter_removes_everything() -> None:
    """CORE-LIFE-9: no block or setting of a deleted adapter remains; the others are unchanged."""
    model, layer = adapt(nn.Linear(4, 4), "miss", r=2, init_weights=False)
    block = layer.miss_block["default"].detach().clone()
    add(model, "miss", "other", r=2, init_weights="bat")
    model.delete_adapter("other")
    assert list(layer.settings) == ["default"] and list(layer.miss_block) == ["default"]
    assert torch.equal(layer.miss_block["default"], block)
    assert isinstance(layer, MissLayer)
