"""The `svp` CLI's error contract: a user error is one line `svp: error: …` and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_jobs_without_any_address_say_what_to_set(capsys, monkeypatch):
    """No --address and neither address variable: what to set, not the names of unset variables as if they
    were an address (nor a guess at a cluster that happens to run on this machine)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    for argv in (["jobs", "list"], ["jobs", "status", "raysubmit_x"], ["jobs", "logs", "raysubmit_x"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            "svp: error: no Ray job server address: give --address http://HEAD:8265 or set "
            "RAY_API_SERVER_ADDRESS=http://HEAD:8265 (the head's dashboard port)"
        ), err


def test_version_and_help_exit_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("svp ")
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


def test_a_corrupt_internal_file_is_a_bug_with_its_traceback(tmp_path, capsys):
    # report.json is written by svp itself: a JSON decoding error there is not the user's input, so it must
    # not be hidden behind one `svp: error:` line (it used to be, as every ValueError was).
    (tmp_path / "report.json").write_text('{"sources": ')
    assert main(["curate", "report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "JSONDecodeError" in err
    assert err.strip().splitlines()[-1].startswith("svp: this is a bug in svp") and "svp: error:" not in err


def test_a_user_error_from_a_library_layer_is_one_line(tmp_path, capsys):
    # model.config raises UserError for an unknown preset; curation's config loader does for a bad key.
    bad = tmp_path / "c.yaml"
    bad.write_text("scenes: {min_clip_s: 2, max_clip_s: 1}\n")
    assert (
        main(["curate", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--config", str(bad)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"svp: error: {bad}: scenes: ") and "\n" not in err and "max_clip_s" in err


def test_debug_shows_a_user_errors_traceback_without_calling_it_a_bug(capsys):
    assert main(["--debug", "model", "info", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "UserError: unknown model preset" in err
    assert "this is a bug" not in err


def test_a_fresh_process_without_ray_auth_mode_is_let_into_its_own_private_ray():
    """Ray 2.60 reads RAY_AUTH_MODE when `ray` is imported; svp's entry point sets it before that, so the
    private local Ray it starts (token auth) does not refuse its own driver."""
    code = (
        "import sys\n"
        "from orchestration.ray_connect import choose_auth_mode, connect\n"
        "choose_auth_mode(sys.argv[1:])\n"
        "import ray\n"
        "connect(None, num_cpus=1)\n"
        "print('answer', ray.get(ray.put(41)) + 1)\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0 and "answer 42" in done.stdout, done.stderr[-2000:]
