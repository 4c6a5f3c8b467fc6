"""Shared test setup: offline transformers. The hypothesis profiles (tunerspec-dev/-ci/-thorough) are
registered by the project's pytest plugin, `conformance.plugin`."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
