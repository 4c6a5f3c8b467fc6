"""The built-in driver for HuggingFace `peft` 0.21.x.

Names and layouts only (DESIGN "Driver protocol"): peft's config classes take SPEC's canonical fields under the
same names, its adapter parameters carry the canonical names and layouts, and every option stays at peft's
default. `miss`, `gralora`, `hra`, `ia3` and `loha` are native; `bone` is not (peft 0.21 has no Bone tuner): only
the conversion clauses are judged for it (MISS-CONV-1 through `load(..., convert=True)`, MISS-CONV-3 on peft's own
loader), and Bone's math rows are `skip` "same code path as miss". The capabilities below are what peft's code
accepts (its `_create_new_module` dispatch), not what passes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import peft
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .base import Capabilities, Case, PeftLikeDriver, TunerCapabilities


class PeftDriver(PeftLikeDriver):
    name = "peft"
    library = peft
    tuner_layer_class = BaseTunerLayer
    config_classes: ClassVar[dict[str, type]] = {
        "miss": peft.MissConfig,
        "gralora": peft.GraloraConfig,
        "hra": peft.HRAConfig,
        "ia3": peft.IA3Config,
        "loha": peft.LoHaConfig,
    }
    api_map: ClassVar[dict[str, str]] = {
        **PeftLikeDriver.api_map,
        "ia3.weighted_adapter": "PeftModel.add_weighted_adapter(adapters, weights, adapter_name)",
        "loha.scale_layer": "LoHaLayer.scale_layer(f) / unscale_layer(f) / set_scale(adapter, f) on every LoHa layer",
    }

    def version(self) -> str:
        return peft.__version__

    def capabilities(self) -> Capabilities:
        files = frozenset({"files.bin"})
        linear = frozenset({"linear"})
        return Capabilities(
            tuners={
                "bone": TunerCapabilities(native=False, variants=frozenset({"plain", "bat", "mixed"}),
                                          layer_kinds=linear),
                "miss": TunerCapabilities(
                    variants=frozenset({"plain", "bat", "mini", "mixed"}), layer_kinds=linear, optional=files
                ),
                "gralora": TunerCapabilities(
                    variants=frozenset({"plain", "hybrid"}), layer_kinds=frozenset({"linear", "hf_conv1d"}),
                    optional=files,
                ),
                "hra": TunerCapabilities(
                    variants=frozenset({"plain", "gs"}), layer_kinds=frozenset({"linear", "conv2d"}), optional=files
                ),
                "ia3": TunerCapabilities(
                    variants=frozenset({"plain", "feedforward", "mixed"}),
                    layer_kinds=frozenset({"linear", "hf_conv1d", "conv2d", "conv3d"}),
                    optional=files | {"ia3.weighted_adapter"},
                ),
                "loha": TunerCapabilities(
                    variants=frozenset({"plain", "effective_conv"}),
                    layer_kinds=frozenset({"linear", "conv1d", "conv2d"}),
                    optional=files | {"loha.scale_layer"},
                ),
            }
        )  # fmt: skip

    def call_optional(self, model: nn.Module, capability_id: str, **kw: Any) -> Any:
        if capability_id == "ia3.weighted_adapter":
            return model.add_weighted_adapter(kw["adapters"], kw["weights"], kw["adapter_name"])
        if capability_id == "loha.scale_layer":
            method = kw.pop("method")
            for _, layer in self._layers(model):
                getattr(layer, method)(*kw.get("args", ()))
            return None
        raise NotImplementedError(f"{self.name} has no optional capability {capability_id!r}")

    def convert_checkpoint(self, src_dir: str, dst_dir: str, to: str) -> None:
        raise NotImplementedError("peft 0.21 has no Bone ↔ MiSS checkpoint conversion")

    def repro(self, case: Case) -> str | None:
        """The failing case in peft's public API: the base model and input, `get_peft_model` / `add_adapter`, the
        recorded calls, then the output."""
        lines = [case.model_code, "import peft", f"torch.manual_seed({case.seed})"]
        for i, (adapter, config) in enumerate(case.configs.items()):
            config_code = f"peft.{self.config_classes[case.tuner].__name__}(**{config!r})"
            if i == 0:
                lines.append(f"model = peft.get_peft_model(model, {config_code}, adapter_name={adapter!r})")
            else:
                lines.append(f"model.add_adapter({adapter!r}, {config_code})")
        lines += [f"# {call}" for call in case.calls]
        if case.input_shapes:
            lines.append("print(model(x))")
        lines += [f"# {label}: {value}" for label, value in (("expected", case.expected), ("observed", case.observed))
                  if value is not None]  # fmt: skip
        return "\n".join(lines)
