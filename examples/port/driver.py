"""tinyia3's conformance driver: names and layouts only, surface `layers` (see README.md)."""

from typing import Any, ClassVar

from torch import nn

from conformance.drivers.base import Capabilities, Case, PeftLikeDriver, TunerCapabilities
from examples.port import tinyia3


class PortDriver(PeftLikeDriver):
    name = "tinyia3"
    config_classes: ClassVar[dict[str, type]] = {"ia3": tinyia3.IA3Config}
    tuner_layer_class = tinyia3.ScaledLayer
    # tinyia3's merge functions take the protocol's arguments (model, adapters, safe): bound as they are
    merge = staticmethod(tinyia3.merge)
    unmerge = staticmethod(tinyia3.unmerge)
    merge_and_unload = staticmethod(tinyia3.merge_and_unload)
    api_map: ClassVar = {op: f"tinyia3.{op}(…)" for op in ("adapt", "merge", "unmerge", "merge_and_unload")}

    def version(self) -> str:
        return tinyia3.__version__

    def capabilities(self) -> Capabilities:
        ia3 = TunerCapabilities(
            variants=frozenset({"plain", "feedforward"}),
            layer_kinds=frozenset({"linear", "hf_conv1d", "conv1d", "conv2d", "conv3d"}),
            surfaces=frozenset({"layers"}),
            config_fields=frozenset({"target_modules", "feedforward_modules", "fan_in_fan_out", "init_ia3_weights"}),
            optional=frozenset({"ia3.conv1d"}),
        )
        return Capabilities(tuners={"ia3": ia3})

    def adapt(self, model: nn.Module, tuner: str, config: Any, adapter: str | None = "default", **kw: Any) -> nn.Module:
        return tinyia3.adapt(model, self._config(tuner, config), adapter or "default", **kw)

    def _layers(self, model: nn.Module):
        return tinyia3.scaled_layers(model)

    def _layer(self, model: nn.Module, key: str) -> nn.Module:
        return model.get_submodule(key)

    def repro(self, case: Case) -> str | None:
        return None  # tinyia3's API is not PEFT's, which the base class renders repros in
