"""The `svp` CLI's error contract: a user error is one line `svp: error: …` and exit status 2."""

from __future__ import annotations

import pytest

from orchestration.cli import main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["nosuch"], "svp: error: No such command 'nosuch'. (see 'svp --help')"),
        (["train", "--wrokers", "2", "x"], "svp: error: No such option: --wrokers"),
        (["model", "info"], "svp: error: Missing argument 'preset'."),
        (["model", "info", "no-such-preset"], "svp: error: "),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(expected) and "\n" not in err and "Traceback" not in err


def test_version_and_help_exit_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("svp ")
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
