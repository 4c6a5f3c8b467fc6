"""Reference-specific tests of IA3 (SPEC §5): closed forms, merge/unmerge, config rules, and file interchange
with HuggingFace `peft` 0.21.2 in both directions.

The oracle below is written from SPEC's text in float64 and never reads `reference_tuners` internals. Where
peft 0.21.2 deviates from SPEC, the reference is checked against SPEC (the clause is named in the test), never
against peft.
"""

from __future__ import annotations

import copy
import json
import math
import warnings

import peft
import pytest
import safetensors.torch
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from tiny_models import tiny_gpt2, tiny_llama, tiny_t5, token_batch
from torch import nn
from transformers.pytorch_utils import Conv1D

import reference_tuners as rt

F64 = torch.float64
SHIFT = 1e-8  # IA3-MERGE-2
# SPEC §8 ⟨N⟩ (rtol, atol factor a) — single layer, and small model (both equal to the single number).
N_LAYER = {
    F64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (1.6e-2, 3e-2),
    torch.float16: (2e-3, 2e-3),
}
N_MODEL = {F64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-4), torch.bfloat16: (5e-2, 5e-2), torch.float16: (5e-3, 5e-3)}
SPATIAL = {"linear": 0, "hf_conv1d": 0, "conv1d": 1, "conv2d": 2, "conv3d": 3}
CONV_CLS = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}

# Expected warnings are silenced where they are not under test (pytest.warns still records them).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Unmerge result can be inaccurate:UserWarning",
    "ignore:fan_in_fan_out:UserWarning",
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",  # transformers, through peft
)


# ---------------------------------------------------------------------------------------------------------------
# helpers: tolerance (SPEC §8), models, the float64 oracle (SPEC §5.3)
# ---------------------------------------------------------------------------------------------------------------
def dtype_id(value):
    return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else None


def assert_close(actual, expected, *, clause, dtype=F64, scope="layer", also=(), slack=0.0):
    """SPEC §8: |actual − ref| ≤ slack + a·S + r·|ref|, S = max(1, max|ref|, max|T| for T in `also`)."""
    __tracebackhide__ = True
    rtol, a = (N_LAYER if scope == "layer" else N_MODEL)[dtype]
    actual, expected = actual.detach().to(F64), expected.detach().to(F64)
    assert actual.shape == expected.shape, f"{clause}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max([1.0] + [t.detach().abs().max().item() for t in (expected, *also) if t.numel()])
    bound = slack + a * scale + rtol * expected.abs()
    err = (actual - expected).abs()
    assert bool((err <= bound).all()), (
        f"{clause}: max error {err.max().item():.3e} at index "
        f"{tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))} exceeds the {dtype} {scope} "
        f"tolerance (S={scale:.3g})"
    )


class Holder(nn.Module):
    """A model whose only adaptable module is `layer` (key "layer")."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def make_layer(kind, cin, cout, *, groups=1, kernel=3, stride=1, padding=1, dilation=1, mode="zeros", bias=True):
    if kind == "linear":
        return nn.Linear(cin, cout, bias=bias)
    if kind == "hf_conv1d":
        return Conv1D(cout, cin)  # stores Wᵀ, shape (in, out); always has a bias
    return CONV_CLS[kind](cin, cout, kernel, stride, padding, dilation, groups, bias, mode)


def fill_(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """Every parameter i.i.d. U(−1, 1) from `gen` (SPEC §8 input domain)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=F64) * 2 - 1)
    return module


def ia3_vector(shape, gen, low=0.1, high=1.5):
    """|l| ∈ [low, high], random sign (SPEC §8: IA3 vectors with |l| ≥ 0.1)."""
    magnitude = torch.rand(shape, generator=gen, dtype=F64) * (high - low) + low
    return torch.where(torch.rand(shape, generator=gen, dtype=F64) < 0.5, -magnitude, magnitude)


def make_input(kind, cin, gen, *, batch=2, size=5, batched=True, dtype=F64):
    if kind in ("linear", "hf_conv1d"):
        shape = (batch, 3, cin)
    else:
        shape = ((batch,) if batched else ()) + (cin,) + (size,) * SPATIAL[kind]
    return (torch.rand(shape, generator=gen, dtype=F64) * 2 - 1).to(dtype)


def logical_w(base: nn.Module) -> torch.Tensor:
    """SPEC §0.4: logical orientation (a transformers Conv1D stores Wᵀ)."""
    return base.weight.T if isinstance(base, Conv1D) else base.weight


def op(base, x, weight, bias):
    """op(x; W′, b′) — the base layer's computation with its parameters replaced (W′ logical)."""
    if isinstance(base, (nn.Linear, Conv1D)):
        return x @ weight.T + (0 if bias is None else bias)
    params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    return torch.func.functional_call(base, params, (x,))


def along(t, vector, axis):
    shape = [1] * t.dim()
    shape[axis] = -1
    return t * vector.reshape(shape)


def feature_axis(base, x):
    if isinstance(base, (nn.Linear, Conv1D)):
        return -1
    return 1 if x.dim() == base.weight.dim() else 0  # batched / unbatched conv input


def oracle_forward(base, x, adapters):
    """IA3-FWD-1/2, IA3-MULTI-1: y = l_out ⊙ op(l_ff ⊙ x; W, b); `adapters` = [(l_flat, feedforward)]."""
    l_ff = math.prod((v for v, ff in adapters if ff), start=torch.tensor(1.0, dtype=F64))
    l_out = math.prod((v for v, ff in adapters if not ff), start=torch.tensor(1.0, dtype=F64))
    weight = logical_w(base).detach().to(F64)
    bias = None if base.bias is None else base.bias.detach().to(F64)
    axis = feature_axis(base, x)
    return along(op(base, along(x.to(F64), l_ff, axis), weight, bias), l_out, axis)


def oracle_merge(weight, bias, vector, feedforward, groups=1):
    """IA3-FWD-3, written entry by entry: W′[o,c,…] = l_o W[o,c,…] (b′ = l ⊙ b), or, feedforward,
    W′[o,c,…] = W[o,c,…] · l[g(o)·C + c] with g(o) = ⌊o / (out/groups)⌋ (b′ = b)."""
    out, width = weight.shape[:2]
    merged = weight.clone()
    for o in range(out):
        for c in range(width):
            factor = vector[(o // (out // groups)) * width + c] if feedforward else vector[o]
            merged[o, c] = weight[o, c] * factor
    if feedforward or bias is None:
        return merged, bias
    return merged, bias * vector


def ia3_kwargs(ff, init, key="layer"):
    return dict(target_modules=[key], feedforward_modules=[key] if ff else [], init_ia3_weights=init)


def adapt(lib, model, *, ff, init=False, name="default", key="layer", **kw):
    """`lib.get_peft_model` (lib = reference_tuners or peft) with one IA3 adapter on `key`."""
    return lib.get_peft_model(model, lib.IA3Config(**ia3_kwargs(ff, init, key), **kw), adapter_name=name)


def layer_of(peft_model, key="layer"):
    return peft_model.base_model.model.get_submodule(key)


def set_vector(layer, name, vector):
    with torch.no_grad():
        layer.ia3_l[name].copy_(vector.reshape(layer.ia3_l[name].shape))


def oracle_merge_all(weight, bias, adapters, groups, transform=lambda v: v):
    """Merge several adapters in order (IA3-MERGE-1): each applies IA3-FWD-3 with `transform(l)`."""
    for vector, feedforward in adapters:
        weight, bias = oracle_merge(weight, bias, transform(vector), feedforward, groups)
    return weight, bias


# ---------------------------------------------------------------------------------------------------------------
# 1. closed forms on one layer, every kind (hypothesis)
# ---------------------------------------------------------------------------------------------------------------
def layer_case(kind, *, groups=1, cin=None, cout=None, feedforward=(False,), seed=0, **conv):
    spec = dict(kind=kind, groups=groups, cin=cin or 2 * groups, cout=cout or 3 * groups, bias=True)
    spec.update(kernel=3, stride=1, padding=1, dilation=1, mode="zeros", batched=True, batch=2)
    spec.update(conv, feedforward=list(feedforward), seed=seed)
    return spec


@st.composite
def layer_cases(draw):
    kind = draw(st.sampled_from(["linear", "hf_conv1d", "conv1d", "conv2d", "conv3d"]), label="kind")
    conv = kind.startswith("conv")
    groups = draw(st.integers(1, 3), label="groups") if conv else 1
    spec = layer_case(
        kind,
        groups=groups,
        cin=groups * draw(st.integers(1, 3), label="in per group"),
        cout=groups * draw(st.integers(1, 3), label="out per group"),
        feedforward=draw(st.lists(st.booleans(), min_size=1, max_size=3), label="adapters' feedforward flags"),
        seed=draw(st.integers(0, 2**32 - 1), label="seed"),
        bias=draw(st.booleans(), label="bias"),
    )
    if not conv:
        spec.update(batch=draw(st.integers(0, 2), label="batch (CORE-FWD-2: zero leading dims too)"))
    else:
        spec.update(
            kernel=draw(st.integers(1, 3), label="kernel"),
            stride=draw(st.integers(1, 2), label="stride"),
            padding=draw(st.integers(0, 1), label="padding"),
            dilation=draw(st.integers(1, 2), label="dilation"),
            mode=draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]), label="padding_mode"),
            batched=draw(st.booleans(), label="batched input"),
        )
    return spec


def build_case(spec):
    """(base layer, adapted model, [(vector, feedforward)] in active order, input) for a `layer_cases` draw."""
    gen = torch.Generator().manual_seed(spec["seed"])
    kind, flags = spec["kind"], spec["feedforward"]
    conv = {k: spec[k] for k in ("groups", "kernel", "stride", "padding", "dilation", "mode", "bias")}
    base = fill_(make_layer(kind, spec["cin"], spec["cout"], **conv).to(F64), gen)
    names = [f"a{i}" for i in range(len(flags))]
    model = adapt(rt, Holder(copy.deepcopy(base)), ff=flags[0], name=names[0], fan_in_fan_out=kind == "hf_conv1d")
    for name, ff in zip(names[1:], flags[1:], strict=True):
        config = rt.IA3Config(target_modules=["layer"], feedforward_modules=["layer"] if ff else [])
        model.add_adapter(name, config)
    model.base_model.set_adapter(names)
    adapters = []
    for name, ff in zip(names, flags, strict=True):
        vector = ia3_vector((spec["cin"] if ff else spec["cout"],), gen)
        set_vector(layer_of(model), name, vector)
        adapters.append((vector, ff))
    x = make_input(kind, spec["cin"], gen, batch=spec["batch"], batched=spec["batched"])
    return base, model, names, adapters, x


@given(spec=layer_cases())
@example(spec=layer_case("linear", feedforward=[True, False, True], seed=1))
@example(spec=layer_case("linear", feedforward=[True], batch=0, bias=False, seed=7))
@example(spec=layer_case("hf_conv1d", feedforward=[False, True], seed=2))
@example(spec=layer_case("conv1d", groups=2, feedforward=[True], mode="circular", batched=False, seed=3))
@example(spec=layer_case("conv2d", groups=3, cin=6, cout=9, feedforward=[True, True], seed=4))
@example(spec=layer_case("conv2d", groups=2, kernel=1, padding=0, feedforward=[False, True], seed=5))
@example(spec=layer_case("conv3d", groups=2, cin=4, cout=2, feedforward=[True, False], stride=2, seed=6))
@example(spec=layer_case("conv2d", padding="same", dilation=2, mode="reflect", feedforward=[True, False], seed=8))
def test_layer_closed_forms(spec):
    """IA3-PARAM-1, IA3-FWD-1/2/3, IA3-MULTI-1 (adapters may disagree on feedforward), CORE-FWD-4/8, CORE-GRAD-1,
    IA3-MERGE-1 (Conv1D in stored orientation), CORE-MERGE-4, IA3-MERGE-2 (rule and ⟨A⟩ bound), IA3-MERGE-3.
    (peft 0.21.2 returns a batched output for an unbatched conv input, CORE-FWD-4, and uses the layer's first
    adapter's feedforward flag for every later adapter, IA3-MULTI-1.)"""
    base, model, names, adapters, x = build_case(spec)
    layer, groups = layer_of(model), spec["groups"]
    for name, (vector, ff) in zip(names, adapters, strict=True):
        n, kind = vector.numel(), spec["kind"]
        expected = (1, n, *[1] * SPATIAL[kind]) if kind.startswith("conv") else ((1, n) if ff else (n, 1))
        assert tuple(layer.ia3_l[name].shape) == expected, "IA3-PARAM-1"

    # forward and gradients against the float64 oracle
    leaves = [(v.clone().requires_grad_(), ff) for v, ff in adapters]
    x_ref, x_orc = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = model(x_ref)
    y_oracle = oracle_forward(base, x_orc, leaves)
    assert y.dtype == x.dtype and y.shape == base(x).shape, "CORE-FWD-4/8"
    assert_close(y, y_oracle, clause="IA3-FWD-1/2, IA3-MULTI-1")
    cotangent = torch.rand(y.shape, generator=torch.Generator().manual_seed(spec["seed"]), dtype=F64)
    (y * cotangent).sum().backward()
    (y_oracle * cotangent).sum().backward()
    for name, (leaf, _) in zip(names, leaves, strict=True):
        assert_close(layer.ia3_l[name].grad.reshape(-1), leaf.grad, clause="CORE-GRAD-1 (ia3_l)")
    assert_close(x_ref.grad, x_orc.grad, clause="CORE-GRAD-1 (x)")

    # merge: the entrywise FWD-3 weights, in stored orientation; merged forward = unmerged forward
    weight0, bias0 = logical_w(base).detach(), None if base.bias is None else base.bias.detach()
    merged_w, merged_b = oracle_merge_all(weight0, bias0, adapters, groups)
    model.base_model.merge_adapter()
    assert layer.merged_adapters == names, "CORE-MERGE-3"
    stored = layer.base_layer.weight
    assert_close(stored, merged_w.T if spec["kind"] == "hf_conv1d" else merged_w, clause="IA3-MERGE-1 (weight)")
    if bias0 is not None:
        assert_close(layer.base_layer.bias, merged_b, clause="IA3-MERGE-1 (bias)")
    with torch.no_grad():
        assert_close(model(x), y, clause="IA3-MERGE-1, CORE-MERGE-4", also=(merged_w,))

    # unmerge: W ⊙ l ⊘ (l + 1e-8) per adapter (⟨N⟩ around the rule), and SPEC §8's ⟨A⟩ bound around W
    with pytest.warns(UserWarning, match="inaccurate"):
        model.base_model.unmerge_adapter()
    assert layer.merged_adapters == [], "CORE-MERGE-5"
    rule_w, rule_b = oracle_merge_all(weight0, bias0, adapters, groups, lambda v: v / (v + SHIFT))
    bound_w, bound_b = weight0.abs(), None if bias0 is None else bias0.abs()
    excess_w, excess_b = torch.zeros_like(weight0), None if bias0 is None else torch.zeros_like(bias0)
    for vector, ff in adapters:  # Σ_a |W|·1e-8/|l_a + 1e-8| with FWD-3's broadcasting
        term_w, term_b = oracle_merge(bound_w, bound_b, SHIFT / (vector + SHIFT).abs(), ff, groups)
        excess_w = excess_w + term_w
        if bias0 is not None:
            excess_b = excess_b + (term_b if not ff else torch.zeros_like(bias0))
    restored_w = logical_w(layer.base_layer)
    assert_close(restored_w, rule_w, clause="IA3-MERGE-2 (rule)", also=(merged_w,))
    assert_close(restored_w, weight0, clause="IA3-MERGE-2 (⟨A⟩ bound)", also=(merged_w,), slack=excess_w)
    if bias0 is not None:
        assert_close(layer.base_layer.bias, rule_b, clause="IA3-MERGE-2 (bias rule)", also=(merged_b,))
        assert_close(layer.base_layer.bias, bias0, clause="IA3-MERGE-2 (bias ⟨A⟩)", also=(merged_b,), slack=excess_b)


# ---------------------------------------------------------------------------------------------------------------
# 2. interchange with peft 0.21.2 (CORE-SAVE-10), equal outputs and gradients at equal weights
# ---------------------------------------------------------------------------------------------------------------
# peft supports Linear, transformers Conv1D, Conv2d and Conv3d (not Conv1d: IA3-LAYER-2 is optional).
INTERCHANGE = [("linear", ff, 1) for ff in (False, True)] + [
    (kind, ff, groups) for kind in ("conv2d", "conv3d") for ff in (False, True) for groups in (1, 2)
]


def loss_and_grads(model, x, cotangent):
    """Output, and the gradient of ⟨output, cotangent⟩ w.r.t. every ia3_l, by in-memory name."""
    model.zero_grad()
    y = model(x)
    y = y.logits if hasattr(y, "logits") else y
    (y * cotangent).sum().backward()
    grads = {k: p.grad for k, p in model.named_parameters() if "ia3_l" in k}
    assert grads and all(g is not None for g in grads.values()), "CORE-TRAIN-4"
    return y.detach(), grads


def assert_same_adapter(ref_model, peft_model, x, *, scope="layer"):
    """Bitwise-equal vectors (CORE-SAVE-10), equal outputs and equal adapter gradients."""
    ref_params = {k: p for k, p in ref_model.named_parameters() if "ia3_l" in k}
    peft_params = {k: p for k, p in peft_model.named_parameters() if "ia3_l" in k}
    assert ref_params.keys() == peft_params.keys(), "in-memory names follow PEFT (SPEC §0.6)"
    for k in ref_params:
        assert ref_params[k].dtype == peft_params[k].dtype and torch.equal(ref_params[k], peft_params[k]), k
    with torch.no_grad():
        probe = ref_model(x)
    probe = probe.logits if hasattr(probe, "logits") else probe
    cotangent = torch.rand(probe.shape, generator=torch.Generator().manual_seed(7), dtype=probe.dtype)
    y_ref, g_ref = loss_and_grads(ref_model, x, cotangent)
    y_peft, g_peft = loss_and_grads(peft_model, x, cotangent)
    assert_close(y_ref, y_peft, clause="CORE-SAVE-10 (outputs)", scope=scope)
    for k in g_ref:
        assert_close(g_ref[k], g_peft[k], clause=f"CORE-GRAD-1 vs peft ({k})", scope=scope)


@pytest.mark.parametrize("init", [True, False], ids=["ones", "random"])
@pytest.mark.parametrize(("kind", "ff", "groups"), INTERCHANGE)
def test_interchange_with_peft(tmp_path, kind, ff, groups, init):
    """CORE-SAVE-10: reference → peft and peft → reference; IA3-MERGE-1 agrees (grouped feedforward convs too)."""
    gen = torch.Generator().manual_seed(11)
    cin, cout = 4, 6
    base = Holder(fill_(make_layer(kind, cin, cout, groups=groups, kernel=2, padding=1).to(F64), gen))
    x = make_input(kind, cin, gen, size=3)

    ref = adapt(rt, copy.deepcopy(base), ff=ff, init=init)
    if init:  # IA3-INIT-1 / IA3-ID-1: ones, identity
        assert torch.equal(layer_of(ref).ia3_l["default"], torch.ones_like(layer_of(ref).ia3_l["default"]))
        assert torch.equal(ref(x), base(x)), "IA3-ID-1"
    ref.save_pretrained(tmp_path / "ref")
    from_ref = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ref", is_trainable=True)
    assert_same_adapter(ref, from_ref, x)

    theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(**ia3_kwargs(ff, init)))
    if init:  # make the direction peft → reference non-trivial
        set_vector(layer_of(theirs), "default", ia3_vector((cin if ff else cout,), gen))
    theirs.save_pretrained(tmp_path / "peft")
    from_peft = rt.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft", is_trainable=True)
    assert_same_adapter(from_peft, theirs, x)

    # merge agrees with peft and with the entrywise SPEC weights (IA3-FWD-3's grouped-conv rule)
    vector = layer_of(from_peft).ia3_l["default"].detach().reshape(-1)
    expected_w, expected_b = oracle_merge(base.layer.weight.detach(), base.layer.bias.detach(), vector, ff, groups)
    from_peft.base_model.merge_adapter()
    theirs.base_model.merge_adapter()
    for ours, their, want in [
        (layer_of(from_peft).base_layer.weight, layer_of(theirs).base_layer.weight, expected_w),
        (layer_of(from_peft).base_layer.bias, layer_of(theirs).base_layer.bias, expected_b),
    ]:
        assert_close(ours, want, clause="IA3-MERGE-1")
        assert_close(ours, their, clause="IA3-MERGE-1 vs peft")
    with torch.no_grad():
        assert_close(from_peft(x), theirs(x), clause="CORE-MERGE-4 vs peft")


@pytest.mark.parametrize("init", [True, False], ids=["ones", "random"])
def test_interchange_gpt2_conv1d_defaults(tmp_path, init):
    """transformers Conv1D through GPT-2's IA3 defaults (c_attn; mlp.c_proj feedforward) — CORE-SAVE-10 both ways,
    merged outputs equal (IA3-MERGE-1 in stored orientation)."""
    base = tiny_gpt2().double()
    ids = token_batch(base.config.vocab_size)
    ref = rt.get_peft_model(copy.deepcopy(base), rt.IA3Config(init_ia3_weights=init))
    if init:  # ones: perturb them so that reference → peft compares non-trivial outputs
        gen = torch.Generator().manual_seed(3)
        for _, layer in ref.base_model.tuner_layers():
            set_vector(layer, "default", ia3_vector(layer.ia3_l["default"].shape, gen))
    ref.save_pretrained(tmp_path / "ref")
    from_ref = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ref", is_trainable=True)
    assert_same_adapter(ref, from_ref, ids, scope="model")

    theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(init_ia3_weights=init))
    theirs.save_pretrained(tmp_path / "peft")
    from_peft = rt.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft", is_trainable=True)
    assert_same_adapter(from_peft, theirs, ids, scope="model")

    with torch.no_grad():
        before = ref(ids).logits
        ref.base_model.merge_adapter()
        from_ref.base_model.merge_adapter()
        assert_close(ref(ids).logits, before, clause="IA3-MERGE-1 (Conv1D)", scope="model")
        assert_close(ref(ids).logits, from_ref(ids).logits, clause="IA3-MERGE-1 vs peft", scope="model")


# ---------------------------------------------------------------------------------------------------------------
# 3. SPEC §5.5 / §7.2 worked examples, default targets (golden)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "ff", "shape"),
    [
        ("linear", False, (20, 1)),
        ("linear", True, (1, 10)),
        ("conv2d", False, (1, 10, 1, 1)),
        ("conv2d", True, (1, 5, 1, 1)),
        ("conv3d", False, (1, 10, 1, 1, 1)),
        ("conv3d", True, (1, 5, 1, 1, 1)),
        ("conv1d", False, (1, 10, 1)),
        ("conv1d", True, (1, 5, 1)),
    ],
)
def test_worked_example_shapes_and_counts(tmp_path, kind, ff, shape):
    """SPEC §5.5 (Linear 10→20, Conv2d(5, 10, 3), Conv3d(5, 10, 3)), IA3-PARAM-1, IA3-COUNT-1, IA3-INIT-1,
    IA3-LAYER-2 (Conv1d: (1, C, 1)), IA3-SAVE-1."""
    cin, cout = (10, 20) if kind == "linear" else (5, 10)
    model = adapt(rt, Holder(make_layer(kind, cin, cout, padding=0)), ff=ff, init=True)
    vector = layer_of(model).ia3_l["default"]
    assert tuple(vector.shape) == shape
    assert torch.equal(vector, torch.ones(shape)), "IA3-INIT-1"
    assert model.get_nb_trainable_parameters()[0] == (cin if ff else cout), "IA3-COUNT-1"
    model.save_pretrained(tmp_path)
    saved = safetensors.torch.load_file(tmp_path / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in saved.items()} == {"base_model.model.layer.ia3_l": shape}, "IA3-SAVE-1"
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "IA3"


def test_worked_example_unmerge_half():
    """SPEC §5.5 / IA3-MERGE-2: unmerge in float64 with l = 0.5 gives W_rec / W = 0.5/(0.5 + 1e-8) = 1 − 2·10⁻⁸."""
    base = fill_(nn.Linear(10, 20).double(), torch.Generator().manual_seed(0))
    for ff in (False, True):
        model = adapt(rt, Holder(copy.deepcopy(base)), ff=ff)
        set_vector(layer_of(model), "default", torch.full((10 if ff else 20,), 0.5, dtype=F64))
        model.base_model.merge_adapter()
        assert torch.equal(layer_of(model).base_layer.weight, base.weight * 0.5), "IA3-MERGE-1 (exact for l = 0.5)"
        model.base_model.unmerge_adapter()
        ratio = layer_of(model).base_layer.weight / base.weight
        assert torch.allclose(ratio, torch.full_like(ratio, 1 - 2e-8), rtol=0, atol=1e-15), ratio.flatten()[:3]
        bias_ratio = layer_of(model).base_layer.bias / base.bias
        expected = 1.0 if ff else 1 - 2e-8  # feedforward: the bias is never touched
        assert torch.allclose(bias_ratio, torch.full_like(bias_ratio, expected), rtol=0, atol=1e-15)


def ia3_layout(model):
    """{key: (feedforward?, ia3_l shape)} of every IA3 layer of a reference or peft model."""
    out = {}
    for key, module in model.base_model.model.named_modules():
        if hasattr(module, "ia3_l") and "default" in module.ia3_l:
            ff = module.settings["default"].feedforward if hasattr(module, "settings") else module.is_feedforward
            out[key] = (ff, tuple(module.ia3_l["default"].shape))
    return out


@pytest.mark.parametrize(
    ("build", "targets", "feedforward", "counts"),
    [
        (tiny_t5, {"k", "v", "wo"}, {"wo"}, (16, 4)),  # k, v of 6 attention blocks; wo of 4 feed-forward blocks
        (tiny_llama, {"k_proj", "v_proj", "down_proj"}, {"down_proj"}, (6, 2)),
        (tiny_gpt2, {"c_attn", "mlp.c_proj"}, {"mlp.c_proj"}, (4, 2)),  # attn.c_proj is not targeted
    ],
    ids=["t5", "llama", "gpt2"],
)
def test_default_targets(build, targets, feedforward, counts):
    """IA3-CFG-3 / CORE-DEF-1 table 1.4(b) (T5: k, v, wo with wo feedforward; Llama; GPT-2), IA3-CFG-4, IA3-PARAM-1;
    peft adapts the same modules the same way."""
    base = build()
    ref = rt.get_peft_model(copy.deepcopy(base), rt.IA3Config())
    assert ref.peft_config["default"].target_modules == targets
    assert ref.peft_config["default"].feedforward_modules == feedforward
    expected = {}
    for key, module in base.named_modules():
        if any(key == t or key.endswith("." + t) for t in targets):
            ff = any(key.endswith("." + f) for f in feedforward)
            n_in, n_out = (
                module.weight.shape if isinstance(module, Conv1D) else (module.in_features, module.out_features)
            )
            expected[key] = (ff, (1, n_in) if ff else (n_out, 1))
    assert (len(expected), sum(ff for ff, _ in expected.values())) == counts
    assert ia3_layout(ref) == expected
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config())
    assert ia3_layout(theirs) == expected


def test_tiny_llama_trainable_count():
    """SPEC §7.2: tiny Llama, targets q/k/v/o/gate/up/down_proj, feedforward down_proj → 1,280 (IA3-COUNT-1)."""
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = rt.get_peft_model(tiny_llama(), rt.IA3Config(target_modules=targets, feedforward_modules=["down_proj"]))
    assert model.get_nb_trainable_parameters()[0] == 1280


# ---------------------------------------------------------------------------------------------------------------
# 4. merge/unmerge edge clauses, layer kinds, dtypes
# ---------------------------------------------------------------------------------------------------------------
def linear_model(ff, *, dtype=F64, name="default", seed=0, autocast=True):
    base = Holder(fill_(nn.Linear(4, 3), torch.Generator().manual_seed(seed)).to(dtype))
    config = rt.IA3Config(**ia3_kwargs(ff, init=True))
    return base, rt.get_peft_model(copy.deepcopy(base), config, adapter_name=name, autocast_adapter_dtype=autocast)


def snapshot(layer):
    return [t.detach().clone() for t in (layer.base_layer.weight, layer.base_layer.bias)]


def assert_bitwise(layer, tensors, clause):
    __tracebackhide__ = True
    for live, kept in zip((layer.base_layer.weight, layer.base_layer.bias), tensors, strict=True):
        assert live.dtype == kept.dtype and torch.equal(live, kept), clause


@pytest.mark.parametrize(
    ("dtype", "autocast"),
    [(F64, True), (torch.float32, True), (torch.float16, False), (torch.bfloat16, False)],
    ids=dtype_id,
)
@pytest.mark.parametrize("ff", [False, True])
def test_zero_entries_are_lost_not_nan(ff, dtype, autocast):
    """IA3-MERGE-4: entries scaled by l = 0 are 0 after merging and stay exactly 0 after unmerging (0 ⊘ 1e-8 = 0) —
    for half-precision vectors too, because IA3-MERGE-2 adds the shift in float32 (1e-8 is 0 in float16).
    (peft 0.21.2 adds it in float16 and writes 0/0 = NaN.)"""
    base, model = linear_model(ff, dtype=dtype, autocast=autocast)
    layer = layer_of(model)
    size = 4 if ff else 3
    vector = torch.tensor([0.0, 0.75, -1.25, 0.5][:size])
    set_vector(layer, "default", vector)
    model.base_model.merge_adapter()
    model.base_model.unmerge_adapter()
    weight, bias = layer.base_layer.weight, layer.base_layer.bias
    lost = weight[:, 0] if ff else weight[0]
    assert torch.equal(lost, torch.zeros_like(lost)), "IA3-MERGE-4"
    assert bool(torch.isfinite(weight).all() and torch.isfinite(bias).all())
    kept = weight[:, 1:] if ff else weight[1:]
    original = base.layer.weight[:, 1:] if ff else base.layer.weight[1:]
    within = SHIFT / 0.5  # ⟨A⟩: 1e-8/|l + 1e-8| for the smallest kept |l|
    assert_close(kept, original, clause="IA3-MERGE-2", dtype=dtype, slack=original.abs() * within)
    if not ff:
        assert bias[0] == 0, "IA3-MERGE-4 (bias)"
        original = base.layer.bias[1:]
        assert_close(bias[1:], original, clause="IA3-MERGE-2", dtype=dtype, slack=original.abs() * within)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("ff", [False, True])
def test_nonfinite_unmerge_raises_and_keeps_weights(ff, dtype):
    """IA3-MERGE-5: an entry l = −1e-8 makes l + 1e-8 = 0; unmerge raises ValueError naming the adapter and leaves
    that adapter's tensors (and its merged state) untouched — also when the unmerge is triggered by a forward inside
    `disable_adapter()` (CORE-LIFE-6). (peft 0.21.2 writes ±inf silently.)"""
    _, model = linear_model(ff, dtype=dtype, name="broken")
    layer = layer_of(model)
    set_vector(layer, "broken", torch.tensor([-1e-8, 0.75, -1.25, 0.5][: 4 if ff else 3], dtype=dtype))
    model.base_model.merge_adapter()
    merged = snapshot(layer)
    with pytest.raises(ValueError, match="broken"):
        model.base_model.unmerge_adapter()
    assert_bitwise(layer, merged, "IA3-MERGE-5")
    assert layer.merged_adapters == ["broken"]
    x = torch.rand(2, 4, dtype=dtype)
    with pytest.raises(ValueError, match="broken"), model.disable_adapter():
        model(x)
    assert_bitwise(layer, merged, "IA3-MERGE-5 via disable_adapter")
    assert layer.merged_adapters == ["broken"]


@pytest.mark.parametrize(
    ("case", "ff", "dtype"),
    [("weight", True, F64), ("weight", False, F64), ("bias", False, F64), ("cast", False, torch.float16)],
    ids=["weight-ff", "weight", "bias", "float16-cast"],
)
def test_safe_merge_rejects_nonfinite(case, ff, dtype):
    """IA3-MERGE-6 / CORE-MERGE-7: a non-finite merged weight, a non-finite merged bias (non-feedforward), or a
    weight that overflows when written back in the base dtype raises ValueError naming the adapter; the base tensors
    keep their values bitwise and nothing is recorded as merged. (peft 0.21.2 checks before the cast back to
    float16 and writes inf.)"""
    _, model = linear_model(ff, dtype=dtype, name="bad")
    layer = layer_of(model)
    vector = torch.tensor([1.5, 0.75, -1.25, 0.5][: 4 if ff else 3])
    if case == "weight":
        vector[1] = float("nan")
    elif case == "bias":  # W′ stays finite, b′ = 10 · 1e308 overflows
        vector[1] = 10.0
        with torch.no_grad():
            layer.base_layer.bias[1] = 1e308
    else:  # 60000 · 2 is finite in float32 (the adapter dtype), inf in float16
        vector[1] = 2.0
        with torch.no_grad():
            layer.base_layer.weight[1] = 60000.0
    set_vector(layer, "bad", vector)
    before = snapshot(layer)
    with pytest.raises(ValueError, match="bad"):
        model.base_model.merge_adapter(safe_merge=True)
    assert_bitwise(layer, before, "CORE-MERGE-7")
    assert layer.merged_adapters == []


def test_safe_merge_partial_and_equal_to_unsafe():
    """CORE-MERGE-8 (a successful safe merge is bitwise the unsafe one) and CORE-MERGE-9 (failing at the second
    adapter keeps the first merged and recorded)."""
    _, model = linear_model(False, name="good")
    model.add_adapter("bad", rt.IA3Config(**ia3_kwargs(False, init=True)))
    layer = layer_of(model)
    set_vector(layer, "good", torch.tensor([1.5, -0.75, 0.25]))
    set_vector(layer, "bad", torch.tensor([1.0, float("inf"), 1.0]))
    reference = copy.deepcopy(model)
    layer_of(reference).merge(adapter_names=["good"])
    with pytest.raises(ValueError, match="bad"):
        model.base_model.merge_adapter(["good", "bad"], safe_merge=True)
    assert layer.merged_adapters == ["good"]
    assert_bitwise(layer, snapshot(layer_of(reference)), "CORE-MERGE-8/9")


@pytest.mark.parametrize(("kind", "flag"), [("linear", True), ("hf_conv1d", False)])
def test_fan_in_fan_out_override_warns(kind, flag):
    """IA3-LAYER-3: fan_in_fan_out is False for Linear and True for Conv1D; a disagreeing value warns and is
    overridden per layer (the forward is still IA3-FWD-1 on the logical weight). A fitting value does not warn."""
    gen = torch.Generator().manual_seed(5)
    base = fill_(make_layer(kind, 4, 3).double(), gen)
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        model = adapt(rt, Holder(copy.deepcopy(base)), ff=False, fan_in_fan_out=flag)
    vector = ia3_vector((3,), gen)
    set_vector(layer_of(model), "default", vector)
    x = make_input(kind, 4, gen)
    assert_close(model(x), oracle_forward(base, x, [(vector, False)]), clause="IA3-LAYER-3")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapt(rt, Holder(copy.deepcopy(base)), ff=False, fan_in_fan_out=not flag)
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)], "IA3-LAYER-3: no override, no warning"


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_merge_keeps_each_tensor_dtype(kind):
    """CORE-MERGE-10: merge and unmerge update weight and bias in place, each keeping its own dtype (here a bfloat16
    weight beside a float32 bias). (peft 0.21.2 casts a conv bias to the weight's dtype.)"""
    gen = torch.Generator().manual_seed(17)
    base = fill_(make_layer(kind, 4, 6), gen)
    base.weight.data = base.weight.data.bfloat16()
    model = adapt(rt, Holder(base), ff=False)
    layer = layer_of(model)
    set_vector(layer, "default", ia3_vector((6,), gen).float())
    params = (layer.base_layer.weight, layer.base_layer.bias)
    model.base_model.merge_adapter()
    model.base_model.unmerge_adapter()
    assert layer.base_layer.weight is params[0] and layer.base_layer.bias is params[1], "same Parameter objects"
    assert (params[0].dtype, params[1].dtype) == (torch.bfloat16, torch.float32)


def factor_map(shape, vector, ff, groups):
    """The factor each weight entry is multiplied by (IA3-FWD-3's broadcasting), entry by entry."""
    return oracle_merge(torch.ones(shape, dtype=F64), None, vector.to(F64), ff, groups)[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
@pytest.mark.parametrize(
    ("kind", "ff", "groups"), [("linear", False, 1), ("hf_conv1d", True, 1), ("conv2d", True, 2), ("conv2d", False, 1)]
)
def test_half_precision_base_with_autocast(kind, ff, groups, dtype):
    """CORE-DTYPE-1 (float32 vectors), CORE-DTYPE-3 (forward, backward, merge, unmerge finite), CORE-FWD-8 (output in
    the input dtype), IA3-DTYPE-1 (forward within the half-precision ⟨N⟩ of the oracle), IA3-MERGE-2 (unmerge divides
    in float32, then casts to the tensor's dtype)."""
    gen = torch.Generator().manual_seed(13)
    base = fill_(make_layer(kind, 4, 6, groups=groups), gen).to(dtype)
    model = adapt(rt, Holder(copy.deepcopy(base)), ff=ff, fan_in_fan_out=kind == "hf_conv1d")
    layer = layer_of(model)
    assert layer.ia3_l["default"].dtype == torch.float32, "CORE-DTYPE-1"
    vector = ia3_vector((4 if ff else 6,), gen).float()
    set_vector(layer, "default", vector)
    x = make_input(kind, 4, gen, dtype=dtype)
    y = model(x)
    assert y.dtype == dtype, "CORE-FWD-8"
    assert_close(y, oracle_forward(base, x, [(vector.double(), ff)]), clause="IA3-DTYPE-1", dtype=dtype)
    y.float().square().sum().backward()
    assert torch.isfinite(layer.ia3_l["default"].grad).all(), "CORE-DTYPE-3 (backward)"
    with torch.no_grad():
        model.base_model.merge_adapter()
        merged_w, merged_b = (t.clone() for t in (logical_w(layer.base_layer), layer.base_layer.bias))
        expected_w, _ = oracle_merge(logical_w(base).double(), None, vector.double(), ff, groups)
        assert merged_w.dtype == dtype and torch.isfinite(merged_w).all(), "CORE-DTYPE-3 (merge)"
        assert_close(merged_w, expected_w, clause="IA3-MERGE-1", dtype=dtype)
        y_merged = model(x)
        assert y_merged.dtype == dtype and torch.isfinite(y_merged).all()
        assert_close(y_merged, y, clause="CORE-MERGE-4", dtype=dtype)
        model.base_model.unmerge_adapter()
    restored_w, restored_b = logical_w(layer.base_layer), layer.base_layer.bias
    factors = factor_map(merged_w.shape, vector, ff, groups).float()
    assert torch.equal(restored_w, (merged_w.float() / (factors + SHIFT)).to(dtype)), "IA3-MERGE-2 (float32 rule)"
    expected_b = merged_b if ff else (merged_b.float() / (vector + SHIFT)).to(dtype)
    assert torch.equal(restored_b, expected_b), "IA3-MERGE-2 (bias)"
    assert_close(restored_w, logical_w(base), clause="IA3-MERGE-2", dtype=dtype, also=(merged_w,))


# ---------------------------------------------------------------------------------------------------------------
# 5. config and matching
# ---------------------------------------------------------------------------------------------------------------
def test_config_fields_and_json():
    """IA3-CFG-1 (fields and defaults, no r/bias/layers_*), CORE-CFG-3 (lists stored as sets), CORE-CFG-7."""
    config = rt.IA3Config(target_modules=["k", "wo"], feedforward_modules=("wo",))
    fields = {"target_modules", "exclude_modules", "feedforward_modules", "fan_in_fan_out", "modules_to_save"}
    fields |= {"init_ia3_weights", "task_type", "peft_type", "auto_mapping", "peft_version"}
    fields |= {"base_model_name_or_path", "revision", "inference_mode"}
    data = config.to_dict()
    assert set(data) == fields and data["peft_type"] == "IA3"
    assert (config.target_modules, config.feedforward_modules) == ({"k", "wo"}, {"wo"})
    defaults = rt.IA3Config()
    assert (defaults.target_modules, defaults.feedforward_modules, defaults.exclude_modules) == (None, None, None)
    assert (defaults.fan_in_fan_out, defaults.init_ia3_weights, defaults.modules_to_save) == (False, True, None)
    assert rt.PeftConfig.from_dict(data).to_dict() == data


@pytest.mark.parametrize(
    ("targets", "feedforward", "rejected"),
    [
        (["k", "v"], ["wo"], True),
        ({"k", "v"}, ("k", "wo"), True),
        (["k", "wo"], ["wo"], False),
        (["k"], [], False),
        ("k|wo", ["wo"], False),  # a string on either side: no subset check
        (["k"], "wo", False),
    ],
)
def test_feedforward_subset_rule_at_construction(targets, feedforward, rejected):
    """IA3-CFG-2: with both lists/sets, feedforward_modules ⊄ target_modules is a ValueError at construction."""
    if rejected:
        with pytest.raises(ValueError, match="feedforward_modules"):
            rt.IA3Config(target_modules=targets, feedforward_modules=feedforward)
    else:
        rt.IA3Config(target_modules=targets, feedforward_modules=feedforward)


def test_unknown_model_type_needs_both_fields():
    """IA3-CFG-3 / CORE-MATCH-11: a plain torch model has no default targets and no default feedforward modules —
    ValueError naming the missing field, before any module is replaced (CORE-CFG-4); `[]` means none."""
    base = Holder(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="target_modules"):
        rt.get_peft_model(base, rt.IA3Config())
    with pytest.raises(ValueError, match="feedforward_modules"):
        rt.get_peft_model(base, rt.IA3Config(target_modules=["layer"]))
    assert type(base.layer) is nn.Linear
    model = rt.get_peft_model(base, rt.IA3Config(target_modules=["layer"], feedforward_modules=[]))
    assert tuple(layer_of(model).ia3_l["default"].shape) == (3, 1)


@pytest.mark.parametrize(("feedforward", "down_proj_ff"), [(None, True), ([], False), (["down_proj"], True)])
def test_empty_feedforward_means_none_on_known_model(feedforward, down_proj_ff):
    """IA3-CFG-3: on a known model type a None feedforward_modules takes the table's column (Llama: down_proj), while
    `feedforward_modules=[]` means no feedforward module at all."""
    model = rt.get_peft_model(tiny_llama(), rt.IA3Config(target_modules=["down_proj"], feedforward_modules=feedforward))
    flags = {layer.settings["default"].feedforward for _, layer in model.base_model.tuner_layers()}
    assert flags == {down_proj_ff}


class TwoProj(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.proj = nn.Linear(4, 6), nn.Linear(6, 5)

    def forward(self, x):
        return self.proj(self.q_proj(x))


@pytest.mark.parametrize(
    ("feedforward", "q_proj_ff", "proj_ff"), [(["proj"], False, True), (".*q_proj", True, False), ("proj", False, True)]
)
def test_feedforward_matching(feedforward, q_proj_ff, proj_ff):
    """IA3-CFG-4: a list entry matches the whole key or a dot-boundary suffix ("proj" is not q_proj's suffix; peft
    0.21.2 uses a bare `endswith` and makes q_proj feedforward); a string must fully match."""
    model = rt.get_peft_model(
        TwoProj(), rt.IA3Config(target_modules=["q_proj", "proj"], feedforward_modules=feedforward)
    )
    assert tuple(layer_of(model, "q_proj").ia3_l["default"].shape) == ((1, 4) if q_proj_ff else (6, 1))
    assert tuple(layer_of(model, "proj").ia3_l["default"].shape) == ((1, 6) if proj_ff else (5, 1))


def test_unsupported_layer_rejected():
    """IA3-LAYER-3 / CORE-INJ-2: an Embedding target is a TypeError or ValueError naming its type, and the model is
    left as it was."""
    base = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 3))
    with pytest.raises((TypeError, ValueError), match="Embedding"):
        rt.get_peft_model(base, rt.IA3Config(target_modules=["0", "1"], feedforward_modules=[]))
    assert type(base[0]) is nn.Embedding and type(base[1]) is nn.Linear


def test_disagreeing_adapters_merge_and_save(tmp_path):
    """IA3-MULTI-1 at model level: adapter "out" (not feedforward) and "inp" (feedforward) on one layer give
    y = l_out ⊙ base(l_inp ⊙ x); merging both equals it; each saves and reloads with its own layout."""
    gen = torch.Generator().manual_seed(21)
    base = Holder(fill_(nn.Linear(4, 3).double(), gen))
    model = adapt(rt, copy.deepcopy(base), ff=False, name="out")
    model.add_adapter("inp", rt.IA3Config(**ia3_kwargs(True, init=True)))
    model.base_model.set_adapter(["out", "inp"])
    layer = layer_of(model)
    l_out, l_inp = ia3_vector((3,), gen), ia3_vector((4,), gen)
    set_vector(layer, "out", l_out)
    set_vector(layer, "inp", l_inp)
    x = make_input("linear", 4, gen)
    y = model(x)
    assert_close(y, l_out * base.layer(x * l_inp), clause="IA3-MULTI-1")
    model.save_pretrained(tmp_path)
    reloaded = rt.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "out", adapter_name="out")
    reloaded.load_adapter(tmp_path / "inp", "inp")
    reloaded.base_model.set_adapter(["out", "inp"])
    with torch.no_grad():
        assert torch.equal(reloaded(x), y), "CORE-SAVE-5"
        model.base_model.merge_adapter()
        assert_close(model(x), y, clause="IA3-MULTI-1 merged")


@pytest.mark.parametrize(
    ("build", "targets", "feedforward", "ff_suffix"),
    [
        (tiny_llama, ["q_proj"], None, None),  # the column (down_proj) is not among the targets
        (tiny_gpt2, ["c_attn", "c_proj"], None, ".mlp.c_proj"),  # column entry narrower than a target
        (tiny_llama, "all-linear", None, ".down_proj"),
        (tiny_llama, "all-linear", ["down_proj"], ".down_proj"),
    ],
    ids=["llama-column-untargeted", "gpt2-column-narrower", "llama-all-linear-default", "llama-all-linear-given"],
)
def test_resolved_config_loads_back(tmp_path, build, targets, feedforward, ff_suffix):
    """CORE-SAVE-5 / CORE-SAVE-10 with IA3-CFG-2/3: a feedforward set resolved beside explicit targets or "all-linear"
    (expanded to module keys) still writes an adapter_config.json that loads back, in the reference and in peft, with
    the same feedforward layers (IA3-CFG-4). (peft 0.21.2 writes files it rejects itself: "`feedforward_modules`
    should be a subset of `target_modules`".)"""
    base = build()
    model = rt.get_peft_model(
        copy.deepcopy(base), rt.IA3Config(target_modules=targets, feedforward_modules=feedforward)
    )
    layout = ia3_layout(model)
    assert layout and {k for k, (ff, _) in layout.items() if ff} == {
        k for k in layout if ff_suffix is not None and k.endswith(ff_suffix)
    }
    model.save_pretrained(tmp_path)
    assert ia3_layout(rt.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)) == layout
    assert ia3_layout(peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)) == layout


def test_random_init_is_standard_normal_and_seeded():
    """IA3-INIT-2 ⟨P⟩ (n = 10⁴: |mean| ≤ 6/√n, variance within 6 standard errors of 1), IA3-ID-1 (not identity),
    CORE-INIT-1 (same torch RNG state → equal vectors)."""
    base = Holder(nn.Linear(2, 10_000).double())
    vectors = []
    for _ in range(2):
        torch.manual_seed(1234)
        model = adapt(rt, copy.deepcopy(base), ff=False, init=False)
        vectors.append(layer_of(model).ia3_l["default"].detach().reshape(-1))
    assert torch.equal(vectors[0], vectors[1]), "CORE-INIT-1"
    sample, n = vectors[0], vectors[0].numel()
    assert abs(sample.mean().item()) <= 6 / math.sqrt(n)
    assert abs(sample.var().item() - 1) <= 6 * math.sqrt(2 / (n - 1))
    x = torch.rand(3, 2, dtype=F64)
    assert not torch.equal(model(x), base(x)), "IA3-ID-1"


# ---- IA3-WADD-1 (optional capability ia3.weighted_adapter) ----
def _two_adapter_net() -> rt.PeftModel:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    model = rt.get_peft_model(net, rt.IA3Config(target_modules=["0"], feedforward_modules=[], init_ia3_weights=False))
    model.add_adapter("b", rt.IA3Config(target_modules=["0", "2"], feedforward_modules=["2"], init_ia3_weights=False))
    return model


def test_weighted_adapter_is_a_weighted_sum_over_present_adapters():
    """IA3-WADD-1: l_c = Σ_k w_k l_k (adapters absent from a layer contribute nothing); union of the module sets."""
    model = _two_adapter_net()
    layer0, layer2 = model.base_model.model[0], model.base_model.model[2]
    model.add_weighted_adapter(["default", "b"], [0.3, 0.7], "c")
    expected0 = 0.3 * layer0.ia3_l["default"] + 0.7 * layer0.ia3_l["b"]
    torch.testing.assert_close(layer0.ia3_l["c"], expected0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer2.ia3_l["c"], 0.7 * layer2.ia3_l["b"], rtol=1e-12, atol=1e-12)
    config = model.peft_config["c"]
    assert config.target_modules == {"0", "2"} and config.feedforward_modules == {"2"}
    assert layer2.settings["c"].feedforward and not layer0.settings["c"].feedforward
    assert model.active_adapters == ["default"] and not layer0.ia3_l["c"].requires_grad


def test_weighted_adapter_strings_alternate_and_vectors_match_peft():
    """IA3-WADD-1 for string patterns; the combined vectors agree with peft's add_weighted_adapter."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    results = {}
    for lib in (rt, peft):
        torch.manual_seed(4)
        model = lib.get_peft_model(
            copy.deepcopy(net), lib.IA3Config(target_modules="0", feedforward_modules="2", init_ia3_weights=False)
        )
        model.add_adapter("b", lib.IA3Config(target_modules="2", feedforward_modules="2", init_ia3_weights=False))
        model.add_weighted_adapter(["default", "b"], [0.5, -2.0], "c")
        results[lib.__name__] = {k: v for k, v in model.state_dict().items() if k.endswith("ia3_l.c")}
        assert model.peft_config["c"].target_modules == "(0)|(2)"
    assert results["reference_tuners"].keys() == results["peft"].keys()
    for key, value in results["reference_tuners"].items():
        torch.testing.assert_close(value, results["peft"][key], rtol=1e-6, atol=1e-7)  # peft sums in float32


def test_weighted_adapter_rejects_bad_input():
    """IA3-WADD-1: unknown adapter, mixed set/string kinds → ValueError naming the subject."""
    model = _two_adapter_net()
    with pytest.raises(ValueError, match="nope"):
        model.add_weighted_adapter(["default", "nope"], [1.0, 1.0], "c")
    model.add_adapter("s", rt.IA3Config(target_modules="0", feedforward_modules="2"))
    with pytest.raises(ValueError, match="target_modules"):
        model.add_weighted_adapter(["default", "s"], [1.0, 1.0], "c")
    assert "c" not in model.peft_config
