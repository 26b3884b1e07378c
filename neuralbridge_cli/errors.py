"""One root error type for everything a user can cause, mapped to exit codes in one place.

Internal bugs are *not* NeuralBridgeError: they keep their traceback.
"""
from __future__ import annotations


class ExitCode:
    """Documented process exit codes."""

    OK = 0
    FAILURE = 1  # conversion or load failure
    USAGE = 2  # bad flags, bad input path, unknown format, missing shape...
    MISMATCH = 3  # validation found a numeric mismatch
    INTERRUPTED = 130  # Ctrl-C


class NeuralBridgeError(Exception):
    """Root of every error the user can act on. The message is one line: what and what to do."""

    exit_code = ExitCode.FAILURE

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: list[str] = []  # e.g. each failed strategy, shown with --verbose

    def __str__(self) -> str:  # one line, with the hint appended
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(NeuralBridgeError):
    """Bad flags or arguments: wrong syntax, missing file, unknown format, missing shape."""

    exit_code = ExitCode.USAGE


class SourceNotFoundError(UsageError):
    """The model file, folder or import path does not exist."""


class UnknownFormatError(UsageError):
    """The source format could not be detected."""


class InputSpecError(UsageError):
    """Input shapes or dtypes are missing, malformed or do not fit the model."""


class OutputExistsError(UsageError):
    """The output already exists and --force was not given."""


class MissingDependencyError(NeuralBridgeError):
    """A framework needed for this route is not installed."""


class LoadError(NeuralBridgeError):
    """A model file exists but could not be loaded."""


class ConversionError(NeuralBridgeError):
    """Every strategy for a conversion step failed."""


class ValidationMismatch(NeuralBridgeError):
    """The converted model's outputs differ from the source's beyond tolerance."""

    exit_code = ExitCode.MISMATCH

    def __init__(self, message: str, *, report=None, output_path=None):
        super().__init__(message)
        self.report = report
        self.output_path = output_path


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's text, for one-line messages."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else text
    # a first line that only announces what follows (onnxruntime's "invalid dimensions ... for
    # the following indices") is useless alone: take the detail lines with it
    for more in lines[1:4]:
        if not line.rstrip().endswith((":", "indices")):
            break
        line = f"{line.rstrip()} {more.strip()}"
    # torch's request for feedback is not about the user's model
    line = line.split("(Could this error message be improved?")[0].rstrip()
    return line[:limit]
