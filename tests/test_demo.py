"""The README's main command works end to end for every tuner."""

import re
import warnings

from reference_tuners import demo


def test_demo_runs_every_tuner_and_round_trips(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Bone's deprecation notice (BONE-CFG-4)
        demo.main([])
    out = capsys.readouterr().out
    for name in demo.DEMO_CONFIGS:
        moved = float(re.search(rf"\[{name}\] after one SGD step the output moved by (\S+)", out).group(1))
        reloaded = float(re.search(rf"\[{name}\] saved and reloaded: max \|Δ\| = (\S+)", out).group(1))
        merged = float(re.search(rf"\[{name}\] merged into plain TinyNet: max \|Δ\| = (\S+)", out).group(1))
        assert moved > 1e-6 and reloaded == 0.0 and merged < 1e-12, name
