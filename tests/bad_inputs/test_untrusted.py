"""Untrusted files: pickled payloads never run without --trust-pickle; Keras safe mode."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

import builders
from neuralbridge_cli.cli.app import app

runner = CliRunner()


def error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("command", [["convert", "--to", "onnx"], ["inspect"],
                                     ["load", "--as", "onnx"]])
@pytest.mark.parametrize("name", ["model.pt", "model.pth", "model.bin"])
def test_pickle_payload_never_runs(workdir, command, name):
    marker = workdir / "pwned.txt"
    source = builders.pickle_payload(workdir / name, marker)
    result = runner.invoke(app, [command[0], str(source), *command[1:]], catch_exceptions=False)
    assert result.exit_code == 1
    line = error_line(result)
    assert "--trust-pickle" in line and name in line
    assert not marker.exists(), "the pickled payload ran"


def test_the_payload_is_real(workdir):
    """With --trust-pickle the same file does run its payload: the test above means something."""
    marker = workdir / "pwned.txt"
    source = builders.pickle_payload(workdir / "model.pt", marker)
    runner.invoke(app, ["inspect", str(source), "--trust-pickle"], catch_exceptions=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_lambda_refused_in_safe_mode(workdir, suffix):
    source = builders.keras_lambda(workdir / f"model{suffix}")
    result = runner.invoke(app, ["inspect", str(source)], catch_exceptions=False)
    assert result.exit_code == 1
    line = error_line(result)
    assert "Lambda" in line and "--unsafe-keras" in line and "runs code" in line
    allowed = runner.invoke(app, ["inspect", str(source), "--unsafe-keras"],
                            catch_exceptions=False)
    assert allowed.exit_code == 0, allowed.output
