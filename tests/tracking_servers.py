"""A real MLflow tracking server for the tests: `mlflow server --serve-artifacts` on a loopback port, its runs in
a real PostgreSQL initialised in a temp dir (what infra/mlflow runs, minus the object store).

PostgreSQL refuses to run as root, so when the tests run as root its processes run as the `postgres` user
(Debian's package creates it) or else `nobody`, in a temp dir that user owns. Binaries: `initdb` on the PATH,
else Debian's /usr/lib/postgresql/<version>/bin (the newest); `find_postgres_bin` is None without any.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from process_groups import reap_group
from waiting import wait_until


def find_postgres_bin() -> Path | None:
    """The folder holding initdb/pg_ctl/postgres, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """Who runs PostgreSQL: None (this user) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


@dataclass
class Postgres:
    """A PostgreSQL cluster in a temp dir, on 127.0.0.1:`port`, trust auth for the `mlflow` superuser."""

    bin_dir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="svp-pg-", dir="/tmp")))
    port: int = field(default_factory=free_port)

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://mlflow@127.0.0.1:{self.port}/mlflow"

    def _run(self, *args: str) -> None:
        user = _server_user()
        ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        done = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]], capture_output=True, text=True, timeout=120, **ids
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        user = _server_user()
        if user is not None:  # the data dir and its temp parent must be the server user's
            os.chown(self.root, user.pw_uid, user.pw_gid)
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", "mlflow", "--auth=trust", "--no-sync", "-E", "UTF8")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "log"), "-o", options, "-w", "start")
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="mlflow", dbname="postgres")
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:  # not `with connection`: that opens a transaction
                cursor.execute("CREATE DATABASE mlflow")
        finally:
            connection.close()

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class MlflowServer:
    """`mlflow server` on 127.0.0.1:`port` with `--serve-artifacts` into `artifacts`; stop/start keep both."""

    backend_uri: str
    artifacts: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--backend-store-uri", self.backend_uri, "--workers", "1"]
        command += ["--artifacts-destination", self.artifacts.as_uri(), "--serve-artifacts"]
        self.process = subprocess.Popen(
            command,
            start_new_session=True,  # its workers share the group: kill() takes them all
            stdout=subprocess.DEVNULL,
            stderr=open(self.artifacts.parent / f"mlflow-server-{self.port}.log", "ab"),  # noqa: SIM115
        )
        wait_until(self._healthy, timeout_s, f"healthy mlflow server (see {self.log_path})", interval=0.3)

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited {self.process.returncode}: see {self.log_path}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
            return answer.status == 200
        return False

    @property
    def log_path(self) -> Path:
        return self.artifacts.parent / f"mlflow-server-{self.port}.log"

    def kill(self) -> None:
        """What a crashed or redeployed server looks like to its clients: gone at once."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            reap_group(self.process.pid)
            self.process = None
