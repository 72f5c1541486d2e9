"""Start the Streamlit server for `svp dashboard`: checks its inputs, then runs `streamlit run` as a child.

The pages read what to show from one environment variable (JSON), so the app file stays a plain script
that `streamlit run` and Streamlit's `AppTest` can both execute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from core.errors import UserError

CONFIG_ENV = "SVP_DASHBOARD_CONFIG"
APP_FILE = Path(__file__).with_name("app.py")


def dashboard_config() -> dict:
    """What the pages show: `{"curation": [folders], "tracking_uri": uri or None}`."""
    raw = os.environ.get(CONFIG_ENV)
    data = json.loads(raw) if raw else {}
    return {"curation": list(data.get("curation") or []), "tracking_uri": data.get("tracking_uri")}


def config_env(curation: list[Path], tracking_uri: str | None) -> dict[str, str]:
    payload = {"curation": [str(Path(c).resolve()) for c in curation], "tracking_uri": tracking_uri}
    return {CONFIG_ENV: json.dumps(payload)}


def server_env(curation: list[Path], tracking_uri: str | None) -> dict[str, str]:
    """The Streamlit server's environment: what to show, no usage statistics, and no MLflow download bars in
    this terminal each time a page fetches a run's sample videos (unless the user's environment asks for them)."""
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env = {**quiet, **os.environ, **config_env(curation, tracking_uri)}
    return {**env, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}


def streamlit_command(host: str, port: int) -> list[str]:
    """Headless, no usage statistics, no file watcher: a server for a browser, not a dev loop."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_FILE),
        f"--server.address={host}",
        f"--server.port={port}",
        "--server.headless=true",
        "--server.fileWatcherType=none",
        "--browser.gatherUsageStats=false",
        "--client.toolbarMode=minimal",
        "--theme.base=light",
    ]


def run_dashboard(
    curation: list[Path], runs: Path | None, tracking_uri: str | None, host: str, port: int
) -> int:
    """Validate the inputs (one-line errors), print the URL, serve until interrupted."""
    from orchestration.dashboard.keep_math import require_curation_folder

    for folder in curation:
        require_curation_folder(folder)
    uri = None
    if runs is not None or tracking_uri is not None:
        from orchestration.dashboard.run_table import tracking_uri_for

        uri = tracking_uri_for(runs, tracking_uri)
    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port")
    print(f"svp dashboard: http://{host}:{port}  (Ctrl-C stops it)", flush=True)
    proc = subprocess.Popen(streamlit_command(host, port), env=server_env(curation, uri))  # noqa: S603 - no shell
    # SIGTERM (a service manager, a test) stops the server like Ctrl-C does, rather than orphaning it.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(proc)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Ask Streamlit to stop; kill it if it has not exited after `grace_s` (its shutdown can hang)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
