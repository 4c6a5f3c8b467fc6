"""Broken implementations for the harness self-tests: each behaves like the reference except for one
single-point bug, made on the adapted model's own layers (nothing global is patched)."""

import os
import signal
import threading
from pathlib import Path

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


class UnreadableConfigLoHaScaleBugDriver(LoHaScaleBugDriver):
    """The LoHa scale bug, and a `config_from_dict` that raises (the config family's round-trip rows: `error`)."""

    name = "mutant-loha-scale-unreadable-config"

    def config_from_dict(self, tuner, d):
        raise RuntimeError("config_from_dict is broken")


def _first_time() -> bool:
    """True once per marker file (`TUNERSPEC_TEST_MARKER`): the first call in any process of a test's run."""
    marker = Path(os.environ["TUNERSPEC_TEST_MARKER"])
    if marker.exists():
        return False
    marker.touch()
    return True


class CrashOnceDriver(ReferenceDriver):
    """The reference, except that the first `merge` of a run kills its process with SIGSEGV."""

    name = "crash-once"

    def merge(self, model, adapters=None, safe=False):
        if _first_time():
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().merge(model, adapters, safe)


class HangOnceDriver(ReferenceDriver):
    """The reference, except that the first `merge` of a run never returns."""

    name = "hang-once"

    def merge(self, model, adapters=None, safe=False):
        if _first_time():
            threading.Event().wait()
        return super().merge(model, adapters, safe)
