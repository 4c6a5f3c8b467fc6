"""Broken implementations for the harness self-tests: each behaves like the reference except for one
single-point bug, made on the adapted model's own layers (nothing global is patched)."""

from conformance.drivers.reference import ReferenceDriver


class LoHaScaleBugDriver(ReferenceDriver):
    """LoHa with s = alpha instead of alpha/r (every LoHa layer's scale multiplied by its r)."""

    name = "mutant-loha-scale"

    def adapt(self, model, tuner, config, adapter="default", *, autocast_adapter_dtype=True):
        adapted = super().adapt(model, tuner, config, adapter, autocast_adapter_dtype=autocast_adapter_dtype)
        for _, layer in self._layers(adapted):
            for name, settings in layer.settings.items():
                layer.scaling[name] *= settings.r
        return adapted
