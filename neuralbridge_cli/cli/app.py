"""The `neuralbridge` Typer app: global options and command registration."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import __version__
from . import commands, trust
from .output import SETTINGS, apply_verbosity

app = typer.Typer(
    name="neuralbridge",
    help="Convert models between PyTorch, ONNX and TensorFlow/Keras, validated numerically.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
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
    SETTINGS.debug = SETTINGS.debug or debug
    apply_verbosity()


app.command("convert")(commands.convert)
app.command("export-onnx")(commands.export_onnx)
app.command("load")(commands.load)
app.command("inspect")(commands.inspect)
trust.register(app)


def main() -> None:
    app()
