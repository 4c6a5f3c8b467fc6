"""The repository keeps its promises: CI runs README's commands, with the pinned versions."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _fenced_lines(text: str) -> list[str]:
    return [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_test_command():
    readme = _fenced_lines((ROOT / "README.md").read_text())
    test_commands = [line for line in readme if "pytest" in line]
    assert len(test_commands) == 1, test_commands
    assert test_commands[0] in (ROOT / ".ci/run").read_text().splitlines()


def test_ci_installs_what_the_readme_install_line_installs():
    install = next(line for line in _fenced_lines((ROOT / "README.md").read_text()) if "pip install" in line)
    ci = (ROOT / ".ci/run").read_text()
    for part in ("torch==2.13.0", '-c constraints.txt -e ".[test,bench]"'):
        assert part in install and part in ci, part


def test_installed_versions_are_the_pinned_ones():
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for package in ("torch", "peft", "lycoris-lora", "transformers"):
        assert Version(version(package)).base_version == pins[package], package
