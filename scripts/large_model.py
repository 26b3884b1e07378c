"""Convert an ONNX model just over the 2 GB protobuf limit (weights as external data).

Usage: python scripts/large_model.py [--to onnx|tf] [--gb 2.1] [--keep]
Builds x[batch, N] -> MatMul(W1[N,N]) -> Relu -> MatMul(W2[N,N]) in a temporary folder
(N chosen so the weights total --gb), runs `neuralbridge convert`, and prints the time,
the peak memory of the converter and the sizes written.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build(path: Path, gigabytes: float) -> Path:
    """Write the model with its weights in `<path>.data`; never hold a >2 GB proto."""
    import onnx
    from onnx import TensorProto, helper

    n = int((gigabytes * 2**30 / 8) ** 0.5) // 64 * 64  # two n x n float32 matrices
    rng = np.random.default_rng(0)
    data = path.with_name(path.name + ".data")
    weights, offset = [], 0
    with open(data, "wb") as handle:  # written row block by row block: low memory
        for name in ("W1", "W2"):
            for start in range(0, n, 1024):
                rows = min(1024, n - start)
                block = rng.standard_normal((rows, n), dtype=np.float32) / np.float32(np.sqrt(n))
                handle.write(block.tobytes())
            tensor = TensorProto(name=name, dims=[n, n], data_type=TensorProto.FLOAT,
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", str(offset)),
                               ("length", str(n * n * 4))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            weights.append(tensor)
            offset += n * n * 4
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["y"])], "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--to", default="onnx")
    parser.add_argument("--gb", type=float, default=2.1)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nb-large-", dir=os.environ.get("NB_LARGE_DIR")))
    source = build(folder / "large.onnx", args.gb)
    weights = sum(p.stat().st_size for p in folder.iterdir())
    print(f"model: {source} ({weights / 2**30:.2f} GiB with external data)")
    suffix = {"onnx": ".onnx", "tf": ".savedmodel", "torch": ".pt2", "keras": ".keras",
              "tflite": ".tflite"}.get(args.to, f".{args.to}")
    out = folder / f"out{suffix}"
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "neuralbridge_cli", "convert", str(source),
                           "--to", args.to, "-o", str(out)],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(proc.stdout[-2000:])
    print(proc.stderr[-2000:])
    written = sorted((p.name, _size(p)) for p in folder.iterdir() if p.name.startswith("out"))
    print(f"exit {proc.returncode} in {seconds:.0f} s, peak RSS {peak:.1f} GiB, wrote {written}")
    if not args.keep:
        import shutil

        shutil.rmtree(folder)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
