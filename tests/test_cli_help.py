"""What `svp … --help` shows a newcomer: usage lines with plain argument names, boolean flags as flags, the
real defaults, and a tiny preset whose comment shows the command to type."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import training
from orchestration.cli import main
from training.stage_run import DEFAULT_WORK_DIR

COMMANDS = [
    ["synth"],
    ["curate"],
    ["curate", "filter"],
    ["curate", "report"],
    ["curate", "prune"],
    ["train"],
    ["encode"],
    ["generate"],
    ["demo"],
    ["model", "info"],
]


def _help(argv: list[str], capsys) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_usage_names_arguments_plainly_and_flags_take_no_value(argv, capsys):
    text = _help(argv, capsys)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    assert "<bool>" not in text


def test_boolean_flags_and_defaults(capsys):
    text = _help(["generate"], capsys)
    assert re.search(r"--ema\s+--no-ema", text)
    assert "Usage: svp generate [OPTIONS] CHECKPOINT" in text
    assert "Usage: svp curate filter [OPTIONS] OUT" in _help(["curate", "filter"], capsys)
    train = " ".join(_help(["train"], capsys).split())
    assert f"else ./{DEFAULT_WORK_DIR})" in train.replace("│ ", "").replace(" │", "")


def test_tiny_preset_comment_shows_the_var_flag():
    text = (Path(training.__file__).parent / "presets" / "tiny.yaml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "svp train tiny --var data_root=PATH" in comments
    assert "load_preset(" not in comments
