"""The calm console's pieces that need no Ray running: the filter that keeps Ray's C++ log lines off the
console (run as the real filter process, on a pipe), the quieting of Ray's job client loggers, and the
dashboard server's environment (no MLflow download bars)."""

from __future__ import annotations

import logging
import subprocess
import sys

from orchestration import native_stderr
from orchestration.console import SELF_LEVELLED_LOGGERS, quiet_job_client

RAY_ERROR = b"[2026-12-07 11:51:22,405 E 9050 9050] core_worker.cc:2465: Actor ... max_restarts > 0. ...\n"
RAY_INFO = b"[2026-12-07 11:51:22,405 I 9050 9050] logging.cc:303: Set ray log level to 2\n"
RAY_FATAL = b"[2026-12-07 11:51:22,405 F 9050 9050] raylet_client.cc:1: Check failed\n*** StackTrace ***\n"


def _through_filter(chunks: list[bytes]) -> bytes:
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", native_stderr.__file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    for chunk in chunks:  # separate writes: a line may arrive in pieces
        proc.stdin.write(chunk)
        proc.stdin.flush()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return out


def test_the_filter_drops_ray_native_lines_and_passes_everything_else():
    mine = b"8 sources, 0 already finished in an earlier run, 8 to process\n"
    redraw = b"\rimage: step 1/4\rimage: step 2/4"
    chunks = [mine, RAY_ERROR[:7], RAY_ERROR[7:30], RAY_ERROR[30:], redraw, b"\n", RAY_INFO, RAY_FATAL]
    chunks += [b"[not Ray's] a line of svp\n", b"Traceback (most recent call last):\n", RAY_INFO[:-1]]
    out = _through_filter(chunks)
    assert (
        out
        == mine
        + redraw
        + b"\n"
        + RAY_FATAL
        + b"[not Ray's] a line of svp\nTraceback (most recent call last):\n"
    )


def test_ray_job_client_loggers_keep_only_warnings():
    import ray.dashboard.modules.dashboard_sdk  # noqa: F401 - sets its logger to INFO when imported
    import ray.dashboard.modules.job.sdk  # noqa: F401

    quiet_job_client()
    quiet_job_client()  # idempotent: one filter per logger
    for name in SELF_LEVELLED_LOGGERS:
        logger = logging.getLogger(name)
        info = logger.makeRecord(name, logging.INFO, __file__, 1, "Uploading package gcs://x.zip.", (), None)
        warning = logger.makeRecord(name, logging.WARNING, __file__, 1, "job server slow", (), None)
        assert not logger.filter(info) and logger.filter(warning), name
        assert len(logger.filters) == 1


def test_the_dashboard_server_shows_no_mlflow_download_bars(monkeypatch, tmp_path):
    from orchestration.dashboard.launch import server_env

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    assert server_env([tmp_path], None)["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # a user who wants them keeps them
    assert server_env([tmp_path], None)["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
