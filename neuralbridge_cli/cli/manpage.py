"""Generate man/neuralbridge.1 (roff, man macros) by walking the app's command tree.

Every command, argument and option comes from the app itself, so the page cannot drift
from `--help` (tests/cli/test_manpage.py fails when man/neuralbridge.1 is stale). The page
carries no date, so regenerating an unchanged app gives the same bytes.

    python -m neuralbridge_cli.cli.manpage man/neuralbridge.1   # what `make man` runs
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from .. import __version__
from ..errors import ExitCode

EXIT_CODES = (
    (ExitCode.OK, "Success (for \\fBdoctor \\-\\-route\\fR: every route asked for is "
                  "available)."),
    (ExitCode.FAILURE, "Conversion or load failure; the message names the failing op or "
                       "layer. Also: a missing framework (the message names the pip extra), "
                       "and \\fBdoctor \\-\\-route\\fR when a route is unavailable."),
    (ExitCode.USAGE, "Usage error: bad flag, missing file, unknown format, missing input "
                     "shape, output already exists."),
    (ExitCode.MISMATCH, "Validation mismatch: the converted model's outputs differ beyond "
                        "the tolerances (the output is kept)."),
    (ExitCode.INTERRUPTED, "Interrupted (Ctrl-C); nothing half-written is left behind."),
)

ENVIRONMENT = (
    ("NEURALBRIDGE_DEBUG", "Set to 1 to print full tracebacks on errors, like \\fB\\-\\-debug\\fR."),
    ("NEURALBRIDGE_VERBOSE", "Set to 1 to show framework logs, like \\fB\\-\\-verbose\\fR."),
    ("NO_COLOR", "When set (to anything), no colours are used. Output that is not a terminal "
                 "never gets colours or other control codes."),
    ("TF_CPP_MIN_LOG_LEVEL", "TensorFlow's C++ log level; NeuralBridge sets 3 (errors only) "
                             "unless it is already set or \\fB\\-\\-verbose\\fR is given."),
    ("COLUMNS", "Width used for tables and help when the output is not a terminal."),
    ("_NEURALBRIDGE_COMPLETE", "Used by the shell completion scripts; not for direct use."),
)

EXAMPLES = (
    ("Check what is installed and whether PyTorch to TensorFlow works:",
     "neuralbridge doctor \\-\\-route torch:tf"),
    ("A PyTorch state dict to a TensorFlow SavedModel, validated:",
     "neuralbridge convert resnet18.pt \\-\\-model\\-class torchvision.models:resnet18 "
     "\\-\\-to tf"),
    ("An import path to ONNX (writes ResNet.onnx):",
     "neuralbridge export\\-onnx torchvision.models:resnet18"),
    ("Keras 3 to a PyTorch ExportedProgram:",
     "neuralbridge convert model.keras \\-\\-to torch \\-o model.pt2"),
    ("Describe an ONNX file as JSON:", "neuralbridge inspect model.onnx \\-\\-json | jq .inputs"),
    ("Use in a Makefile or CI job (exit code 3 on a numeric mismatch):",
     "neuralbridge \\-q convert model.onnx \\-\\-to tf \\-\\-json > report.json"),
)


def escape(text: str) -> str:
    """Plain text -> roff: backslashes, hyphens, and control characters at line start."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln[:1] in (".", "'") else ln for ln in text.split("\n"))


def _bold(text: str) -> str:
    return f"\\fB{escape(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{escape(text)}\\fR"


def _metavar(param, record: str) -> str:
    """A readable value name: the choices when there are few, else the option's name."""
    match = re.search(r"<([^>]*)>", record)
    if not match:
        return ""
    value = match.group(1)
    if "|" in value:
        return "{" + value.replace("|", ",") + "}"
    if value in ("int", "float"):
        return {"int": "N", "float": "X"}[value]
    longest = max(param.opts, key=len)
    return longest.lstrip("-").upper().replace("-", "_")


def _param_lines(param, ctx) -> list[str]:
    record = param.get_help_record(ctx)
    if record is None:  # hidden
        return []
    names, help_text = record
    if param.param_type_name == "argument":
        head = _italic(param.name.upper())
    else:
        metavar = _metavar(param, names)
        flags = ", ".join(_bold(o) for o in sorted(param.opts, key=len) + param.secondary_opts)
        head = flags + (f" {_italic(metavar)}" if metavar else "")
    if getattr(param, "multiple", False):
        help_text = help_text + " Repeatable."
    return [".TP", head, escape(_clean(help_text))]


def _clean(text: str) -> str:
    """Help text as one paragraph (Typer's rich markup is not used in this app's help)."""
    return re.sub(r"\s+", " ", text or "").strip()


def _description(help_text: str) -> tuple[list[str], list[str]]:
    """A docstring -> (roff paragraphs, example command lines)."""
    paragraphs, examples = [], []
    for block in re.split(r"\n\s*\n", (help_text or "").strip()):
        # "\b" alone on a line is click's no-rewrap marker, not text
        lines = [ln.strip() for ln in block.splitlines() if ln.strip() and ln.strip() != "\b"]
        if not lines:
            continue
        if lines[0].rstrip(":").lower() in ("example", "examples"):
            continue
        for line in list(lines):
            if line.lower().startswith("example:"):  # "Example: neuralbridge load ..."
                examples.append(line.split(":", 1)[1].strip())
                lines.remove(line)
        if lines and all(ln.startswith("neuralbridge ") for ln in lines):
            examples.extend(lines)
        elif lines:
            paragraphs.append(escape(" ".join(lines)))
    return paragraphs, examples


def _example_block(lines) -> list[str]:
    out = []
    for line in lines:
        out += [".PP", ".RS 4", ".nf", escape(line), ".fi", ".RE"]
    return out


def _usage(cmd, name: str) -> str:
    arguments = [_italic(p.name.upper()) + ("..." if p.nargs == -1 else "")
                 for p in cmd.params if p.param_type_name == "argument"]
    return " ".join([_bold("neuralbridge"), _bold(name), f"[{_italic('OPTIONS')}]", *arguments])


def generate() -> str:
    """The whole man page as a string."""
    import typer

    from .app import app

    group = typer.main.get_command(app)
    root_ctx = group.make_context("neuralbridge", [], resilient_parsing=True)
    summary = _clean(group.help).rstrip(".")
    out = [
        '.TH NEURALBRIDGE 1 "" "neuralbridge ' + __version__ + '" "User Commands"',
        ".SH NAME",
        f"neuralbridge \\- {escape(summary[0].lower() + summary[1:])}",
        ".SH SYNOPSIS",
        f"{_bold('neuralbridge')} [{_italic('GLOBAL OPTIONS')}] {_italic('COMMAND')} "
        f"[{_italic('ARGS')}]...",
        ".SH DESCRIPTION",
        escape(_clean(group.help)),
        ".PP",
        "Every conversion goes through ONNX (PyTorch \\(-> ONNX \\(-> TensorFlow and back), "
        "runs the source and the converted model as saved on the same seeded inputs, and "
        "reports the largest error per output. Results are printed on standard output; "
        "progress and diagnostics on standard error. Every command that reports something "
        "accepts \\fB\\-\\-json\\fR.",
        ".SH GLOBAL OPTIONS",
        "These come before the command.",
    ]
    for param in group.params:
        out += _param_lines(param, root_ctx)
    out += [".SH COMMANDS"]
    for name, cmd in group.commands.items():
        if getattr(cmd, "hidden", False):
            continue
        ctx = cmd.make_context(name, [], parent=root_ctx, resilient_parsing=True)
        paragraphs, examples = _description(cmd.help)
        out += [f'.SS "neuralbridge {escape(name)}"', _usage(cmd, name)]
        for paragraph in paragraphs:
            out += [".PP", paragraph]
        for param in cmd.params:
            out += _param_lines(param, ctx)
        if examples:
            out += [".PP", "Example" + ("s:" if len(examples) > 1 else ":")]
            out += _example_block(examples)
    out += [".SH EXIT STATUS"]
    for code, meaning in EXIT_CODES:
        out += [".TP", f"\\fB{code}\\fR", meaning]
    out += [".SH ENVIRONMENT"]
    for name, meaning in ENVIRONMENT:
        out += [".TP", _bold(name), meaning]
    out += [".SH FILES", ".TP", _italic("neuralbridge.toml") + ", " + _italic(".yaml")
            + ", " + _italic(".json"),
            "Settings given with \\fB\\-\\-config\\fR: input_shape, dtype, model_class, "
            "model_args, atol, rtol, opset, layout, static. Flags override the file.",
            ".SH EXAMPLES"]
    for text, command in EXAMPLES:
        out += [".PP", text, ".RS 4", ".nf", command, ".fi", ".RE"]
    out += [".SH SEE ALSO",
            "Shell completion: \\fBneuralbridge \\-\\-install\\-completion\\fR, or source "
            "the scripts in \\fIcompletions/\\fR. Full documentation: README.md."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "man/neuralbridge.1")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(generate())
    print(target)
