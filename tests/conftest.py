"""Shared test setup: offline transformers, one intra-op thread. The hypothesis profiles (tunerspec-dev/-ci/
-thorough) are registered by the project's pytest plugin, `conformance.plugin`."""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The tests use tiny tensors: a second intra-op thread only spins, and on a busy 2-core machine that makes the run
# several times slower (measured: forward + dtype families 26 s with one thread, 82 s with two, load ≈ 2.7).
torch.set_num_threads(1)
