"""Shell completion: the checked-in scripts are current, and TAB completes commands, option
values and (by falling back to file names) model paths."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuralbridge_cli.cli.app import app
from neuralbridge_cli.cli.completion import SHELLS, completion_script
from neuralbridge_cli.formats import FORMATS
from neuralbridge_cli.pipeline import TARGETS

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.mark.parametrize("shell", SHELLS)
def test_scripts_are_current(shell):
    path = ROOT / "completions" / f"neuralbridge.{shell}"
    assert path.read_text() == completion_script(shell), "stale: run `make completions`"


def bash_complete(line: str) -> list[str]:
    """What bash's completion function gets for `line` (the cursor on its last word)."""
    words = line.split(" ")
    result = runner.invoke(app, [], prog_name="neuralbridge", env={
        "_NEURALBRIDGE_COMPLETE": "complete_bash", "COMP_WORDS": line,
        "COMP_CWORD": str(len(words) - 1)})
    assert result.exit_code == 0, result.output
    return result.output.split()


def test_commands():
    assert bash_complete("neuralbridge con") == ["convert"]
    assert set(bash_complete("neuralbridge ")) >= {"convert", "export-onnx", "load", "inspect",
                                                   "doctor"}


def test_option_values():
    assert bash_complete("neuralbridge convert m.onnx --to ") == list(TARGETS)
    assert bash_complete("neuralbridge convert m.onnx -t tf") == ["tf", "tflite"]
    assert bash_complete("neuralbridge load m.onnx --as ") == ["torch", "tf", "onnx"]
    assert bash_complete("neuralbridge convert m --from ") == list(FORMATS)
    assert bash_complete("neuralbridge convert m.pt --dtype ids:int") == [
        "ids:int8", "ids:int16", "ids:int32", "ids:int64"]
    assert "torch:tf" in bash_complete("neuralbridge doctor --route torch:")
    assert "--input-shape" in bash_complete("neuralbridge convert m.onnx --in")


def test_precision_values_where_the_option_exists():
    command = next((c for c in ("convert", "export-onnx") if "--precision" in bash_complete(
        f"neuralbridge {c} m.onnx --prec")), None)
    if command is None:
        pytest.skip("no command has --precision yet")
    assert {"fp32", "fp16", "int8"} <= set(bash_complete(
        f"neuralbridge {command} m.onnx --precision "))


def test_model_argument_falls_back_to_files():
    assert bash_complete("neuralbridge convert mod") == []  # bash then lists files (-o default)
    zsh = runner.invoke(app, [], prog_name="neuralbridge", env={
        "_NEURALBRIDGE_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "neuralbridge inspect "})
    assert zsh.output.strip() == "_files"


@pytest.fixture
def bin_dir(tmp_path):
    """A `neuralbridge` executable on PATH that runs this checkout."""
    exe = tmp_path / "neuralbridge"
    exe.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                   "from neuralbridge_cli.cli.app import main\nmain()\n")
    exe.chmod(0o755)
    return tmp_path


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_real_bash_with_the_sourced_script(bin_dir):
    (bin_dir / "model.onnx").write_bytes(b"")
    script = f"""
source {ROOT / 'completions' / 'neuralbridge.bash'}
complete -p neuralbridge
run() {{ COMP_WORDS=("$@"); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMPREPLY=()
        _neuralbridge_completion neuralbridge; echo "[${{COMPREPLY[*]}}]"; }}
run neuralbridge con
run neuralbridge convert model.onnx --to ''
run neuralbridge convert mod
"""
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True,
                          env=env, cwd=bin_dir, timeout=120)
    lines = proc.stdout.splitlines()
    assert "-o default" in lines[0]  # empty COMPREPLY -> bash completes file names
    assert lines[1] == "[convert]"
    assert lines[2] == "[" + " ".join(TARGETS) + "]"
    assert lines[3] == "[]"
