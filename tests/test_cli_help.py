"""What `svp … --help` shows a newcomer: usage lines with plain argument names, boolean flags as flags, the
real defaults, and a tiny preset whose comment shows the command to type."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml
from pipeline_files import KEEP_ALL, make_pipeline

import training
from orchestration.cli import app, main
from training.driver.stage_run import DEFAULT_WORK_DIR

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


def _set_examples() -> dict[tuple[str, ...], str]:
    """Every command with a `--set` option and the example its help gives (`e.g. KEY=VALUE`)."""
    found: dict[tuple[str, ...], str] = {}

    def walk(command, path: tuple[str, ...]) -> None:
        for param in command.params:
            if "--set" in getattr(param, "opts", []):
                example = re.search(r"e\.g\. (\S+=\S+)", param.help or "")
                assert example, f"svp {' '.join(path)} --help: --set gives no example: {param.help}"
                found[path] = example.group(1)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def test_every_set_example_in_the_help_is_accepted(tmp_path, capsys):
    """Each command's `--set` example is one that this command accepts: it gets past the config (to the
    next check, which needs real data) instead of an unknown-key error."""
    from curation.thresholds import load_thresholds
    from orchestration.commands.options import config_overrides

    examples = _set_examples()
    plan = ("pipeline", "plan")
    assert set(examples) == {("curate",), ("curate", "filter"), ("train",), plan, ("pipeline", "run")} | {
        ("pipeline", "submit")
    }
    empty = tmp_path / "empty"
    empty.mkdir()
    pipeline = str(make_pipeline(tmp_path / "pipeline", videos=1))
    # argv up to --set, and what the command then says: its config was accepted, it stops at the data.
    runs = {
        ("curate",): (
            ["curate", "--input", str(empty), "--output", str(tmp_path / "out")],
            "no videos found",
        ),
        ("train",): (["train", "tiny", "--var", f"data_root={empty}"], "no index.parquet"),
        plan: (["pipeline", "plan", pipeline], None),
        # Nothing listens on port 9: submit stops at the job server, after checking the file and --set.
        ("pipeline", "submit"): (
            ["pipeline", "submit", pipeline, "--address", "http://127.0.0.1:9"],
            "cannot reach",
        ),
    }
    for command, example in examples.items():
        if command == ("curate", "filter"):  # what `svp curate filter` checks first, before reading OUT
            thresholds = tmp_path / "thresholds.yaml"
            thresholds.write_text(yaml.safe_dump(KEEP_ALL))
            load_thresholds(thresholds, config_overrides([example]))
            continue
        # `run` parses and checks the file as `plan` does (one option), without starting Ray here.
        argv, expected = runs[plan if command == ("pipeline", "run") else command]
        code = main([*argv, "--set", example])
        err = capsys.readouterr().err
        if expected is None:
            assert code == 0, (command, example, err)
        else:
            assert code == 2 and expected in err, (command, example, err)
