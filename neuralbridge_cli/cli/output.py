"""Console handling: results on stdout, diagnostics and progress on stderr, one error mapping."""
from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from dataclasses import dataclass

import typer

from ..errors import ExitCode, NeuralBridgeError


@dataclass
class Settings:
    debug: bool = False
    verbose: bool = False
    quiet: bool = False


SETTINGS = Settings(debug=os.environ.get("NEURALBRIDGE_DEBUG") == "1")


class _LazyConsole:
    """A rich Console built on first use: importing rich.console costs ~30 ms, which
    `--help` and `--version` never need."""

    def __init__(self, **kwargs):
        self._kwargs = kwargs
        self._console = None

    def __getattr__(self, name):
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return getattr(self._console, name)


stdout = _LazyConsole(soft_wrap=True)
stderr = _LazyConsole(stderr=True, soft_wrap=True)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


class Progress:
    """Step messages on stderr: a live spinner on a terminal, plain lines otherwise."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and not SETTINGS.quiet
        self.status = None

    def __enter__(self):
        if self.enabled and stderr.is_terminal:
            self.status = stderr.status("starting", spinner="dots")
            self.status.__enter__()
        return self

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        if self.status is not None:
            self.status.update(message)
            if SETTINGS.verbose:
                stderr.print(f"[dim]· {message}[/dim]")
        else:
            stderr.print(f"· {message}", markup=False, highlight=False)

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.__exit__(*exc)
        return False


def fail(exc: NeuralBridgeError) -> None:
    """Print the one-line error (plus traceback with --debug) and exit with its code."""
    if SETTINGS.debug:
        stderr.print(traceback.format_exc(), markup=False, highlight=False)
    if SETTINGS.verbose or SETTINGS.debug:
        for detail in exc.details:
            stderr.print(f"  tried: {detail}", markup=False, highlight=False)
    from rich.markup import escape

    stderr.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
    raise typer.Exit(exc.exit_code)


def reports_errors(command):
    """Decorator for commands: the one place that maps exceptions to exit codes."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        if kwargs.get("debug"):
            SETTINGS.debug = True
        try:
            return command(*args, **kwargs)
        except NeuralBridgeError as exc:
            fail(exc)
        except KeyboardInterrupt:
            stderr.print("interrupted", style="yellow")
            raise typer.Exit(ExitCode.INTERRUPTED)

    return wrapper


def apply_verbosity() -> None:
    """Framework warnings and log noise only with --verbose."""
    if SETTINGS.verbose:
        os.environ["NEURALBRIDGE_VERBOSE"] = "1"
    else:
        import warnings

        warnings.simplefilter("ignore")
