"""--help and inspect of an ONNX file must import neither torch nor TensorFlow."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import sys
from neuralbridge_cli.cli.app import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "tensorflow", "keras", "onnx2tf", "onnx2torch", "tf2onnx")
               if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def heavy_modules(*args: str, cwd=None) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          cwd=cwd)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")][-1]
    return [m for m in line[6:].split(",") if m]


@pytest.mark.parametrize("args", [["--help"], ["convert", "--help"], ["export-onnx", "--help"],
                                  ["load", "--help"], ["inspect", "--help"], ["--version"],
                                  ["doctor"], ["doctor", "--help"]])
def test_help_is_light(args):
    assert heavy_modules(*args) == []


def test_inspect_onnx_is_light(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph), tmp_path / "relu.onnx")
    assert heavy_modules("inspect", "relu.onnx", "--json", cwd=tmp_path) == []
