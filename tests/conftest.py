"""Shared test setup: offline transformers, the project's hypothesis profiles, tiny models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("tunerspec-dev", max_examples=10, **_COMMON)
settings.register_profile("tunerspec-ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("tunerspec-thorough", max_examples=300, **_COMMON)
