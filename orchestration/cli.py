"""The `svp` command line: parse, validate, call one function of a package.

Each command group lives in its own module (`orchestration/commands/`); this file only assembles them and
turns user errors (`core.errors.UserError`, a missing file or folder) into one line (`svp: error: …`, exit
status 2) unless `--debug` is given. Any other exception is a bug in svp: it keeps its traceback, followed by
a line saying so and how to report it (exit status 1). A Ctrl-C exits
130 with `svp: aborted`, a SIGTERM 143 (`orchestration.aborts`); what finished before it stays recorded, and the same command
resumes.
"""

from __future__ import annotations

import sys

import typer

from core.errors import UserError
from orchestration.aborts import aborted_status, interrupt_received, watch_interrupts
from orchestration.commands import register_all
from orchestration.console import claim_console
from orchestration.ray_connect import choose_auth_mode

try:  # typer >= 0.2x bundles its own click, whose exceptions are not click's
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on plain click
    from click import ClickException

app = typer.Typer(
    name="svp",
    help="The SANA-Video platform: curate video into shards, train the Linear DiT in stages, generate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Errors that mean "the user asked for something wrong", as opposed to a bug in svp. A missing file or
# folder is almost always a path the user gave (the loaders check theirs and say which option named it).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError)
BUG_NOTE = (
    "svp: this is a bug in svp, not in your input: please report it to the svp maintainers (the project's "
    "issue tracker) with the traceback above, the command and `svp --version`"
)

_state = {"debug": False}
ABORTED = 130  # 128 + SIGINT, what shells report for a command stopped with Ctrl-C


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"svp {version('svp')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    _state["debug"] = debug


register_all(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `svp` console script."""
    choose_auth_mode(sys.argv[1:] if argv is None else argv)
    if argv is None:  # the `svp` program itself, not a call from another program (whose stderr is its own)
        claim_console()
    with watch_interrupts():
        try:
            code = _dispatch(argv)
        except Exception as err:
            # After a Ctrl-C or SIGTERM, whatever a library raised instead (a dead worker's error) is the abort, not a bug.
            if not interrupt_received():
                return _report_traceback(err)
            code = ABORTED
        except BaseException:  # SystemExit (Ray Train's sys.exit(0) on Ctrl-C), KeyboardInterrupt
            if not interrupt_received():
                raise
            code = ABORTED
        if code == ABORTED or interrupt_received():
            print("svp: aborted", file=sys.stderr)
            return aborted_status(interrupt_received())
    return code


def _dispatch(argv: list[str] | None) -> int:
    try:
        # Without standalone mode, click returns a command's `typer.Exit(code)` instead of raising it.
        code = app(args=argv, prog_name="svp", standalone_mode=False)
    except USER_ERRORS as err:
        if interrupt_received():
            return ABORTED
        if _state["debug"]:
            raise
        print(f"svp: error: {err}", file=sys.stderr)
        return 2
    except typer.Exit as exit_:
        return exit_.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return ABORTED
    except ClickException as err:  # usage errors: unknown command or option, bad or missing value
        if err.__class__.__name__ == "NoArgsIsHelpError":  # `svp model` alone: typer printed the help
            return 0
        hint = f" (see '{err.ctx.command_path} --help')" if getattr(err, "ctx", None) else ""
        print(f"svp: error: {err.format_message()}{hint}", file=sys.stderr)
        return err.exit_code
    return code if isinstance(code, int) else 0


def _report_traceback(err: Exception) -> int:
    """The traceback of an exception that reached the top: a user error's under `--debug` (exit 2), else a
    bug's, followed by the line that says it is one (exit 1)."""
    import traceback

    traceback.print_exc()
    if isinstance(err, USER_ERRORS):
        return 2
    if _is_infrastructure_failure(err):  # a lost node or a worker that died: the cluster, not svp
        print(
            f"svp: the Ray job failed: {type(err).__name__} (rerun the same command to resume)",
            file=sys.stderr,
        )
        return 1
    print(BUG_NOTE, file=sys.stderr)
    return 1


def _is_infrastructure_failure(err: BaseException) -> bool:
    """Ray's own errors (a node or worker lost, an actor died, Ray Train giving up after its retries)."""
    module = type(err).__module__ or ""
    return module == "ray" or module.startswith(("ray.", "ray._"))


if __name__ == "__main__":
    sys.exit(main())
