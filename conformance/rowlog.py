"""The row log: the JSON lines a contract run appends as it goes, so that a process that crashes or hangs loses
nothing already judged.

Each line is one event: `start` (a row's test begins: its node id and row fields), `done` (its full result row),
`hung` (the watchdog stopped the process: the row ran past the per-test timeout). A `start` without its `done` is
the row that was running when the process died.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

START, DONE, HUNG = "start", "done", "hung"


def append(path: str | os.PathLike[str], event: str, nodeid: str, **fields: Any) -> None:
    """Append one event line and flush it to the operating system (a process killed right after loses nothing)."""
    line = json.dumps({"event": event, "nodeid": nodeid, **fields}, ensure_ascii=False)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


@dataclass
class LogState:
    """What a row log says: the finished rows in order, and the row (fields) that was running when the log ended
    without its `done`, with the timeout in seconds if the watchdog stopped it."""

    rows: list[dict] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    running: tuple[str, dict] | None = None
    hung_after: float | None = None


def read(path: str | os.PathLike[str]) -> LogState:
    """Parse a row log (a missing file is an empty log; a torn last line, written as the process died, is
    ignored)."""
    state = LogState()
    if not os.path.exists(path):
        return state
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for number, line in enumerate(lines):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                break
            raise
        if event["event"] == START:
            state.running, state.hung_after = (event["nodeid"], event["row"]), None
        elif event["event"] == HUNG:
            state.hung_after = event["seconds"]
        elif event["event"] == DONE:
            state.rows.append(event["row"])
            state.done.add(event["nodeid"])
            state.running, state.hung_after = None, None
    return state
