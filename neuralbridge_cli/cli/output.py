"""Console handling: results on stdout, diagnostics and progress on stderr, one error mapping."""

import functools
import json
import os
import sys
import traceback
from dataclasses import dataclass

import typer
from typer.core import TyperGroup

from .. import interrupts
from ..errors import ExitCode, NeuralBridgeError


@dataclass
class Settings:
    debug: bool = False
    verbose: bool = False
    quiet: bool = False
    json_printed: bool = False  # a command printed its JSON result: errors add no second one


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

            self._console = Console(**self._kwargs, width=_pipe_width(self._kwargs))
        return getattr(self._console, name)


# Piped or redirected output (CI logs, `> report.txt`, `| tee`) has no width: rich would
# take 80 columns and cut the numbers of the validation table to "2.86e…". Wide enough
# for every table instead; a terminal, or COLUMNS, keeps its own width.
PIPE_WIDTH = 160


def _pipe_width(kwargs) -> int | None:
    stream = sys.stderr if kwargs.get("stderr") else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return None if terminal or os.environ.get("COLUMNS") else PIPE_WIDTH


stdout = _LazyConsole(soft_wrap=True)
stderr = _LazyConsole(stderr=True, soft_wrap=True)


def print_json(data) -> None:
    """One JSON object on stdout (per run: an error after a printed result adds none)."""
    if SETTINGS.json_printed:
        return
    SETTINGS.json_printed = True
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


def fail(exc: NeuralBridgeError, json_output: bool = False) -> None:
    """Print the one-line error (plus traceback with --debug) and exit with its code.

    With --json, stdout also gets one JSON object describing the error.
    """
    if SETTINGS.debug:
        stderr.print(traceback.format_exc(), markup=False, highlight=False)
    if SETTINGS.verbose or SETTINGS.debug:
        for detail in exc.details:
            stderr.print(f"  tried: {detail}", markup=False, highlight=False)
    error_line(str(exc))
    if json_output:
        report = getattr(exc, "report", None)
        print_json({"ok": False, "error": str(exc), "exit_code": exc.exit_code,
                    "error_type": type(exc).__name__,
                    **({"validation": report.as_dict()} if report is not None else {})})
    raise typer.Exit(exc.exit_code)


def error_line(message: str) -> None:
    """The one `error:` line on stderr (newlines folded: it stays one line)."""
    text = " ".join(message.split())
    from rich.markup import escape

    stderr.print(f"[bold red]error:[/bold red] {escape(text)}", highlight=False, soft_wrap=True)


def reports_errors(command):
    """Decorator for commands: the one place that maps exceptions to exit codes."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        SETTINGS.json_printed = False
        if kwargs.get("debug"):
            SETTINGS.debug = True
        try:
            with interrupts.handled():
                return command(*args, **kwargs)
        except NeuralBridgeError as exc:
            if interrupts.was_interrupted():  # a framework wrapped the KeyboardInterrupt
                _interrupted(kwargs)
            fail(exc, bool(kwargs.get("json_output")))
        except Exception:
            if interrupts.was_interrupted():
                _interrupted(kwargs)
            raise
        except KeyboardInterrupt:
            _interrupted(kwargs)

    return wrapper


def _interrupted(kwargs) -> None:
    stderr.print("interrupted", style="yellow")
    if kwargs.get("json_output"):
        print_json({"ok": False, "error": "interrupted", "exit_code": ExitCode.INTERRUPTED})
    raise typer.Exit(ExitCode.INTERRUPTED)


def apply_verbosity() -> None:
    """Framework warnings and log noise only with --verbose."""
    if SETTINGS.verbose:
        os.environ["NEURALBRIDGE_VERBOSE"] = "1"
    else:
        import warnings

        warnings.simplefilter("ignore")


# Typer vendors Click privately: reach its ClickException through a public class's bases
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class OneLineErrorsGroup(TyperGroup):
    """Command-line parse errors (unknown option, bad value) as one `error:` line, exit 2,
    instead of Typer's boxed usage panel; with --json also a JSON error object."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        SETTINGS.json_printed = False
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except _CLICK_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `neuralbridge`: show help
                exc.show()
                sys.exit(exc.exit_code)
            # this Typer wraps a bad choice as "Value error, 'x' is not one of ...": noise
            message = exc.format_message().replace(": Value error, ", ": ")
            command = getattr(getattr(exc, "ctx", None), "command_path", None) or "neuralbridge"
            error_line(f"{message} (see {command} --help)")
            if "--json" in argv:
                print_json({"ok": False, "error": message, "exit_code": exc.exit_code,
                            "error_type": "UsageError"})
            sys.exit(exc.exit_code)
        except typer.Abort:
            error_line("aborted")
            sys.exit(ExitCode.FAILURE)
        sys.exit(code if isinstance(code, int) else ExitCode.OK)
