"""The pipeline as a Ray job (Ray Jobs API): `svp pipeline submit` and `svp jobs list|status|logs|stop`.

`submit` packs a working directory for the job: the pipeline file with every path made absolute (data, work
dir: they must be on storage the cluster reaches, as for `--address`) and the thresholds and curation config
files it names (small; copied, so the job reads what the user sees). The job's entrypoint is
`python -m orchestration.cli pipeline run pipeline.yaml --settle-files` (it copies its files under the work
dir first: Ray may remove a job's working directory while the job runs); with `ship_code` the platform's own packages travel
as `py_modules` (for a cluster whose image lacks this version of svp). The job server sets `RAY_ADDRESS` for
the entrypoint, so `svp pipeline run` inside it joins that cluster (`orchestration.ray_connect`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError
from orchestration.pipeline.spec import PipelineSpec

JOB_FILE = "pipeline.yaml"
PLATFORM_PACKAGES = ("model", "curation", "training", "orchestration")


# Where Ray's job client looks for the job server when no address is given, in this order.
ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
NO_ADDRESS = (
    "no Ray job server address: give --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS=http://HEAD:8265 "
    "(the head's dashboard port)"
)


def client(address: str | None) -> Any:
    """A `JobSubmissionClient` for the head's dashboard (`http://HEAD:8265`, else the address variables); no
    address at all, or a refusal, is one line saying what to set. Never a cluster that merely runs on this
    machine (`orchestration.ray_connect`'s rule): without an address, Ray's client would guess one."""
    from ray.job_submission import JobSubmissionClient

    from orchestration.console import quiet_job_client
    from orchestration.ray_connect import TOKEN_HINT

    quiet_job_client()  # no "Uploading package …" INFO lines of Ray's job client
    named = [f"{name}={os.environ[name]}" for name in ADDRESS_VARS if os.environ.get(name)]
    if not address and not named:
        raise UserError(NO_ADDRESS)
    try:
        return JobSubmissionClient(address)
    except Exception as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = address or f"{named[0]} (no --address given)"
        if "auth" in text.lower() or "401" in text:
            text += f" (token authentication: {TOKEN_HINT})"
        raise UserError(f"cannot reach the Ray job server at {where}: {text}") from None


def _job_files(spec: PipelineSpec, folder: Path) -> None:
    """Write the job's working directory: pipeline.yaml with absolute paths + the small files it names."""
    raw = yaml.safe_load(Path(spec.source).read_text())
    raw["work_dir"] = str(spec.work)
    curate = dict(raw["curate"])
    curate["input"] = spec.path(spec.curate.input)
    curate["output"] = str(spec.curated)
    if spec.curate.config:
        shutil.copyfile(spec.path(spec.curate.config), folder / "curate.yaml")
        curate["config"] = "curate.yaml"
    raw["curate"] = curate
    shutil.copyfile(spec.path(spec.filter.thresholds), folder / "thresholds.yaml")
    raw["filter"] = {**raw["filter"], "thresholds": "thresholds.yaml"}
    (folder / JOB_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))


def submit(
    spec: PipelineSpec,
    address: str | None,
    *,
    run_args: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    ship_code: bool = False,
    job_id: str | None = None,
    debug: bool = False,
) -> str:
    """Submit `svp pipeline run` of `spec` as a Ray job; returns the job id at once. `debug`: the job's
    `svp` prints tracebacks (`svp --debug`)."""
    import importlib

    jobs = client(address)
    with tempfile.TemporaryDirectory(prefix="svp-job-") as tmp:
        _job_files(spec, Path(tmp))
        runtime_env: dict[str, Any] = {"working_dir": tmp}
        if env:
            runtime_env["env_vars"] = dict(env)
        if ship_code:
            # Package folders (the job client uploads them; module objects do not survive its deepcopy).
            runtime_env["py_modules"] = [
                str(Path(importlib.import_module(p).__file__).parent) for p in PLATFORM_PACKAGES
            ]
        svp = "python -m orchestration.cli" + (" --debug" if debug else "")
        entrypoint = " ".join([svp, "pipeline run", JOB_FILE, "--settle-files", *(run_args or [])])
        return jobs.submit_job(
            entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id, metadata={"svp": spec.name}
        )


def follow_logs(address: str | None, job_id: str, echo) -> str:
    """Stream a job's logs until it ends; returns its final status."""
    import asyncio

    jobs = client(address)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            echo(lines.rstrip("\n"))

    asyncio.run(tail())
    return str(jobs.get_job_status(job_id).value)
