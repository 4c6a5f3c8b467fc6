"""The built-in driver for this project's `reference_tuners` (a PEFT-like API, names equal to SPEC's)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

import reference_tuners
from reference_tuners import TunerLayer

from .base import Capabilities, Case, PeftLikeDriver, TunerCapabilities

_LINEAR = frozenset({"linear"})


class ReferenceDriver(PeftLikeDriver):
    name = "reference"
    library = reference_tuners
    tuner_layer_class = TunerLayer
    config_classes: ClassVar[dict[str, type]] = {
        "bone": reference_tuners.BoneConfig,
        "miss": reference_tuners.MissConfig,
        "gralora": reference_tuners.GraLoRAConfig,
        "hra": reference_tuners.HRAConfig,
        "ia3": reference_tuners.IA3Config,
        "loha": reference_tuners.LoHaConfig,
    }

    def version(self) -> str:
        return reference_tuners.__version__

    def capabilities(self) -> Capabilities:
        block = dict(layer_kinds=_LINEAR | {"hf_conv1d"})
        return Capabilities(
            tuners={
                "bone": TunerCapabilities(
                    variants=frozenset({"plain", "bat", "mixed"}),
                    optional=frozenset({"bone.hf_conv1d", "files.bin"}),
                    **block,
                ),
                "miss": TunerCapabilities(
                    variants=frozenset({"plain", "bat", "mini", "mixed"}),
                    optional=frozenset({"miss.hf_conv1d", "miss.to_bone", "files.bin"}),
                    **block,
                ),
                "gralora": TunerCapabilities(
                    variants=frozenset({"plain", "hybrid"}),
                    layer_kinds=_LINEAR | {"hf_conv1d"},
                    optional=frozenset({"files.bin"}),
                ),
                "hra": TunerCapabilities(
                    variants=frozenset({"plain", "gs"}),
                    layer_kinds=frozenset({"linear", "conv2d"}),
                    optional=frozenset({"hra.grouped_conv2d", "files.bin"}),
                ),
                "ia3": TunerCapabilities(
                    variants=frozenset({"plain", "feedforward", "mixed"}),
                    layer_kinds=frozenset({"linear", "hf_conv1d", "conv1d", "conv2d", "conv3d"}),
                    optional=frozenset({"ia3.conv1d", "ia3.weighted_adapter", "files.bin"}),
                ),
                "loha": TunerCapabilities(
                    variants=frozenset({"plain", "effective_conv"}),
                    layer_kinds=frozenset({"linear", "hf_conv1d", "conv1d", "conv2d", "conv3d"}),
                    optional=frozenset({"loha.conv3d", "loha.hf_conv1d", "loha.scale_layer", "files.bin"}),
                ),
            }
        )

    def call_optional(self, model: nn.Module, capability_id: str, **kw: Any) -> Any:
        """`ia3.weighted_adapter`: model.add_weighted_adapter(adapters, weights, adapter_name);
        `loha.scale_layer`: `method` ∈ scale_layer/unscale_layer/set_scale called on every LoHa layer."""
        if capability_id == "ia3.weighted_adapter":
            return model.add_weighted_adapter(kw["adapters"], kw["weights"], kw["adapter_name"])
        if capability_id == "loha.scale_layer":
            method = kw.pop("method")
            for _, layer in self._layers(model):
                getattr(layer, method)(*kw.get("args", ()))
            return None
        raise NotImplementedError(f"{self.name} has no optional capability {capability_id!r}")

    def convert_checkpoint(self, src_dir: str, dst_dir: str, to: str) -> None:
        reference_tuners.convert_checkpoint(src_dir, dst_dir, to=to)

    def repro(self, case: Case) -> str | None:
        """The failing case as a runnable snippet in reference_tuners' own API: the base model and input, the
        adapters by `get_peft_model` / `add_adapter`, the recorded driver calls as comments, then the output."""
        lines = [case.model_code, "import reference_tuners as rt", f"torch.manual_seed({case.seed})"]
        for i, (adapter, config) in enumerate(case.configs.items()):
            config_code = f"rt.{self.config_classes[case.tuner].__name__}(**{config!r})"
            if i == 0:
                lines.append(f"model = rt.get_peft_model(model, {config_code}, adapter_name={adapter!r})")
            else:
                lines.append(f"model.add_adapter({adapter!r}, {config_code})")
        lines += [f"# {call}" for call in case.calls]
        if case.input_shapes:
            lines.append("print(model(x))")
        lines += [f"# {label}: {value}" for label, value in (("expected", case.expected), ("observed", case.observed))
                  if value is not None]  # fmt: skip
        return "\n".join(lines)
