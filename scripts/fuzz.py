"""`make fuzz`: mutate small valid ONNX / .keras / .tflite files N times (default 10,000),
run inspect (and convert on some), and report the count and any crash (not NeuralBridgeError).

Usage: python scripts/fuzz.py [N]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "bad_inputs")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from neuralbridge_cli import lazy  # noqa: E402

lazy._prepare_tensorflow_import()  # triton before TensorFlow (see ENVIRONMENT.md)

import warnings  # noqa: E402

warnings.simplefilter("ignore")

from fuzzing import Tally, build_test, make_seeds  # noqa: E402

CONVERT_EVERY = {"onnx": 1, "keras": 50, "tflite": 50}


def main() -> int:
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        seeds = make_seeds(Path(folder))
    tally = Tally()
    build_test(seeds, tally, examples, CONVERT_EVERY, raise_on_crash=False, derandomize=False)()
    print(tally.summary() + f" in {time.perf_counter() - started:.0f} s")
    kinds = Counter((kind, name, message) for kind, name, message, _ in tally.crashes)
    for (kind, name, message), count in kinds.most_common():
        print(f"  crash x{count}: {kind}: {name}: {message}")
    if tally.crashes:
        print(tally.crashes[0][3])
    return 1 if tally.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
