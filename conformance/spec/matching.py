"""SPEC §1.3's matching rules, written for the suite (not imported from any implementation)."""

from __future__ import annotations

import re
from collections.abc import Iterable


def matches(rule: str | Iterable[str], key: str) -> bool:
    """CORE-MATCH-1/2 (and IA3-CFG-4): a string is a full regex match; a collection matches a key equal to
    an entry or ending in "." + entry."""
    if isinstance(rule, str):
        return re.fullmatch(rule, key) is not None
    return any(key == entry or key.endswith("." + entry) for entry in rule)
