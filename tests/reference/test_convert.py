"""`convert_checkpoint` (SPEC §2.9, MISS-CONV-1/2): Bone ↔ MiSS adapter directories. peft 0.21.2 has no Bone, so a
reference Bone checkpoint reaches peft as MiSS through MISS-CONV-1, and peft's MiSS checkpoints come back as Bone
through MISS-CONV-2 (optional capability `miss.to_bone`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from reference_tuners import PeftModel, get_peft_model
from reference_tuners.bone import BoneConfig, MissConfig
from reference_tuners.convert import convert_checkpoint

F64 = torch.float64
VARIANTS = {
    "plain": dict(r=3, init_weights=False),
    "zero": dict(r=3, init_weights=True),
    "bat": dict(r=2, init_weights="bat"),
}
TARGETS = ["lin0", "lin1"]

pytestmark = pytest.mark.filterwarnings(
    "ignore:Bone is deprecated:FutureWarning",
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",  # transformers, through peft
)


class Net(nn.Module):
    """in % r ≠ 0 for r = 3 (lin0: 8), a layer without bias, and a module whose name starts with "bone_"."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(8, 12)
        self.lin1 = nn.Linear(12, 6, bias=False)
        self.bone_head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bone_head(self.lin1(torch.tanh(self.lin0(x))))


X = torch.rand(2, 3, 8, generator=torch.Generator().manual_seed(0), dtype=F64) * 2 - 1


def _net() -> Net:
    torch.manual_seed(0)
    return Net().double()


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Block parameters by in-memory name with the tuner prefix unified, so Bone and MiSS models compare."""
    return {k.replace(".bone_block.", ".block."): v for k, v in model.named_parameters() if "_block." in k}


def _perturb(model: nn.Module, seed: int) -> None:
    """Blocks U(±0.8/r) (BAT: cond(I + B[p]) ≤ 9) or U(±1), so that outputs depend on every entry."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in _adapter_tensors(model).values():
            bound = 0.8 / p.shape[-1] if p.dim() == 3 else 1.0
            p.copy_((torch.rand(p.shape, generator=gen, dtype=F64) * 2 - 1) * bound)


def _read(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config = json.loads((directory / "adapter_config.json").read_text())
    if (directory / "adapter_model.safetensors").is_file():
        return config, load_file(directory / "adapter_model.safetensors")
    return config, torch.load(directory / "adapter_model.bin", weights_only=True)


def _bone_checkpoint(directory: Path, variant: str, safe: bool = True, **extra) -> PeftModel:
    model = get_peft_model(_net(), BoneConfig(target_modules=TARGETS, **VARIANTS[variant], **extra))
    _perturb(model, seed=1)
    model.save_pretrained(directory, safe_serialization=safe)
    return model


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_bone_checkpoint_reaches_peft_as_miss(variant: str, safe: bool, tmp_path: Path) -> None:
    """MISS-CONV-1 (⟨Z⟩): keys `.bone_block` → `.miss_block`, the tensors bitwise, `peft_type` "MISS", every other
    field kept, `miss_dropout: 0.0` and `mini_r: 1` added, the file format kept. Loaded as MiSS — by peft 0.21.2 and
    by the reference — the blocks are bitwise equal to the Bone adapter's; the reference's outputs are bitwise
    equal, peft's within ⟨N⟩ (CORE-SAVE-10)."""
    bone = _bone_checkpoint(tmp_path / "bone", variant, safe)
    convert_checkpoint(tmp_path / "bone", tmp_path / "miss", to="MISS")
    (bone_config, bone_tensors), (miss_config, miss_tensors) = _read(tmp_path / "bone"), _read(tmp_path / "miss")
    weights = "adapter_model.safetensors" if safe else "adapter_model.bin"
    assert sorted(p.name for p in (tmp_path / "miss").iterdir()) == sorted(["adapter_config.json", weights])
    assert miss_config == {**bone_config, "peft_type": "MISS", "miss_dropout": 0.0, "mini_r": 1}
    assert miss_tensors.keys() == {k.replace(".bone_block", ".miss_block") for k in bone_tensors}
    for key, tensor in bone_tensors.items():
        converted = miss_tensors[key.replace(".bone_block", ".miss_block")]
        assert converted.dtype == tensor.dtype and torch.equal(converted, tensor), key

    theirs = peft.PeftModel.from_pretrained(_net(), tmp_path / "miss")
    ours = PeftModel.from_pretrained(_net(), tmp_path / "miss")
    assert isinstance(ours.peft_config["default"], MissConfig)
    expected = _adapter_tensors(bone)
    for model in (theirs, ours):
        loaded = {k.replace(".miss_block.", ".block."): v for k, v in _adapter_tensors(model).items()}
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    with torch.no_grad():
        y = bone(X)
        assert torch.equal(ours(X), y)
        torch.testing.assert_close(theirs(X), y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant", VARIANTS)
def test_peft_miss_checkpoint_comes_back_as_bone(variant: str, tmp_path: Path) -> None:
    """MISS-CONV-2 (⟨Z⟩, optional `miss.to_bone`): peft's MiSS directory → `peft_type` "BONE", `mini_r` and
    `miss_dropout` dropped, other fields kept, keys renamed; the reference loads it as Bone with bitwise-equal blocks
    and peft's outputs (⟨N⟩)."""
    theirs = peft.get_peft_model(_net(), peft.MissConfig(target_modules=TARGETS, **VARIANTS[variant]))
    _perturb(theirs, seed=2)
    theirs.save_pretrained(tmp_path / "miss")
    convert_checkpoint(tmp_path / "miss", tmp_path / "bone", to="BONE")
    (miss_config, miss_tensors), (bone_config, bone_tensors) = _read(tmp_path / "miss"), _read(tmp_path / "bone")
    expected_config = {k: v for k, v in miss_config.items() if k not in ("mini_r", "miss_dropout")}
    assert bone_config == {**expected_config, "peft_type": "BONE"}
    assert bone_tensors.keys() == {k.replace(".miss_block", ".bone_block") for k in miss_tensors}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft writes config keys SPEC's table does not have
        ours = PeftModel.from_pretrained(_net(), tmp_path / "bone")
    assert isinstance(ours.peft_config["default"], BoneConfig)
    loaded, expected = (
        _adapter_tensors(ours),
        {k.replace(".miss_block.", ".block."): v for k, v in _adapter_tensors(theirs).items()},
    )
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    with torch.no_grad():
        torch.testing.assert_close(ours(X), theirs(X), rtol=1e-9, atol=1e-9)


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    """MISS-CONV-1 then MISS-CONV-2 gives the original directory back: config and tensors (bitwise), incl. the
    biases of `bias="bone_only"` (`<key>.base_layer.bias`) and a `modules_to_save` module named `bone_head`, whose
    key keeps its name (only `.bone_block` keys are renamed), and which peft and the reference load as MiSS."""
    bone = _bone_checkpoint(tmp_path / "bone", "plain", bias="bone_only", modules_to_save=["bone_head"])
    convert_checkpoint(tmp_path / "bone", tmp_path / "miss")
    convert_checkpoint(tmp_path / "miss", tmp_path / "back", to="BONE")
    (config, tensors), (back_config, back_tensors) = _read(tmp_path / "bone"), _read(tmp_path / "back")
    assert back_config == config
    assert back_tensors.keys() == tensors.keys()
    assert all(torch.equal(back_tensors[k], v) for k, v in tensors.items())
    miss_keys = set(_read(tmp_path / "miss")[1])
    assert {"base_model.model.bone_head.weight", "base_model.model.lin0.base_layer.bias"} <= miss_keys
    with torch.no_grad():
        y = bone(X)
        for loader in (peft.PeftModel.from_pretrained, PeftModel.from_pretrained):
            torch.testing.assert_close(loader(_net(), tmp_path / "miss")(X), y, rtol=1e-9, atol=1e-9)


def test_dropout_is_dropped_with_a_warning(tmp_path: Path) -> None:
    """MISS-CONV-2: `miss_dropout > 0` warns that training-time dropout is dropped; 0 does not warn."""
    for dropout, name in ((0.25, "with"), (0.0, "without")):
        model = get_peft_model(_net(), MissConfig(target_modules=TARGETS, r=2, miss_dropout=dropout))
        model.save_pretrained(tmp_path / name)
    with pytest.warns(UserWarning, match="miss_dropout"):
        convert_checkpoint(tmp_path / "with", tmp_path / "with_bone", to="BONE")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_checkpoint(tmp_path / "without", tmp_path / "without_bone", to="BONE")
    assert "miss_dropout" not in _read(tmp_path / "with_bone")[0]


def test_mini_has_no_bone_form(tmp_path: Path) -> None:
    """MISS-CONV-2: `init_weights="mini"` is rejected with ValueError naming `init_weights`; nothing is written."""
    get_peft_model(_net(), MissConfig(target_modules=TARGETS, r=2, init_weights="mini", mini_r=2)).save_pretrained(
        tmp_path / "mini"
    )
    with pytest.raises(ValueError, match="init_weights"):
        convert_checkpoint(tmp_path / "mini", tmp_path / "out", to="BONE")
    assert not (tmp_path / "out").exists()


def test_errors(tmp_path: Path) -> None:
    """Clear errors, raised before anything is written: an unknown target type (naming `to`), a source of the wrong
    type (naming its peft_type), a missing config or weights file, and a destination holding the other file format
    (which loaders would read instead)."""
    _bone_checkpoint(tmp_path / "bone", "zero")
    with pytest.raises(ValueError, match="LORA"):
        convert_checkpoint(tmp_path / "bone", tmp_path / "out", to="LORA")
    with pytest.raises(ValueError, match="BONE"):
        convert_checkpoint(tmp_path / "bone", tmp_path / "out", to="BONE")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "adapter_config.json").write_text(json.dumps({"peft_type": "LOHA"}))
    with pytest.raises(ValueError, match="LOHA"):
        convert_checkpoint(tmp_path / "other", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        convert_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "adapter_config.json").write_text(json.dumps({"peft_type": "BONE"}))
    with pytest.raises(FileNotFoundError, match="adapter_model"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "adapter_model.bin").write_bytes(b"stale")
    with pytest.raises(FileExistsError, match=r"adapter_model\.bin"):
        convert_checkpoint(tmp_path / "bone", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter_model.bin"]
