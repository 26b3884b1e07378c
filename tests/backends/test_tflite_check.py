"""The structural check that stands between a damaged .tflite file and the TFLite runtime."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from neuralbridge_cli.backends.tflite_check import Malformed, check_file

DATA = Path(__file__).resolve().parents[1] / "bad_inputs" / "data"
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(DATA.parent))  # the bad-input builders
import builders  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return builders.tflite_dense(tmp_path_factory.mktemp("tfl") / "dense.tflite")


def test_a_converted_model_passes(good):
    check_file(good)


@pytest.mark.parametrize("keep", [8, 40, 0.5])
def test_truncated_files_are_malformed(good, tmp_path, keep):
    data = good.read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(Malformed):
        check_file(cut)


def test_an_out_of_range_tensor_index_is_malformed(good, tmp_path):
    """Every int32 equal to a graph input index, raised past the tensor count: some of them
    are the indices the runtime would follow out of bounds."""
    import struct

    from neuralbridge_cli.backends.onnx_to_tf import _tflite_interpreter

    data = bytearray(good.read_bytes())
    tensors = len(_tflite_interpreter(str(good)).get_tensor_details())
    index = _tflite_interpreter(str(good)).get_input_details()[0]["index"]
    hits = [at for at in range(0, len(data) - 3, 4)
            if struct.unpack_from("<i", data, at)[0] == index]
    caught = 0
    for at in hits:
        bad = bytearray(data)
        struct.pack_into("<i", bad, at, tensors + 1000)
        (tmp_path / "bad.tflite").write_bytes(bad)
        try:
            check_file(tmp_path / "bad.tflite")
        except Malformed:
            caught += 1
    assert caught >= 1


def test_the_file_that_segfaulted_the_runtime_is_one_error_line(tmp_path):
    """Found by `make fuzz` (exit 139 from inspect); run in a child process, since a
    regression would take pytest down with it."""
    proc = subprocess.run([sys.executable, "-m", "neuralbridge_cli", "inspect",
                           str(DATA / "fuzz_segfault.tflite")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "not a readable TFLite model" in lines[0], proc.stderr
