"""tunerspec's conformance suite: `conformance.check(driver, ...)` runs the contracts against one implementation and
returns its report (also `tunerspec check` and `pytest --pyargs conformance --impl NAME`)."""

from .check import check

__all__ = ["check"]
