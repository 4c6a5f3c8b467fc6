"""CORE-DEF-1's SHOULD part: the default tables follow peft's constants row for row."""

from peft.utils import constants

from reference_tuners.core.defaults import IA3_TARGETS, LORA_STYLE_TARGETS


def test_lora_style_table_equals_peft_for_every_tuner_that_uses_it():
    for tuner in ("LOHA", "HRA", "GRALORA", "MISS"):
        upstream = getattr(constants, f"TRANSFORMERS_MODELS_TO_{tuner}_TARGET_MODULES_MAPPING")
        assert {k: _row(v) for k, v in upstream.items()} == {k: _row(v) for k, v in LORA_STYLE_TARGETS.items()}


def _row(row):
    """A table row as compared: one regex string stays a string (sorting it would compare its characters)."""
    return row if isinstance(row, str) else sorted(row)


def test_ia3_tables_equal_peft():
    targets = constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
    feedforward = constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
    upstream = {k: (sorted(targets[k]), sorted(feedforward[k])) for k in targets}
    assert upstream == {k: (sorted(t), sorted(f)) for k, (t, f) in IA3_TARGETS.items()}
