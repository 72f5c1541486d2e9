"""`svp jobs list|status|logs|stop`: Ray jobs on a cluster (Ray Jobs API), e.g. those of `svp pipeline submit`."""

from __future__ import annotations

import typer

ADDRESS = typer.Option(
    None, help="The head's job server, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS/RAY_ADDRESS)."
)


def register(app: typer.Typer) -> None:
    jobs_app = typer.Typer(help="Ray jobs on a cluster: list, status, logs, stop.", no_args_is_help=True)
    app.add_typer(jobs_app, name="jobs")

    @jobs_app.command("list")
    def list_(address: str = ADDRESS) -> None:
        """Every job the cluster knows: id, status, entrypoint."""
        from orchestration.pipeline.jobs import client

        jobs = sorted(client(address).list_jobs(), key=lambda j: j.start_time or 0)
        for job in jobs:
            typer.echo(f"{job.submission_id or job.job_id}  {job.status.value:<9}  {job.entrypoint}")
        if not jobs:
            typer.echo("no jobs")

    @jobs_app.command("status")
    def status(job: str = typer.Argument(..., help="Job (submission) id."), address: str = ADDRESS) -> None:
        """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED, and Ray's message."""
        from orchestration.pipeline.jobs import client

        info = client(address).get_job_info(job)
        typer.echo(f"{job}  {info.status.value}  {info.message or ''}".rstrip())

    @jobs_app.command("logs")
    def logs(
        job: str = typer.Argument(..., help="Job (submission) id."),
        follow: bool = typer.Option(
            False, "--follow", "-f", help="Stream until the job ends; exit 1 unless it succeeded."
        ),
        address: str = ADDRESS,
    ) -> None:
        """The job's driver output."""
        from orchestration.pipeline.jobs import client, follow_logs

        if not follow:
            typer.echo(client(address).get_job_logs(job), nl=False)
            return
        final = follow_logs(address, job, typer.echo)
        typer.echo(f"job {job}: {final}")
        if final != "SUCCEEDED":
            raise typer.Exit(1)

    @jobs_app.command("stop")
    def stop(job: str = typer.Argument(..., help="Job (submission) id."), address: str = ADDRESS) -> None:
        """Stop a running job (its finished steps stay finished: submitting again resumes)."""
        from orchestration.pipeline.jobs import client

        stopped = client(address).stop_job(job)
        typer.echo(f"{job}: {'stopping' if stopped else 'not running'}")
