"""The `svp` command line: parse, validate, call one function of a package.

Each command group lives in its own module (`orchestration/commands/`); this file only assembles them and
turns user errors into one line (`svp: error: …`, exit status 2) unless `--debug` is given. A Ctrl-C exits
130 with `svp: aborted`, a SIGTERM 143 (`orchestration.aborts`); what finished before it stays recorded, and
the same command resumes.
"""

from __future__ import annotations

import sys

import typer

from orchestration.aborts import aborted_status, interrupt_received, watch_interrupts
from orchestration.commands import register_all

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

# Errors that mean "the user asked for something wrong", as opposed to a bug in svp.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)

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
    with watch_interrupts():
        try:
            code = _dispatch(argv)
        except BaseException:
            # After a Ctrl-C or SIGTERM, whatever a library raised instead (Ray Train's sys.exit(0), a dead
            # worker's error) is the abort, not a bug.
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
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"svp: error: {message}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
