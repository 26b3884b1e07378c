"""Every bad input in the corpus: exit code, one `error:` line, no traceback, nothing written."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cases import CASES
from neuralbridge_cli.cli.app import app

COMMANDS = {"convert", "inspect", "load", "export-onnx"}
runner = CliRunner()


def run_cli(args):
    args = [str(a) for a in args]
    if args[0] not in COMMANDS:
        args = ["convert", *args]
    return runner.invoke(app, args, catch_exceptions=False)


def snapshot(folder):
    return {p.relative_to(folder) for p in folder.rglob("*")}


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, workdir):
    args = case.make(workdir)
    before = snapshot(workdir)
    result = run_cli(args)
    output = result.output
    lines = error_lines(output)
    assert len(lines) == 1, output
    line = lines[0]
    assert "Traceback" not in output, output
    assert result.exit_code == case.code, output
    assert case.phrase.lower() in line.lower(), line
    if case.todo:
        assert case.todo.lower() in line.lower(), line
    if case.names:
        assert case.names in line, line
    assert snapshot(workdir) == before, "something was written"


def test_corpus_size():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case_id", ["missing-file", "random-onnx", "unknown-option",
                                     "atol-negative"])
def test_json_error_object(case_id, workdir):
    """--json prints one JSON object with the error, also on exit 1 and 2."""
    case = next(c for c in CASES if c.id == case_id)
    args = [str(a) for a in case.make(workdir)] + ["--json"]
    if args[0] not in COMMANDS:
        args = ["convert", *args]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == case.code
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["exit_code"] == case.code
    assert case.phrase.lower() in data["error"].lower()


def test_debug_shows_the_traceback(workdir):
    case = next(c for c in CASES if c.id == "random-onnx")
    args = ["--debug", "convert"] + [str(a) for a in case.make(workdir)]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 1 and "Traceback" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_as_a_process(case, workdir):
    """The same corpus through `python -m neuralbridge_cli`: also catches what libraries print
    straight to the process's stderr (logging handlers, C++ logs), which CliRunner misses."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    args = [str(a) for a in case.make(workdir)]
    if args[0] not in COMMANDS:
        args = ["convert", *args]
    before = snapshot(workdir)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-m", "neuralbridge_cli", *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == case.code, done.stderr
    assert len(error_lines(done.stderr)) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert snapshot(workdir) == before
