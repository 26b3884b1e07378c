"""`neuralbridge doctor` through the CLI: tables, --json, --route exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuralbridge_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_doctor_text():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    for text in ("Packages", "torch", "tensorflow", "onnx2torch", "Routes", "torchscript"):
        assert text in result.output


def test_doctor_json_and_route():
    result = runner.invoke(app, ["doctor", "--json", "--route", "torch:tf", "-r", "keras:torch"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True
    assert [(c["source"], c["target"], c["available"]) for c in data["checked"]] == [
        ("torch", "tf", True), ("tf", "torch", True)]
    names = {p["name"]: p["version"] for p in data["packages"]}
    assert names["onnx"] and names["torch"]


def test_doctor_bad_route_is_usage_error():
    result = runner.invoke(app, ["doctor", "--route", "torch:caffe"])
    assert result.exit_code == 2
    assert "bad route" in result.output


@pytest.mark.slow
def test_doctor_without_torch_in_a_fresh_venv(tmp_path):
    """A venv with only the core dependencies: routes needing torch are unavailable, the
    extra is named, and `--route torch:onnx` exits 1 (needs the package registry)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"),
                    "typer", "rich", "numpy", "onnx", "onnxruntime", "pyyaml"], check=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([str(py), "-m", "neuralbridge_cli", "doctor", "--json", "--route",
                           "torch:onnx"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["checked"][0]["missing"] == ["torch"]
    assert data["checked"][0]["fix"] == "pip install 'neuralbridge-cli[torch]'"
    assert next(p for p in data["packages"] if p["name"] == "torch")["version"] is None
    proc = subprocess.run([str(py), "-m", "neuralbridge_cli", "doctor", "--route", "onnx:onnx"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
