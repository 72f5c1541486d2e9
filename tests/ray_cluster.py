"""A real two-node Ray cluster on this machine for the job tests: `ray start --head` (with the dashboard and
job server on free loopback ports, its own --temp-dir) and a second `ray start --address` node with a custom
resource `side`, so tasks land on two raylets. Token authentication is on (Ray 2.60 turns it on for local
clusters when a token exists), with a token of its own: clients get it through `Cluster.env`.

Each `ray start --block` runs in its own process group; `stop()` ends those groups and then every process
whose command line names this cluster's temp dir (raylets, GCS, dashboard, workers) — by pid, never a
`ray stop`, which would also stop other people's Rays on the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Ports that two nodes on one machine would otherwise both take (fixed defaults)."""
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


def cluster_env(token: str) -> dict[str, str]:
    """The environment of the cluster's processes and of its clients (the svp commands of the tests)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        PYTHONPATH=str(ROOT),
        DS_ACCELERATOR="cpu",
        MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false",
        RAY_DEDUP_LOGS="0",
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@dataclass
class Cluster:
    temp_dir: Path
    gcs: str
    dashboard: str  # http://127.0.0.1:PORT, the job server
    env: dict[str, str]
    cpus_per_node: int = 2
    side_node_id: str = ""  # set by start_side()
    side_node_manager_port: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)

    def state(self, resource: str, **params) -> list[dict]:
        """Ray's state API over HTTP (`/api/v0/nodes`, `/api/v0/tasks`, …) with the cluster's token."""
        import requests

        headers = {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
        query = {"limit": 10000, "detail": "true", **params}
        reply = requests.get(f"{self.dashboard}/api/v0/{resource}", params=query, headers=headers, timeout=60)
        reply.raise_for_status()
        return reply.json()["data"]["result"]["result"]

    def nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"]

    def side_nodes(self, alive: bool) -> list[dict]:
        """The second node as the cluster records it: alive, or each one that has ended (with Ray's reason)."""
        return [
            n
            for n in self.state("nodes")
            if "side" in n["resources_total"] and (n["state"] == "ALIVE") == alive
        ]

    def side_raylet(self) -> psutil.Process | None:
        """The second node's raylet (found by its node-manager port), None once it has ended."""
        flag = f"--node_manager_port={self.side_node_manager_port}"
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if proc.info["name"] == "raylet" and flag in cmdline:
                return proc
        return None

    def side_log_tail(self, lines: int = 30) -> str:
        """The end of the second node's `ray start --block` output: when one of its processes ends, Ray prints
        that process's log tail and exit code there (which is how a node that died on its own says why)."""
        text = (self.temp_dir / "side.log").read_text(errors="replace").splitlines()
        return "\n".join([line for line in text if not line.startswith("[state-dump]")][-lines:])

    def start_side(self, timeout: float = 300.0) -> None:
        """Start the second node (custom resource `side`) and wait until the cluster counts it alive."""
        ports = _node_ports()
        self.side_node_manager_port = int(ports[0].split("=")[1])
        args = [
            f"--address={self.gcs}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus_per_node}",
            '--resources={"side": 8}',
            *ports,
        ]
        launched_ms = time.time() * 1000
        self.procs.append(_start(args, self.temp_dir / "side.log", self.env))
        joined = wait_until(
            lambda: [n for n in self.side_nodes(alive=True) if n["start_time_ms"] >= launched_ms],
            timeout,
            lambda: f"second node joining (its log: {self.side_log_tail()})",
            interval=1,
        )
        self.side_node_id = joined[0]["node_id"]

    def live_side_raylet(self) -> psutil.Process:
        """The second node's raylet. A second node that ended on its own (Ray ends a node when its agent or
        raylet fails, which a loaded 2-core machine can provoke) is started again, with a warning that keeps
        Ray's reason and the node's log, so the tests that need two nodes test what they are about."""
        if (raylet := self.side_raylet()) is not None:
            return raylet
        reasons = [n.get("state_message") for n in self.side_nodes(alive=False)]
        warnings.warn(
            f"the second node had ended on its own (Ray: {reasons}); started again. "
            f"Its log ends:\n{self.side_log_tail()}",
            stacklevel=2,
        )
        self.start_side()
        if (raylet := self.side_raylet()) is None:
            raise LookupError(f"the second node's raylet ended again: {self.side_log_tail()}")
        return raylet

    def stop(self) -> None:
        for proc in self.procs:  # `ray start --block` and the Ray processes of its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        mine = str(self.temp_dir)
        leftovers = []
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(mine in part for part in proc.info["cmdline"] or []):
                    leftovers.append(proc)
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        ["ray", "start", "--block", "--disable-usage-stats", *args],
        env=env,
        stdout=log.open("a"),  # a node started again appends: its earlier end stays readable
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_cluster(cpus_per_node: int = 2, timeout: float = 300.0) -> Cluster:
    temp_dir = Path(tempfile.mkdtemp(prefix="svpray-", dir="/tmp"))  # short: Ray's socket paths are limited
    gcs_port, dashboard_port = free_port(), free_port()
    env = cluster_env(secrets.token_hex(32))
    cluster = Cluster(
        temp_dir, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", env, cpus_per_node
    )
    try:
        head = [
            "--head",
            f"--port={gcs_port}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={cpus_per_node}",
            *_node_ports(),
        ]
        cluster.procs.append(_start(head, temp_dir / "head.log", env))
        _wait_for_job_server(cluster, timeout)
        cluster.start_side(timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for_job_server(cluster: Cluster, timeout: float) -> None:
    def answers() -> bool:
        try:
            cluster.state("nodes")
            return True
        except Exception:
            return False

    wait_until(
        answers,
        timeout,
        lambda: f"job server at {cluster.dashboard} ({(cluster.temp_dir / 'head.log').read_text()[-2000:]})",
        interval=1,
    )
