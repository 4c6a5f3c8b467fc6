"""The shared framework every tuner builds on (SPEC §1)."""
