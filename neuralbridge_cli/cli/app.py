"""The `neuralbridge` Typer app: global options and command registration."""

import os
import sys
from typing import Annotated, Optional

import typer

from .. import __version__
from ..errors import ExitCode
from . import commands, doctor, trust
from .output import SETTINGS, OneLineErrorsGroup, apply_verbosity

app = typer.Typer(
    name="neuralbridge",
    help="Convert models between PyTorch, ONNX and TensorFlow/Keras, validated numerically.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Plain click help: rich panels cost ~150 ms of imports (rich.console, rich.markdown,
    # markdown_it) on every `--help`, three times the cost of importing typer itself.
    rich_markup_mode=None,
    cls=OneLineErrorsGroup,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"neuralbridge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail, including "
                                          "framework logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress messages.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Full tracebacks on errors.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version,
                                                    is_eager=True, help="Print the version.")] = None,
) -> None:
    """Convert models between PyTorch, ONNX and TensorFlow/Keras, validated numerically.

    Exit codes: 0 ok, 1 conversion or load failure, 2 usage error, 3 validation mismatch,
    130 interrupted.
    """
    SETTINGS.verbose, SETTINGS.quiet = verbose, quiet
    # reset per invocation: in-process runs (tests, CliRunner) must not inherit --debug
    SETTINGS.debug = os.environ.get("NEURALBRIDGE_DEBUG") == "1" or debug
    apply_verbosity()


app.command("convert")(commands.convert)
app.command("export-onnx")(commands.export_onnx)
app.command("load")(commands.load)
app.command("inspect")(commands.inspect)
app.command("doctor")(doctor.doctor)
trust.register(app)


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        if exc.code == ExitCode.INTERRUPTED:  # Ctrl-C: skip the framework's slow shutdown
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(ExitCode.INTERRUPTED)
        raise
