"""CORE-SAVE-1…10: PEFT-format files through IA3, including a round trip with huggingface/peft."""

from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_core_support import adapted, adapter_params, assert_close, ia3, inputs, perturb, small_net, tuner_layers
from tiny_models import tiny_gpt2, tiny_llama, token_batch
from torch import nn

from reference_tuners import IA3Config, PeftModel, TunerLayer

SAFE, BIN, CONFIG = "adapter_model.safetensors", "adapter_model.bin", "adapter_config.json"
SUBSTRING_NAMES = ["default", "default2", "other_default", "foodefault_bar", "efaul"]
KEYS = {f"base_model.model.layers.{i}.{n}.ia3_l" for i in range(2) for n in ("q_proj", "v_proj", "mlp.fc_out")}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _saved(model: nn.Module, name: str = "default", autocast: bool = True, **kwargs) -> nn.Module:
    """`model` with a perturbed adapter `name` and a perturbed modules_to_save copy of `head`."""
    model = adapted(model, ia3(modules_to_save=["head"], **kwargs), name=name, autocast_adapter_dtype=autocast)
    perturb(model)
    with torch.no_grad():
        model.base_model.model.head.modules_to_save[name].weight.mul_(-2.0)
    return model


def _live(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """What adapter `name`'s file must hold, read from in-memory names (SPEC 0.6 / CORE-SAVE-2/3)."""
    out = {}
    for key, param in model.named_parameters():
        segments = key.split(".")
        if ".ia3_l." in key and segments[-1] == name:
            out[".".join(segments[:-1])] = param.detach()
        elif ".modules_to_save." in key and segments[segments.index("modules_to_save") + 1] == name:
            i = segments.index("modules_to_save")
            out[".".join(segments[:i] + segments[i + 2 :])] = param.detach()
    return out


# ---- CORE-SAVE-1…4, 9 ----
def test_directories_and_files(tmp_path):
    """CORE-SAVE-1: `default` in the directory, others in sub-folders; selected_adapters."""
    model = _saved(small_net())
    _quiet(model.add_adapter, "second", ia3(targets=["fc_in"], feedforward=[]))
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {CONFIG, SAFE, "second"}
    assert {p.name for p in (tmp_path / "second").iterdir()} == {CONFIG, SAFE}
    model.save_pretrained(tmp_path / "only", selected_adapters=["second"])
    assert {p.name for p in (tmp_path / "only").iterdir()} == {"second"}
    with pytest.raises(ValueError, match="nope"):
        model.save_pretrained(tmp_path / "bad", selected_adapters=["nope"])


def test_key_naming(tmp_path):
    """CORE-SAVE-2/3, IA3-SAVE-1: `base_model.model.<key>.ia3_l`, modules_to_save `<key>.<param>`, no adapter name."""
    model = _saved(small_net(), name="zz_name")
    model.save_pretrained(tmp_path, selected_adapters=["zz_name"])
    tensors = load_file(tmp_path / "zz_name" / SAFE)
    assert set(tensors) == KEYS | {"base_model.model.head.weight", "base_model.model.head.bias"}
    assert not any("zz_name" in key for key in tensors)


def test_each_file_holds_exactly_its_adapter(tmp_path):
    """CORE-SAVE-3 with adapter names that are substrings of each other."""
    model = _saved(small_net())
    for name in SUBSTRING_NAMES[1:]:
        _quiet(model.add_adapter, name, ia3(targets=["q_proj", "fc_out"], modules_to_save=["head"]))
    _quiet(model.add_adapter, "no_mts", ia3(targets=["fc_in"], feedforward=[]))
    perturb(model, seed=3)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if ".modules_to_save." in key:
                param.add_(torch.randn_like(param))
    model.save_pretrained(tmp_path)
    for name in [*SUBSTRING_NAMES, "no_mts"]:
        tensors = load_file((tmp_path if name == "default" else tmp_path / name) / SAFE)
        live = _live(model, name)
        assert set(tensors) == set(live), name
        assert all(torch.equal(tensors[k], v) for k, v in live.items()), name


def test_adapter_config_json(tmp_path):
    """CORE-SAVE-4."""
    model = _saved(small_net(), init_ia3_weights=False)
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / CONFIG).read_text())
    assert data["inference_mode"] is True and data["peft_type"] == "IA3"
    assert sorted(data["target_modules"]) == ["fc_out", "q_proj", "v_proj"]
    assert data["feedforward_modules"] == ["fc_out"]
    assert data["modules_to_save"] == ["head"] and data["init_ia3_weights"] is False
    assert data["auto_mapping"] == {"base_model_class": "SmallNet", "parent_library": "test_core_support"}
    assert model.peft_config["default"].inference_mode is False  # the live config is unchanged
    config = IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj"], feedforward_modules=[])
    adapted(tiny_llama(), config).save_pretrained(tmp_path / "llama")
    data = json.loads((tmp_path / "llama" / CONFIG).read_text())
    assert data["task_type"] == "CAUSAL_LM" and data["target_modules"] == ["k_proj"]


@pytest.mark.parametrize(
    ("dtype", "autocast", "saved"),
    [
        (torch.float16, True, torch.float32),
        (torch.bfloat16, True, torch.float32),
        (torch.float16, False, torch.float16),
        (torch.float64, True, torch.float64),
    ],
)
def test_saved_dtype(tmp_path, dtype, autocast, saved):
    """CORE-SAVE-9: the adapter's dtype (modules_to_save copies keep the base dtype)."""
    model = _quiet(_saved, small_net(dtype=dtype), autocast=autocast)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / SAFE)
    for key, tensor in tensors.items():
        assert tensor.dtype == (saved if key.endswith(".ia3_l") else dtype), key


def test_bin_files_contiguous_and_unshared(tmp_path):
    """CORE-SAVE-1 (safe_serialization=False), CORE-SAVE-9 on a non-contiguous modules_to_save copy."""
    model = _saved(small_net())
    copy_ = model.base_model.model.head.modules_to_save["default"]
    copy_.weight = nn.Parameter(copy_.weight.detach().t().contiguous().t())
    assert not copy_.weight.is_contiguous()
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert {p.name for p in tmp_path.iterdir()} == {CONFIG, BIN}
    tensors = torch.load(tmp_path / BIN, weights_only=True)
    assert set(tensors) == set(_live(model, "default"))
    storages = set()
    for key, tensor in tensors.items():
        assert tensor.is_contiguous(), key
        storage = tensor.untyped_storage()
        assert storage.nbytes() == tensor.numel() * tensor.element_size(), key
        storages.add(storage.data_ptr())
    assert len(storages) == len(tensors)
    loaded = PeftModel.from_pretrained(small_net(), tmp_path)
    back = _live(loaded, "default")
    assert all(torch.equal(back[k], v) for k, v in _live(model, "default").items())


# ---- CORE-SAVE-5, 7, 8 ----
@pytest.mark.parametrize("is_trainable", [False, True])
def test_round_trip_into_a_fresh_model(tmp_path, is_trainable):
    """CORE-SAVE-5/7: bitwise parameters and outputs whatever the RNG state; trainable only if asked."""
    model = _saved(small_net(), init_ia3_weights=False)
    model.save_pretrained(tmp_path)
    torch.manual_seed(1234)
    loaded = PeftModel.from_pretrained(small_net(), tmp_path, is_trainable=is_trainable)
    live, back = _live(model, "default"), _live(loaded, "default")
    assert set(live) == set(back) and all(torch.equal(back[k], v) for k, v in live.items())
    x = inputs()
    assert torch.equal(loaded(x), model(x))
    trainable = {k for k, p in loaded.named_parameters() if p.requires_grad}
    if is_trainable:
        assert trainable and trainable == set(adapter_params(loaded, "default")) | {
            k for k in dict(loaded.named_parameters()) if ".modules_to_save.default." in k
        }
    else:
        assert trainable == set() and loaded.peft_config["default"].inference_mode


def test_all_linear_round_trip(tmp_path):
    """CORE-SAVE-5 for "all-linear": the saved (expanded) targets adapt the same modules again."""
    config = IA3Config(target_modules="all-linear", feedforward_modules=[], init_ia3_weights=False)
    model = adapted(tiny_llama(), config)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert set(tuner_layers(loaded)) == set(tuner_layers(model)) and len(tuner_layers(model)) == 14
    ids = token_batch(128)
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_load_adapter_adds_it_inactive(tmp_path):
    """CORE-SAVE-8."""
    saved = _saved(small_net())
    saved.save_pretrained(tmp_path)
    x = inputs()
    expected = saved(x)
    model = adapted(small_net(), ia3(targets=["fc_in"], feedforward=[]), name="mine")
    before = model(x)
    model.load_adapter(tmp_path, "loaded")
    assert model.active_adapters == ["mine"] and torch.equal(model(x), before)
    assert not any(p.requires_grad for p in adapter_params(model, "loaded").values())
    _quiet(model.set_adapter, "loaded")
    assert torch.equal(model(x), expected)
    model.load_adapter(tmp_path, "trainable_copy", is_trainable=True)
    _quiet(model.set_adapter, "trainable_copy")
    assert all(p.requires_grad for p in adapter_params(model, "trainable_copy").values())


# ---- CORE-SAVE-6 and foreign checkpoints ----
def _rewrite(directory, change) -> None:
    tensors = load_file(directory / SAFE)
    change(tensors)
    save_file(tensors, directory / SAFE)


def test_missing_and_unexpected_keys_warn(tmp_path):
    """CORE-SAVE-6: missing keys warn listing them; a tensor the model cannot use is not dropped silently."""
    model = _saved(small_net())
    model.save_pretrained(tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("base_model.model.layers.1.v_proj.ia3_l"))
    with pytest.warns(UserWarning, match=r"layers\.1\.v_proj\.ia3_l"):
        loaded = PeftModel.from_pretrained(small_net(), tmp_path, adapter_name="renamed")
    assert loaded.active_adapters == ["renamed"]
    _rewrite(tmp_path, lambda t: t.update({"base_model.model.embed.ia3_l": torch.ones(8, 1)}))
    with pytest.warns(UserWarning, match=r"embed\.ia3_l"):
        PeftModel.from_pretrained(small_net(), tmp_path)
    live = _live(loaded, "renamed")
    assert torch.equal(
        live["base_model.model.layers.0.v_proj.ia3_l"],
        _live(model, "default")["base_model.model.layers.0.v_proj.ia3_l"],
    )


def test_wrong_shape_is_a_clear_error_and_the_model_stays_usable(tmp_path):
    model = _saved(small_net())
    model.save_pretrained(tmp_path)
    key = "base_model.model.layers.0.q_proj.ia3_l"
    _rewrite(tmp_path, lambda t: t.update({key: torch.ones(5, 1)}))
    base = small_net()
    x = inputs()
    reference = base(x)
    with pytest.raises(Exception, match=r"layers\.0\.q_proj\.ia3_l") as info:
        PeftModel.from_pretrained(base, tmp_path)
    assert "(5, 1)" in str(info.value) and "(8, 1)" in str(info.value)
    assert not any(isinstance(m, TunerLayer) for m in base.modules()) and torch.equal(base(x), reference)
    target = adapted(small_net(), ia3(targets=["fc_in"], feedforward=[]), name="mine")
    before = target(x)
    with pytest.raises(Exception, match=r"layers\.0\.q_proj\.ia3_l"):
        target.load_adapter(tmp_path, "broken")
    assert list(target.peft_config) == ["mine"] and not adapter_params(target, "broken")
    assert torch.equal(target(x), before)
    _quiet(target.add_adapter, "broken", ia3())  # the name is free again


def test_checkpoint_of_another_tuner_is_rejected(tmp_path):
    """A peft LoRA directory (unknown peft_type) and IA3 config with another tuner's tensors."""
    lora = peft.get_peft_model(small_net(), peft.LoraConfig(target_modules=["q_proj"], r=2))
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises((ValueError, KeyError), match="LORA"):
        _quiet(PeftModel.from_pretrained, small_net(), tmp_path / "lora")
    _saved(small_net()).save_pretrained(tmp_path / "ia3")
    (tmp_path / "ia3" / SAFE).write_bytes((tmp_path / "lora" / SAFE).read_bytes())
    base = small_net()
    with pytest.raises(ValueError, match="lora_A"):
        _quiet(PeftModel.from_pretrained, base, tmp_path / "ia3")
    assert not any(isinstance(m, TunerLayer) for m in base.modules())


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    adapted(tiny_gpt2(), IA3Config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="c_attn"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path)


# ---- CORE-SAVE-10: interchange with huggingface/peft ----
LLAMA_TARGETS = ["k_proj", "v_proj", "down_proj"]


def _perturb_lm_head(model: nn.Module) -> None:
    with torch.no_grad():
        for key, param in model.named_parameters():
            if ".modules_to_save." in key:
                param.mul_(-1.5)


def test_reference_checkpoint_loads_in_peft(tmp_path):
    ours = adapted(
        tiny_llama(),
        IA3Config(target_modules=LLAMA_TARGETS, feedforward_modules=["down_proj"], modules_to_save=["lm_head"]),
    )
    perturb(ours)
    _perturb_lm_head(ours)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert isinstance(theirs.peft_config["default"], peft.IA3Config)
    mine, other = _live(ours, "default"), peft.get_peft_model_state_dict(theirs)
    assert set(mine) == set(other) and all(torch.equal(other[k], v) for k, v in mine.items())
    ids = token_batch(128)
    assert_close(theirs(ids).logits, ours(ids).logits)


def test_peft_checkpoint_loads_in_reference(tmp_path):
    config = peft.IA3Config(
        target_modules=LLAMA_TARGETS, feedforward_modules=["down_proj"], modules_to_save=["lm_head"]
    )
    theirs = peft.get_peft_model(tiny_llama(), config)
    perturb(theirs)
    _perturb_lm_head(theirs)
    theirs.save_pretrained(tmp_path)
    ours = _quiet(PeftModel.from_pretrained, tiny_llama(), tmp_path)
    assert type(ours.peft_config["default"]) is IA3Config
    assert {k for k in tuner_layers(ours)} == {
        k for k, _ in tiny_llama().named_modules() if k.rsplit(".", 1)[-1] in LLAMA_TARGETS
    }
    mine, other = _live(ours, "default"), peft.get_peft_model_state_dict(theirs)
    assert set(mine) == set(other) and all(torch.equal(mine[k], v) for k, v in other.items())
    ids = token_batch(128)
    assert_close(ours(ids).logits, theirs(ids).logits)
