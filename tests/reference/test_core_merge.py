"""CORE-MERGE-1…14 (and CORE-FWD-9): merge, unmerge, unload through IA3 on SmallNet and tiny GPT-2."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from test_core_support import adapted, assert_close, base_snapshot, ia3, inputs, perturb, small_net, tuner_layers
from tiny_models import tiny_gpt2, token_batch
from torch import nn
from transformers.pytorch_utils import Conv1D

from reference_tuners import IA3Config, TunerLayer

F64 = torch.float64


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _model(dtype: torch.dtype = F64, names=("a", "b", "c")) -> nn.Module:
    """SmallNet with adapters `names` on q_proj/v_proj/fc_out (first active), non-identity vectors."""
    model = adapted(small_net(dtype=dtype), ia3(), name=names[0])
    for name in names[1:]:
        _quiet(model.add_adapter, name, ia3())
    perturb(model)
    return model


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return base_snapshot(model)


def _equal(left: dict, right: dict) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def _unmerge_bound(before: dict, after: dict, layers: dict[str, TunerLayer], names: list[str]) -> None:
    """SPEC §8 ⟨A⟩ IA3 unmerge: |W_rec − W| ≤ |W|·Σ_a 1e-8/|l_a + 1e-8| + ⟨N⟩ (float64 single layer)."""
    for key, layer in layers.items():
        shift = sum(1e-8 / (layer.ia3_l[n].detach().abs().min().item() - 1e-8) for n in names if n in layer.ia3_l)
        for suffix in ("weight", "bias"):
            expected, got = before[f"{key}.{suffix}"], after[f"{key}.{suffix}"]
            scale = max(1.0, expected.abs().max().item())
            bound = expected.abs() * shift + 1e-10 * scale + 1e-10 * expected.abs()
            assert ((got - expected).abs() <= bound).all(), key


# ---- CORE-MERGE-1…3 ----
def test_merge_selection_and_order():
    """CORE-MERGE-1/3: None → the active list in order; a list → those names in order, inactive included."""
    model = _model()
    _quiet(model.set_adapter, ["c", "a"])
    model.merge_adapter()
    for layer in tuner_layers(model).values():
        assert layer.merged_adapters == ["c", "a"] and layer.merged
    _quiet(model.unmerge_adapter)
    model.merge_adapter(["b", "c"])
    for layer in tuner_layers(model).values():
        assert layer.merged_adapters == ["b", "c"] and layer.active_adapters == ["c", "a"]
    _quiet(model.unmerge_adapter)
    assert not any(layer.merged or layer.merged_adapters for layer in tuner_layers(model).values())


def test_layer_merge_order():
    """CORE-MERGE-1/3 on one layer: several names merge (and are recorded) in the order given."""
    model = _model()
    layer = tuner_layers(model)["layers.0.q_proj"]
    layer.merge(adapter_names=["c", "a", "b"])
    assert layer.merged_adapters == ["c", "a", "b"]
    _quiet(layer.unmerge)
    layer.active_adapters = ["b", "c"]
    layer.merge()
    assert layer.merged_adapters == ["b", "c"]


def test_merge_skips_names_absent_from_a_layer():
    """CORE-MERGE-1: silently."""
    model = _model()
    _quiet(model.add_adapter, "only_fc_in", ia3(targets=["fc_in"], feedforward=[]))
    layer = tuner_layers(model)["layers.0.q_proj"]
    before = _weights(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.merge(adapter_names=["only_fc_in", "ghost"])
        model.merge_adapter(["only_fc_in"])
    assert not layer.merged and tuner_layers(model)["layers.0.mlp.fc_in"].merged_adapters == ["only_fc_in"]
    after = _weights(model)
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith("layers.0.mlp.fc_in"))


def test_bare_string_rejected():
    """CORE-MERGE-1: TypeError, nothing merged."""
    model = _model()
    before = _weights(model)
    with pytest.raises(TypeError):
        tuner_layers(model)["layers.0.q_proj"].merge(adapter_names="a")
    with pytest.raises(TypeError):
        model.merge_adapter("a")
    with pytest.raises(TypeError):
        model.merge_and_unload(adapter_names="a")
    assert _equal(_weights(model), before) and not any(la.merged for la in tuner_layers(model).values())
    assert any(isinstance(m, TunerLayer) for m in model.modules())


def test_merge_is_idempotent():
    """CORE-MERGE-2."""
    model = _model()
    model.merge_adapter(["a"])
    merged = _weights(model)
    with pytest.warns(UserWarning, match="(?i)already merged"):
        model.merge_adapter(["a"])
    assert _equal(_weights(model), merged)
    layer = tuner_layers(model)["layers.0.q_proj"]
    with pytest.warns(UserWarning, match="(?i)already merged"):
        layer.merge(adapter_names=["a"])
    with pytest.warns(UserWarning, match="a"):
        model.merge_adapter(["a", "b"])
    assert all(la.merged_adapters == ["a", "b"] for la in tuner_layers(model).values())


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("order", [["a"], ["b", "a"], ["c", "a", "b"]])
def test_merged_output_equals_unmerged(dtype, order):
    """CORE-MERGE-4, CORE-FWD-9: merged → the unmerged forward with active list = merge order; once merged,
    other (unmerged) adapters are not applied."""
    model = _model(dtype)
    x = inputs(dtype=dtype)
    _quiet(model.set_adapter, order)
    expected = model(x)
    for active in (["a"], ["a", "b", "c"]):
        twin = copy.deepcopy(model)
        _quiet(twin.set_adapter, active)
        twin.merge_adapter(order)
        assert_close(twin(x), expected)


# ---- CORE-MERGE-5/6/11/14 ----
def test_unmerge_is_lifo(monkeypatch):
    """CORE-MERGE-5: the reverts come in reverse merge order."""
    model = _model()
    model.merge_adapter(["b", "a", "c"])
    calls = []
    for layer in tuner_layers(model).values():
        original = layer.unmerged_tensors

        def recording(name, original=original):
            calls.append(name)
            return original(name)

        monkeypatch.setattr(layer, "unmerged_tensors", recording)
    _quiet(model.unmerge_adapter)
    assert calls == ["c", "a", "b"] * len(tuner_layers(model))


def test_unmerge_failure_reverts_later_adapters_first():
    """CORE-MERGE-5 observed through IA3-MERGE-5: only the first-merged adapter cannot be reverted."""
    model = _model()
    layer = tuner_layers(model)["layers.0.q_proj"]
    with torch.no_grad():
        layer.ia3_l["a"][0, 0] = -1e-8
    layer.merge(adapter_names=["a"])
    after_a = _weights(model)
    layer.merge(adapter_names=["b"])
    with pytest.raises(ValueError, match="a"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer.unmerge()
    assert layer.merged_adapters == ["a"]
    _unmerge_bound(after_a, _weights(model), {"layers.0.q_proj": layer}, ["b"])


def test_unmerge_with_nothing_merged_warns():
    model = _model()
    before = _weights(model)
    with pytest.warns(UserWarning, match="(?i)unmerged"):
        model.unmerge_adapter()
    with pytest.warns(UserWarning, match="(?i)unmerged"):
        tuner_layers(model)["layers.0.q_proj"].unmerge()
    assert _equal(_weights(model), before)


@pytest.mark.parametrize("train", [False, True])
def test_merge_unmerge_restores(train):
    """CORE-MERGE-6/11/14: model-level merge/unmerge on every layer, in eval and train mode."""
    model = _model()
    model.train(train)
    before = _weights(model)
    model.merge_adapter(["a", "c"])
    assert all(la.merged_adapters == ["a", "c"] for la in tuner_layers(model).values())
    assert not _equal(_weights(model), before)
    _quiet(model.unmerge_adapter)
    assert not any(la.merged for la in tuner_layers(model).values())
    _unmerge_bound(before, _weights(model), tuner_layers(model), ["a", "c"])


# ---- CORE-MERGE-7…9 (safe merge) ----
def _break(model: nn.Module, name: str, key: str, value: float = float("inf")) -> None:
    with torch.no_grad():
        tuner_layers(model)[key].ia3_l[name].view(-1)[0] = value


def test_safe_merge_rejects_non_finite():
    """CORE-MERGE-7: ValueError naming the adapter; weights bitwise as before; not recorded."""
    model = _model()
    _break(model, "b", "layers.0.q_proj")
    model.merge_adapter(["a"])
    before = _weights(model)
    with pytest.raises(ValueError, match="b"):
        model.merge_adapter(["b"], safe_merge=True)
    assert _equal(_weights(model), before)
    assert all(la.merged_adapters == ["a"] for la in tuner_layers(model).values())
    layer = tuner_layers(model)["layers.0.q_proj"]
    with pytest.raises(ValueError, match="b"):
        layer.merge(safe_merge=True, adapter_names=["b"])
    assert layer.merged_adapters == ["a"] and _equal(_weights(model), before)


def test_safe_merge_checks_the_bias():
    """CORE-MERGE-7 on a merged bias only overflowing (IA3-MERGE-6), float32."""
    model = adapted(small_net(), ia3())
    layer = tuner_layers(model)["layers.0.q_proj"]
    with torch.no_grad():
        layer.base_layer.bias.fill_(1e10)
        layer.base_layer.weight.clamp_(-1e-3, 1e-3)
        layer.ia3_l["default"].fill_(1e30)
    before = _weights(model)
    with pytest.raises(ValueError, match="default"):
        layer.merge(safe_merge=True)
    assert not layer.merged and _equal(_weights(model), before)


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
def test_safe_merge_equals_unsafe(dtype):
    """CORE-MERGE-8."""
    model = _model(dtype)
    twin = copy.deepcopy(model)
    model.merge_adapter(["a", "b"], safe_merge=True)
    twin.merge_adapter(["a", "b"], safe_merge=False)
    assert _equal(_weights(model), _weights(twin))


@pytest.mark.parametrize("broken", ["layers.0.q_proj", "layers.1.v_proj", "layers.1.mlp.fc_out"])
def test_partial_safe_merge_model_level(broken):
    """CORE-MERGE-9 through merge_adapter and merge_and_unload: a1 merged and recorded everywhere, a2 and a3 nowhere."""
    for method in ("merge_adapter", "merge_and_unload"):
        model = _model()
        _break(model, "b", broken, float("nan"))
        expected = copy.deepcopy(model)
        expected.merge_adapter(["a"])
        with pytest.raises(ValueError, match="b"):
            getattr(model, method)(adapter_names=["a", "b", "c"], safe_merge=True)
        assert all(la.merged_adapters == ["a"] for la in tuner_layers(model).values()), method
        assert _equal(_weights(model), _weights(expected)), method


def test_partial_safe_merge_layer_level():
    model = _model()
    _break(model, "b", "layers.0.v_proj")
    expected = copy.deepcopy(model)
    tuner_layers(expected)["layers.0.v_proj"].merge(adapter_names=["a"])
    layer = tuner_layers(model)["layers.0.v_proj"]
    with pytest.raises(ValueError, match="b"):
        layer.merge(safe_merge=True, adapter_names=["a", "b", "c"])
    assert layer.merged_adapters == ["a"]
    assert _equal(_weights(model), _weights(expected))


# ---- CORE-MERGE-10 ----
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16])
def test_merge_in_place(dtype):
    """CORE-MERGE-10: the same Parameter objects, shape, dtype and device."""
    model = _model(dtype)
    params = {k: p for k, p in model.named_parameters() if ".base_layer." in k}
    meta = {k: (p.shape, p.dtype, p.device) for k, p in params.items()}
    optimizer = torch.optim.SGD(list(params.values()), lr=0.1)
    model.merge_adapter(["a", "b"])
    merged = _weights(model)
    _quiet(model.unmerge_adapter)
    now = dict(model.named_parameters())
    for key, param in params.items():
        assert now[key] is param and (param.shape, param.dtype, param.device) == meta[key]
    assert all(p is q for p, q in zip(optimizer.param_groups[0]["params"], params.values(), strict=True))
    assert not _equal(merged, _weights(model))


# ---- CORE-MERGE-12/13 ----
@pytest.mark.parametrize("safe", [False, True])
def test_merge_and_unload(safe):
    """CORE-MERGE-12 on SmallNet: original classes and objects, no tuner layer or config left, equal outputs."""
    base = small_net(dtype=F64)
    originals = {k: m for k, m in base.named_modules()}
    model = adapted(base, ia3(), name="a")
    _quiet(model.add_adapter, "b", ia3(targets=["fc_in"], feedforward=[]))
    perturb(model)
    x = inputs(dtype=F64)
    _quiet(model.set_adapter, ["a", "b"])
    expected = model(x)
    plain = _quiet(model.merge_and_unload, safe_merge=safe)
    assert plain is base and type(plain).__name__ == "SmallNet"
    assert not any(isinstance(m, TunerLayer) for m in plain.modules())
    assert not hasattr(plain, "peft_config")
    for key, module in plain.named_modules():
        assert module is originals[key], key
    assert_close(plain(x), expected)


def test_merge_and_unload_named_adapters():
    model = _model()
    x = inputs(dtype=F64)
    _quiet(model.set_adapter, ["b", "c"])
    expected = model(x)
    _quiet(model.set_adapter, ["a"])
    assert_close(_quiet(model.merge_and_unload, adapter_names=["b", "c"])(x), expected)


def test_merge_and_unload_keeps_conv1d():
    """CORE-MERGE-12 on GPT-2: a transformers Conv1D stays a Conv1D (stored orientation)."""
    base = tiny_gpt2().double()
    model = adapted(base, IA3Config())
    perturb(model)
    ids = token_batch(64)
    expected = model(ids).logits
    plain = _quiet(model.merge_and_unload)
    for block in plain.transformer.h:
        assert type(block.attn.c_attn) is Conv1D and type(block.mlp.c_proj) is Conv1D
    assert not any(isinstance(m, TunerLayer) for m in plain.modules())
    assert_close(plain(ids).logits, expected)


def test_unload_without_merging():
    """CORE-MERGE-13: nothing merged → the original outputs, bitwise."""
    base = small_net()
    x = inputs()
    reference = copy.deepcopy(base)(x)
    model = adapted(base)
    perturb(model)
    plain = model.unload()
    assert plain is base and not any(isinstance(m, TunerLayer) for m in plain.modules())
    assert torch.equal(plain(x), reference)


def test_unload_never_returns_merged_weights():
    """CORE-MERGE-13: with adapters merged, unload unmerges (or warns)."""
    model = _model()
    layers = tuner_layers(model)
    before = _weights(model)
    model.merge_adapter(["a", "b"])
    merged = _weights(model)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plain = model.unload()
    weights = {k: v.clone() for k, v in plain.state_dict().items()}
    assert not any(isinstance(m, TunerLayer) for m in plain.modules())
    if _equal(weights, merged):
        assert record, "merged weights returned silently"
    else:
        _unmerge_bound(before, weights, layers, ["a", "b"])
