"""Shell completion: value completers for options, and the scripts in completions/.

The scripts come from Typer's own completion machinery (`_NEURALBRIDGE_COMPLETE=source_SHELL`),
so they call back into the app at TAB time: commands, options and the values of choice
options (--to, --as, --layout, ...) are always those of the installed version. A model
argument has no completer, so the shells fall back to file names there.

    python -m neuralbridge_cli.cli.completion completions/   # what `make completions` runs
"""

import contextlib
import io
import os
import sys
from pathlib import Path

SHELLS = ("bash", "zsh", "fish")
PROG = "neuralbridge"
COMPLETE_VAR = "_NEURALBRIDGE_COMPLETE"


def complete_formats(incomplete: str) -> list[str]:
    """Values of --from: the source format names."""
    from ..formats import FORMATS

    return [name for name in FORMATS if name.startswith(incomplete)]


def complete_precisions(incomplete: str) -> list[str]:
    """Values of --precision."""
    from ..options import PRECISIONS

    return [name for name in PRECISIONS if name.startswith(incomplete)]


def complete_quantizations(incomplete: str) -> list[str]:
    """Values of --quantization."""
    from ..options import QUANTIZATIONS

    return [name for name in QUANTIZATIONS if name.startswith(incomplete)]


def complete_dtypes(incomplete: str) -> list[str]:
    """Values of --dtype: dtype names (also after `name:`)."""
    from ..specs import DTYPES

    prefix, _, partial = incomplete.rpartition(":")
    head = f"{prefix}:" if prefix else ""
    return [head + name for name in DTYPES if name.startswith(partial)]


def completion_script(shell: str) -> str:
    """The completion script for `shell`, as the app itself prints it."""
    from .app import app

    buffer = io.StringIO()
    saved = os.environ.get(COMPLETE_VAR)
    os.environ[COMPLETE_VAR] = f"source_{shell}"
    try:
        with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
            app(args=[], prog_name=PROG)
    finally:
        if saved is None:
            del os.environ[COMPLETE_VAR]
        else:
            os.environ[COMPLETE_VAR] = saved
    # `#compdef` must be the first line for zsh; no trailing blank lines either
    return buffer.getvalue().strip() + "\n"


def write_scripts(folder: str | Path) -> list[Path]:
    """Write neuralbridge.bash / .zsh / .fish into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for shell in SHELLS:
        path = folder / f"{PROG}.{shell}"
        path.write_text(completion_script(shell))
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_scripts(sys.argv[1] if len(sys.argv) > 1 else "completions"):
        print(written_path)
