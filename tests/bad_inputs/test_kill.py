"""SIGKILL at several moments leaves nothing or the previous file; Ctrl-C exits 130, no temps.

Each run is a real `python -m neuralbridge_cli` subprocess. Kill points are defined by the
progress lines on stderr (a moment in the conversion) plus a delay, so they land in the same
phase on a fast or a loaded machine.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import builders

ROOT = Path(__file__).resolve().parents[2]


def big_onnx(path: Path, mb: int = 64) -> Path:
    """An ONNX model whose save takes a noticeable time (one big MatMul weight)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cols = mb * 2**20 // 4 // 256
    weight = np.random.default_rng(0).normal(size=(256, cols)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def digest(path: Path) -> str | None:
    """Content hash of a file or a folder tree; None when absent."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def start(args, cwd: Path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, "-m", "neuralbridge_cli", "convert", *map(str, args)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()
    return proc, lines


def wait_for(lines, marker: str, proc, timeout: float = 240) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(marker in ln for ln in lines):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError(f"no {marker!r} within {timeout}s: {''.join(lines)}")


def kill_at(args, cwd, marker, delay, sig=signal.SIGKILL):
    """Run, send `sig` `delay` s after the stderr line with `marker`; (returncode, seconds, err)."""
    proc, lines = start(args, cwd)
    reached = wait_for(lines, marker, proc)
    time.sleep(delay)
    sent = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(sig)
    code = proc.wait(timeout=60)
    print(f"signal {int(sig)} at {marker}+{delay}s: exit {code} after "
          f"{time.monotonic() - sent:.2f}s")
    return code, time.monotonic() - sent, "".join(lines), reached


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".nbtmp-", ".nbold-")))


# (marker on stderr, delay after it): the save of a 64 MB ONNX file, and just before it;
# all of them run in CI (about a minute in all)
CI_KILL_POINTS = [("saving", 0.05), ("running the source", 0.0)]
MORE_KILL_POINTS = [("loading", 0.0), ("saving", 0.0), ("saving", 0.2), ("saving", 0.5),
                    ("validating", 0.0), ("saving", 1.0)]


def complete_onnx(path: Path) -> bool:
    """The whole model: passes onnx.checker and onnxruntime opens it."""
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(path))
    onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return True


def _kill_case(workdir, marker, delay, previous: bool):
    source = big_onnx(workdir / "big.onnx")
    out = workdir / "out.onnx"
    if previous:
        out.write_bytes(b"previous model")
    before = digest(out)
    code, _, err, _ = kill_at([source, "--to", "onnx", "-o", out, "--force"], workdir, marker,
                              delay)
    assert code in (-signal.SIGKILL, 0), err
    # never half a model: the previous file (or nothing), or - once renamed - the new one whole
    assert digest(out) == before or complete_onnx(out), f"half-written at {marker}+{delay}s"
    return code


@pytest.mark.parametrize("marker,delay", CI_KILL_POINTS)
def test_sigkill_leaves_previous_file(workdir, marker, delay):
    _kill_case(workdir, marker, delay, previous=True)


@pytest.mark.parametrize("marker,delay", MORE_KILL_POINTS)
@pytest.mark.parametrize("previous", [True, False])
def test_sigkill_at_more_moments(workdir, marker, delay, previous):
    _kill_case(workdir, marker, delay, previous)


@pytest.mark.parametrize("delay", [0.0, 0.5, 2.0])
def test_sigkill_during_savedmodel_write(workdir, delay):
    source = builders.onnx_mlp(workdir / "m.onnx") and workdir / "m.onnx"
    out = workdir / "m.savedmodel"
    out.mkdir()
    (out / "saved_model.pb").write_bytes(b"previous")
    before = digest(out)
    code, _, err, _ = kill_at([source, "--to", "tf", "-o", out, "--force"], workdir, "saving",
                              delay)
    assert code in (-signal.SIGKILL, 0), err
    if digest(out) != before:  # renamed in before the kill: a whole SavedModel that loads
        import tensorflow as tf

        assert tf.saved_model.load(str(out)).signatures["serving_default"] is not None


def test_ctrl_c_during_save_exits_130_and_cleans_up(workdir):
    source = big_onnx(workdir / "big.onnx")
    code, seconds, err, _ = kill_at([source, "--to", "onnx", "-o", workdir / "out.onnx"],
                                    workdir, "saving", 0.05, signal.SIGINT)
    assert code in (130, 0), err
    assert seconds < 5
    assert leftovers(workdir) == []
    if code == 130:
        assert not (workdir / "out.onnx").exists()
        assert "interrupted" in err and "Traceback" not in err


def test_ctrl_c_during_savedmodel_write_exits_130(workdir):
    """The TF route: Ctrl-C while the SavedModel is written (the case that used to exit 1)."""
    source = builders.onnx_mlp(workdir / "m.onnx") and workdir / "m.onnx"
    code, seconds, err, _ = kill_at([source, "--to", "tf", "-o", workdir / "m.savedmodel"],
                                    workdir, "saving", 0.1, signal.SIGINT)
    assert code in (130, 0), err
    assert seconds < 5, f"took {seconds:.1f}s to stop"
    assert leftovers(workdir) == []
    if code == 130:
        # the interrupt may land before the rename (nothing there) or after it, during the
        # validation of the written model (then it is whole): never half a SavedModel
        out = workdir / "m.savedmodel"
        assert not out.exists() or ((out / "saved_model.pb").is_file()
                                    and (out / "variables").is_dir()), sorted(out.rglob("*"))
        assert "Traceback" not in err
