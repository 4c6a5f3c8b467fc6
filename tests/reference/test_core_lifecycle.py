"""CORE-LIFE-1…11, CORE-MTS-1/2, CORE-TRAIN-1…6, CORE-DTYPE-1/3/4/5, CORE-INJ-1…3, CORE-INIT-1,
CORE-FWD-5…8: named adapters, trainability and dtypes, through IA3 on SmallNet and tiny transformers models."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from test_core_support import (
    adapted,
    adapter_params,
    assert_close,
    base_snapshot,
    ia3,
    inputs,
    perturb,
    small_net,
    snapshot,
    tuner_layers,
)
from tiny_models import tiny_gpt2, tiny_llama, token_batch
from torch import nn
from transformers.pytorch_utils import Conv1D

from reference_tuners import IA3Config, TunerLayer
from reference_tuners.core import registry
from reference_tuners.core.modules_to_save import ModulesToSaveWrapper

ADAPTED = {f"layers.{i}.{n}" for i in range(2) for n in ("q_proj", "v_proj", "mlp.fc_out")}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _grad_flags(model: nn.Module) -> dict[str, bool]:
    """requires_grad by parameter name, wrapper segments removed so that keys survive new wrappers."""
    return {
        k.replace(".base_layer.", ".").replace(".original_module.", "."): p.requires_grad
        for k, p in model.named_parameters()
    }


def _trainable(model: nn.Module) -> set[str]:
    return {k for k, p in model.named_parameters() if p.requires_grad}


def _two_adapters(**kwargs) -> nn.Module:
    model = adapted(small_net(), ia3(**kwargs))
    _quiet(model.add_adapter, "other", ia3(targets=["q_proj", "fc_in"], feedforward=[]))
    perturb(model)
    return model


# ---- CORE-LIFE-1, CORE-INJ-1…3, CORE-INIT-1 ----
@pytest.mark.parametrize("name", ["default", "my_adapter"])
def test_get_peft_model_state(name):
    """CORE-LIFE-1."""
    model = adapted(small_net(), name=name)
    assert model.active_adapters == [name] and list(model.peft_config) == [name]
    layers = tuner_layers(model)
    assert set(layers) == ADAPTED
    for layer in layers.values():
        assert layer.active_adapters == [name] and not layer.merged and layer.merged_adapters == []
        assert not layer.disable_adapters and set(layer.settings) == {name}


def test_injection_keeps_base_layers():
    """CORE-INJ-1: the original modules become base layers with unchanged parameters; the rest is untouched."""
    base = small_net()
    originals = dict(base.named_modules())
    before = snapshot(base)
    model = adapted(base)
    for key, layer in tuner_layers(model).items():
        assert layer.base_layer is originals[key]
    for key, module in base.named_modules():
        if key and not any(key == k or key.startswith(k + ".") for k in ADAPTED):
            assert module is originals[key], key
    after = base_snapshot(model)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key


def test_unsupported_kind_rejected_and_left_alone():
    """CORE-INJ-2: the error names the module's type; nothing is adapted."""
    base = small_net()
    norm = base.norm
    with pytest.raises((TypeError, ValueError), match="LayerNorm"):
        adapted(base, ia3(targets=["q_proj", "norm"], feedforward=[]))
    assert base.norm is norm and not any(isinstance(m, TunerLayer) for m in base.modules())


def test_in_out_features():
    """CORE-INJ-3: Linear, transformers Conv1D (stored (in, out)), Conv2d."""
    layers = tuner_layers(adapted(small_net()))
    assert (layers["layers.0.mlp.fc_out"].in_features, layers["layers.0.mlp.fc_out"].out_features) == (16, 8)
    layers = tuner_layers(adapted(tiny_gpt2(), IA3Config()))
    attn = layers["transformer.h.0.attn.c_attn"]
    assert isinstance(attn.base_layer, Conv1D) and (attn.in_features, attn.out_features) == (32, 96)
    convnet = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 2, 1))
    layers = tuner_layers(adapted(convnet, IA3Config(target_modules=["0", "2"], feedforward_modules=["2"])))
    assert [(la.in_features, la.out_features) for la in layers.values()] == [(3, 5), (5, 2)]


def test_seeded_init_reproducible():
    """CORE-INIT-1: the global torch generator decides the initialisation."""
    config = ia3(init_ia3_weights=False)
    draws = []
    for seed in (5, 5, 6):
        base = small_net()
        torch.manual_seed(seed)
        draws.append({k: p.detach().clone() for k, p in adapter_params(adapted(base, config), "default").items()})
    assert draws[0].keys() == draws[2].keys() and len(draws[0]) == 6
    assert all(torch.equal(draws[0][k], draws[1][k]) for k in draws[0])
    assert not all(torch.equal(draws[0][k], draws[2][k]) for k in draws[0])


# ---- CORE-FWD-5…8 ----
def test_no_applicable_adapter_is_base():
    """CORE-FWD-5: empty active list; a layer where no active adapter is injected."""
    x = inputs()
    base = small_net()
    reference = base(x)
    model = _two_adapters()
    _quiet(model.set_adapter, [])
    assert torch.equal(model(x), reference)
    _quiet(model.set_adapter, "other")
    layer = tuner_layers(model)["layers.0.v_proj"]  # holds `default` only
    h = torch.randn(2, 8)
    assert torch.equal(layer(h), layer.base_layer(h))
    assert not torch.equal(model(x), reference)


def test_forward_mutates_nothing_and_is_deterministic():
    """CORE-FWD-6/7."""
    model = _two_adapters()
    _quiet(model.set_adapter, ["default", "other"])
    x = inputs()
    x_before, params_before = x.clone(), snapshot(model)
    first, second = model(x), model(x)
    assert torch.equal(first, second) and torch.equal(x, x_before)
    after = snapshot(model)
    assert all(torch.equal(after[k], v) for k, v in params_before.items())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_output_dtype_is_input_dtype(dtype):
    """CORE-FWD-8 with float32 adapters on half-precision bases (CORE-DTYPE-2's casts)."""
    model = adapted(small_net(dtype=dtype))
    perturb(model)
    assert model(inputs(dtype=dtype)).dtype == dtype


# ---- CORE-LIFE-2/3 ----
def test_add_adapter_keeps_state_and_creates_frozen_params():
    """CORE-LIFE-2."""
    model = adapted(small_net(), ia3(modules_to_save=["head"]))
    flags = _grad_flags(model)
    _quiet(model.add_adapter, "other", ia3(targets=["q_proj", "fc_in"], feedforward=[], modules_to_save=["norm"]))
    assert model.active_adapters == ["default"]
    assert all(layer.active_adapters == ["default"] for layer in tuner_layers(model).values())
    new_flags = _grad_flags(model)
    assert {k: new_flags[k] for k in flags} == flags
    new = set(new_flags) - set(flags)
    assert new and not any(new_flags[k] for k in new)
    assert {k.rsplit(".", 2)[0] for k in adapter_params(model, "other")} == {
        f"base_model.model.layers.{i}.{n}" for i in range(2) for n in ("q_proj", "mlp.fc_in")
    }
    assert any(".modules_to_save.other." in k for k in new)


def test_add_adapter_rejects_duplicate_name_and_other_tuner(monkeypatch):
    """CORE-LIFE-3."""
    model = adapted(small_net())
    before = snapshot(model)
    with pytest.raises(ValueError, match="default"):
        model.add_adapter("default", ia3(targets=["fc_in"], feedforward=[]))
    other_tuner = registry.Tuner("OTHER", "other_", IA3Config, type(tuner_layers(model)["layers.0.q_proj"]))
    monkeypatch.setitem(registry._TUNERS, "OTHER", other_tuner)
    config = ia3(targets=["fc_in"], feedforward=[])
    config.peft_type = "OTHER"
    with pytest.raises(ValueError):
        model.add_adapter("second", config)
    assert list(model.peft_config) == ["default"] and snapshot(model).keys() == before.keys()


# ---- CORE-LIFE-4/5, CORE-TRAIN-1…3 ----
def test_set_adapter_order_and_trainability():
    """CORE-LIFE-4, CORE-TRAIN-1/2."""
    model = _two_adapters(modules_to_save=["head"])
    expected_default = set(adapter_params(model, "default"))
    copies = {k for k, _ in model.named_parameters() if ".modules_to_save.default." in k}
    assert _trainable(model) == expected_default | copies
    _quiet(model.set_adapter, ["other", "default"])
    assert model.active_adapters == ["other", "default"]
    layers = tuner_layers(model)
    assert all(layer.active_adapters == ["other", "default"] for layer in layers.values())
    assert _trainable(model) == expected_default | copies | set(adapter_params(model, "other"))
    _quiet(model.set_adapter, "other")
    assert _trainable(model) == set(adapter_params(model, "other"))
    with pytest.raises(ValueError, match="missing"):
        model.set_adapter(["default", "missing"])
    assert model.active_adapters == ["other"] and _trainable(model) == set(adapter_params(model, "other"))


def test_inference_mode_leaves_nothing_trainable():
    """CORE-TRAIN-3 (and CORE-LIFE-4's exception)."""
    model = adapted(small_net(), ia3(inference_mode=True, modules_to_save=["head"]))
    assert _trainable(model) == set()
    _quiet(model.add_adapter, "trainable", ia3(targets=["fc_in"], feedforward=[]))
    _quiet(model.set_adapter, ["default", "trainable"])
    assert _trainable(model) == set(adapter_params(model, "trainable"))


def test_set_adapter_on_merged_model_warns_and_unmerges():
    """CORE-LIFE-5."""
    model = _two_adapters()
    x = inputs(dtype=torch.float32)
    unmerged = model(x)
    weights = base_snapshot(model)
    model.merge_adapter()
    with pytest.warns(UserWarning):
        model.set_adapter("other")
    assert not any(layer.merged for layer in tuner_layers(model).values())
    restored = base_snapshot(model)
    for key, value in weights.items():
        assert_close(restored[key], value)
    _quiet(model.set_adapter, "default")
    assert_close(model(x), unmerged)


# ---- CORE-LIFE-6/7 ----
@pytest.mark.parametrize("merge", [False, True])
def test_disable_adapter_is_base_and_restores(merge):
    """CORE-LIFE-6/7 (also leaving by exception), modules_to_save included."""
    base = small_net()
    x = inputs()
    reference = copy.deepcopy(base)(x)
    model = adapted(base, ia3(modules_to_save=["head"]))
    perturb(model)
    with torch.no_grad():
        model.base_model.model.head.modules_to_save["default"].weight.mul_(2.0)
    unmerged_weights = base_snapshot(model)
    if merge:
        model.merge_adapter()
    merged_weights = base_snapshot(model)
    before = model(x)
    with model.disable_adapter():
        inside = _quiet(model, x)
    if merge:
        assert_close(inside, reference)
    else:
        assert torch.equal(inside, reference)
    assert model.active_adapters == ["default"]
    assert_close(model(x), before)
    with pytest.raises(RuntimeError, match="boom"), model.disable_adapter():
        _quiet(model, x)
        raise RuntimeError("boom")
    assert model.active_adapters == ["default"]
    assert all(not layer.disable_adapters for layer in tuner_layers(model).values())
    assert_close(model(x), before)
    weights = base_snapshot(model)
    for key, layer in tuner_layers(model).items():  # `merged` describes the actual weights
        expected = merged_weights if layer.merged else unmerged_weights
        assert_close(weights[f"{key}.weight"], expected[f"{key}.weight"])


# ---- CORE-LIFE-8…10 ----
def test_delete_errors():
    """CORE-LIFE-8."""
    model = _two_adapters()
    with pytest.raises(ValueError, match="nope"):
        model.delete_adapter("nope")
    model.merge_adapter(["other"])
    with pytest.raises(ValueError, match="other"):
        model.delete_adapter("other")
    assert "other" in model.peft_config and adapter_params(model, "other")


SUBSTRING_NAMES = ["default", "default2", "other_default", "foodefault_bar", "efaul"]


def _many_adapters() -> nn.Module:
    model = adapted(small_net(), ia3(modules_to_save=["head"]))
    for name in SUBSTRING_NAMES[1:]:
        _quiet(model.add_adapter, name, ia3(targets=["q_proj", "fc_out"], modules_to_save=["head"]))
    perturb(model)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if ".modules_to_save." in key:
                param.add_(torch.randn_like(param))
    return model


def _adapter_state(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Every parameter whose in-memory name carries adapter `name` as a whole segment."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if name in k.split(".")}


@pytest.mark.parametrize("victim", SUBSTRING_NAMES)
def test_delete_is_complete_and_spares_the_others(victim, tmp_path):
    """CORE-LIFE-9 with adapter names that are substrings of each other."""
    model = _many_adapters()
    others = {n: _adapter_state(model, n) for n in SUBSTRING_NAMES if n != victim}
    _quiet(model.delete_adapter, victim)
    assert victim not in model.peft_config and _adapter_state(model, victim) == {}
    for layer in tuner_layers(model).values():
        assert victim not in layer.settings and victim not in layer.active_adapters
    for _, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            assert victim not in module.modules_to_save
    for name, state in others.items():
        now = _adapter_state(model, name)
        assert now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items()), name
    model.save_pretrained(tmp_path)
    saved = {p.name for p in tmp_path.iterdir() if p.is_dir()}
    assert saved == {n for n in SUBSTRING_NAMES if n not in (victim, "default")}
    assert (tmp_path / "adapter_config.json").exists() == (victim != "default")


def test_delete_inactive_adapter_leaves_merged_ones_merged():
    """CORE-LIFE-9: every other adapter is unchanged — a merged one stays merged, weights bitwise equal."""
    model = _two_adapters()
    model.merge_adapter(["default"])
    weights = base_snapshot(model)
    _quiet(model.add_adapter, "third", ia3(targets=["fc_in"], feedforward=[]))
    _quiet(model.delete_adapter, "third")
    assert all(layer.merged_adapters == ["default"] for k, layer in tuner_layers(model).items() if k in ADAPTED)
    after = base_snapshot(model)
    assert all(torch.equal(after[k], v) for k, v in weights.items())


def test_deleting_the_active_adapter():
    """CORE-LIFE-10: warns and activates a deterministic remaining adapter, the same on every layer."""
    model = _two_adapters()
    _quiet(model.add_adapter, "third", ia3(targets=["fc_in"], feedforward=[]))
    twin = copy.deepcopy(model)
    with pytest.warns(UserWarning):
        model.delete_adapter("default")
    with pytest.warns(UserWarning):
        twin.delete_adapter("default")
    assert model.active_adapters == twin.active_adapters and len(model.active_adapters) == 1
    chosen = model.active_adapters[0]
    assert chosen in ("other", "third")
    assert all(layer.active_adapters == [chosen] for layer in tuner_layers(model).values())
    _quiet(model.set_adapter, ["other", "third"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.delete_adapter("other")  # the list stays non-empty: no warning
    assert model.active_adapters == ["third"]


# ---- CORE-LIFE-11 ----
def test_deepcopy_and_pickle_round_trips():
    model = _two_adapters(modules_to_save=["head"])
    _quiet(model.set_adapter, ["default", "other"])
    x = inputs()
    expected = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(x), expected)
        assert clone.active_adapters == ["default", "other"]


# ---- CORE-MTS-1/2 ----
def _mts_model() -> tuple[nn.Module, nn.Module]:
    base = small_net()
    original_head = base.head
    model = adapted(base, ia3(modules_to_save=["head"]))
    _quiet(model.add_adapter, "b", ia3(targets=["q_proj"], feedforward=[], modules_to_save=["head"]))
    _quiet(model.add_adapter, "c", ia3(targets=["q_proj"], feedforward=[]))
    with torch.no_grad():
        for name, scale in (("default", 2.0), ("b", -3.0)):
            model.base_model.model.head.modules_to_save[name].weight.mul_(scale)
    return model, original_head


def test_modules_to_save_copies():
    """CORE-MTS-1."""
    model, original = _mts_model()
    wrapper = model.base_model.model.head
    assert isinstance(wrapper, ModulesToSaveWrapper) and wrapper.original_module is original
    assert set(wrapper.modules_to_save) == {"default", "b"}
    assert not any(p.requires_grad for p in original.parameters())
    assert all(p.requires_grad for p in wrapper.modules_to_save["default"].parameters())
    assert not any(p.requires_grad for p in wrapper.modules_to_save["b"].parameters())
    h = torch.randn(2, 8)
    assert torch.equal(wrapper(h), wrapper.modules_to_save["default"](h))
    _quiet(model.set_adapter, "b")
    assert torch.equal(wrapper(h), wrapper.modules_to_save["b"](h))
    with model.disable_adapter():
        assert torch.equal(wrapper(h), original(h))
    _quiet(model.set_adapter, ["c"])
    assert torch.equal(wrapper(h), original(h))
    _quiet(model.set_adapter, ["c", "b"])
    assert torch.equal(wrapper(h), wrapper.modules_to_save["b"](h))
    with pytest.raises(ValueError):
        model.set_adapter(["default", "b"])
    assert model.active_adapters == ["c", "b"] and torch.equal(wrapper(h), wrapper.modules_to_save["b"](h))


@pytest.mark.parametrize("method", ["merge_and_unload", "unload"])
@pytest.mark.parametrize(("active", "owner"), [("default", "default"), ("b", "b"), ("c", None)])
def test_unload_replaces_modules_to_save_wrappers(method, active, owner):
    """CORE-MTS-2."""
    model, original = _mts_model()
    copies = dict(model.base_model.model.head.modules_to_save)
    _quiet(model.set_adapter, active)
    plain = _quiet(getattr(model, method))
    assert plain.head is (original if owner is None else copies[owner])
    assert not any(isinstance(m, (ModulesToSaveWrapper, TunerLayer)) for m in plain.modules())


# ---- CORE-TRAIN-4…6 ----
def test_gradients_only_on_trainables():
    """CORE-TRAIN-4."""
    model = _two_adapters(modules_to_save=["head"])
    model.train()
    model(inputs()).sum().backward()
    for key, param in model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, key


def test_sgd_steps_move_only_trainables():
    """CORE-TRAIN-5: 3 SGD steps change every trainable parameter and no frozen one."""
    model = _two_adapters(modules_to_save=["head"])
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    trainable = _trainable(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = inputs(batch=5)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
    for key, param in model.named_parameters():
        if key in trainable:
            assert not torch.equal(param, before[key]), key
        else:
            assert torch.equal(param, before[key]), key


def test_trainable_count_formula():
    """CORE-TRAIN-6 on SPEC §7.2's tiny Llama (1,280), plus a modules_to_save copy."""
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = IA3Config(target_modules=targets, feedforward_modules=["down_proj"])
    model = adapted(tiny_llama(), config)
    assert model.get_nb_trainable_parameters()[0] == 1280
    total = sum(p.numel() for p in tiny_llama().parameters())
    assert model.get_nb_trainable_parameters()[1] == total + 1280
    formula = sum(
        la.in_features if la.settings["default"].feedforward else la.out_features for la in tuner_layers(model).values()
    )
    assert formula == 1280
    config = IA3Config(target_modules=targets, feedforward_modules=["down_proj"], modules_to_save=["lm_head"])
    model = adapted(tiny_llama(), config)
    assert model.get_nb_trainable_parameters()[0] == 1280 + 64 * 128


# ---- CORE-DTYPE-1/3/4/5 ----
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("autocast", [True, False])
def test_adapter_dtype(dtype, autocast):
    """CORE-DTYPE-1 for get_peft_model and add_adapter."""
    model = adapted(small_net(dtype=dtype), autocast_adapter_dtype=autocast)
    _quiet(model.add_adapter, "other", ia3(targets=["fc_in"], feedforward=[]), autocast_adapter_dtype=autocast)
    expected = torch.float32 if autocast and dtype in (torch.float16, torch.bfloat16) else dtype
    for name in ("default", "other"):
        params = adapter_params(model, name)
        assert params and all(p.dtype == expected and p.device.type == "cpu" for p in params.values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("autocast", [True, False])
def test_half_precision_bases_work(dtype, autocast):
    """CORE-DTYPE-3 on tiny Llama: forward, backward, (safe) merge, unmerge, merge_and_unload are finite."""
    targets = ["q_proj", "v_proj", "down_proj"]
    config = IA3Config(target_modules=targets, feedforward_modules=["down_proj"], init_ia3_weights=False)
    model = adapted(tiny_llama().to(dtype), config, autocast_adapter_dtype=autocast)
    ids = token_batch(128)
    out = model(ids).logits
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    grads = [p.grad for p in adapter_params(model, "default").values()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    model.merge_adapter(safe_merge=True)
    merged = model(ids).logits
    assert torch.isfinite(merged).all()
    torch.testing.assert_close(merged.float(), out.float(), rtol=5e-2, atol=5e-2 * max(1.0, out.abs().max().item()))
    _quiet(model.unmerge_adapter)
    plain = _quiet(model.merge_and_unload, safe_merge=True)
    assert all(p.dtype == dtype for p in plain.parameters()) and torch.isfinite(plain(ids).logits).all()


def test_float64_end_to_end():
    """CORE-DTYPE-4."""
    model = adapted(small_net(dtype=torch.float64), ia3(modules_to_save=["head"]))
    perturb(model)
    x = inputs(dtype=torch.float64)
    out = model(x)
    assert out.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in model.parameters())
    model.merge_adapter()
    assert_close(model(x), out)
    plain = _quiet(model.merge_and_unload)
    assert all(p.dtype == torch.float64 for p in plain.parameters()) and plain(x).dtype == torch.float64


def test_to_moves_adapters():
    """CORE-DTYPE-5 (dtype; the device half runs where an accelerator is present)."""
    model = adapted(small_net(), ia3(modules_to_save=["head"]))
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(inputs(dtype=torch.float64)).dtype == torch.float64
    model.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in adapter_params(model, "default").values())
    if torch.cuda.is_available():
        model.to("cuda")
        assert all(p.device.type == "cuda" for p in model.parameters())
        _quiet(model.add_adapter, "other", ia3(targets=["fc_in"], feedforward=[]))
        assert all(p.device.type == "cuda" for p in adapter_params(model, "other").values())


def test_modules_to_save_nested_entries():
    """CORE-MTS-1: an entry naming a module inside another entry's module adds no second (nested) wrapper."""
    model = adapted(small_net(), ia3(targets=["head"], feedforward=[], modules_to_save=["layers.0", "mlp"]))
    wrappers = {k.removeprefix("base_model.model."): m for k, m in model.named_modules()}
    wrappers = {k: m for k, m in wrappers.items() if isinstance(m, ModulesToSaveWrapper)}
    assert set(wrappers) == {"layers.0", "layers.1.mlp"}
    for wrapper in wrappers.values():
        assert not any(isinstance(m, ModulesToSaveWrapper) for m in list(wrapper.modules())[1:])
    copies = {k for k, _ in model.named_parameters() if ".modules_to_save.default." in k}
    assert _trainable(model) == set(adapter_params(model, "default")) | copies
    assert {k.split(".modules_to_save.")[0] for k in copies} == {
        "base_model.model.layers.0",
        "base_model.model.layers.1.mlp",
    }


def test_modules_to_save_over_adapted_layers_rejected():
    """A later adapter's modules_to_save module holding an earlier adapter's layers would hide them."""
    model = adapted(small_net())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"layers\.0"):
        _quiet(model.add_adapter, "other", ia3(targets=["head"], feedforward=[], modules_to_save=["layers.0"]))
    assert list(model.peft_config) == ["default"] and set(tuner_layers(model)) == ADAPTED
    assert model.state_dict().keys() == before.keys()
