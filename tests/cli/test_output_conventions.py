"""Output conventions: no control codes in pipes, NO_COLOR on a terminal, TensorFlow's
start-up noise only with --verbose, --json on every command that reports something."""
from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from neuralbridge_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
COLOR_SGR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")
COMMANDS_WITHOUT_REPORT: set[str] = set()  # a command that prints no result needs no --json


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TF_CPP_MIN_LOG_LEVEL", "NO_COLOR",
                        "NEURALBRIDGE_VERBOSE")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def run_cli(*args, cwd=None, **env):
    return subprocess.run([sys.executable, "-m", "neuralbridge_cli", *args], capture_output=True,
                          text=True, env=clean_env(**env), cwd=cwd, timeout=300)


def run_in_terminal(*args, **env) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal; return what it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "neuralbridge_cli", *args], stdin=slave,
                            stdout=slave, stderr=slave, env=clean_env(**env), close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def relu_onnx(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    path = tmp_path_factory.mktemp("onnx") / "relu.onnx"
    onnx.save(helper.make_model(graph), path)
    return path


@pytest.mark.parametrize("args", [["--help"], ["convert", "--help"], ["doctor"],
                                  ["inspect", "missing.onnx"], ["inspect", "RELU"]])
def test_no_control_codes_in_pipes(args, relu_onnx):
    args = [str(relu_onnx) if a == "RELU" else a for a in args]
    proc = run_cli(*args)
    assert "\x1b" not in proc.stdout and "\x1b" not in proc.stderr
    assert proc.stdout or proc.stderr


def test_validation_table_keeps_its_numbers_in_a_pipe(relu_onnx, tmp_path):
    """Redirected output (CI logs, > report.txt) has no width: the 9-column table must not be
    squeezed to 80 columns with its numbers cut to '2.86e…'."""
    env = {k: v for k, v in clean_env().items() if k != "COLUMNS"}
    proc = subprocess.run([sys.executable, "-m", "neuralbridge_cli", "convert", str(relu_onnx),
                           "--to", "onnx", "-o", str(tmp_path / "r.onnx")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("│ y "))
    assert "…" not in row and "pass" in row, proc.stdout
    assert "mean abs error" in proc.stdout and "cosine" in proc.stdout


def test_no_color_on_a_terminal():
    assert COLOR_SGR.search(run_in_terminal("doctor"))  # a terminal does get colours...
    for args in (["doctor"], ["--help"], ["inspect", "missing.onnx"]):
        assert not COLOR_SGR.search(run_in_terminal(*args, NO_COLOR="1"))  # ...unless NO_COLOR


def test_error_is_one_line_on_stderr():
    proc = run_cli("inspect", "missing.onnx")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error:")


def test_tensorflow_noise_only_with_verbose(tmp_path):
    from neuralbridge_cli import lazy

    keras = lazy.require("keras")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.save(tmp_path / "m.keras")
    quiet = run_cli("inspect", "m.keras", cwd=tmp_path)
    assert quiet.returncode == 0 and "Sequential" in quiet.stdout
    assert quiet.stderr == ""
    verbose = run_cli("-v", "inspect", "m.keras", cwd=tmp_path)
    assert verbose.returncode == 0
    assert re.search(r"oneDNN|absl|cpu_feature_guard|cuda", verbose.stderr), verbose.stderr


def test_json_on_every_reporting_command():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        if name in COMMANDS_WITHOUT_REPORT:
            continue
        opts = {o for p in command.params for o in getattr(p, "opts", [])}
        assert "--json" in opts, f"{name} has no --json"
