"""`make bench`: start-up and ONNX -> TF timings against the raw tools, as ratios.

Runs the pairs alternately (A B A B ...) in one session so machine drift hits both,
and reports medians. Results go to stdout and docs/BENCHMARKS.md.
Usage: python scripts/bench.py [--runs 5] [--convert-runs 2] [--skip-convert]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
BIN_DIR = Path(sys.executable).parent
WORK = ROOT / "bench-out"
# Every command runs as in an activated venv: onnx2tf's default run calls the `onnxsim`
# executable, which it finds only on PATH (without it, onnx2tf skips that step silently).
ACTIVATED = {**os.environ, "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"}
NOT_ACTIVATED = {**os.environ, "PATH": os.pathsep.join(
    p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != BIN_DIR)}


def timed(cmd: list[str], cwd: Path = WORK, env=None) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env=env or ACTIVATED)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stderr[-2000:]}")
    return elapsed


def pair(a: list[str], b: list[str], runs: int, before=None,
         env_b=None) -> tuple[float, float, float]:
    """Median seconds of A and B and the median of the pairwise ratios A/B."""
    times_a, times_b = [], []
    for _ in range(runs):
        if before:
            before()
        times_a.append(timed(a))
        if before:
            before()
        times_b.append(timed(b, env=env_b))
    ratios = [x / y for x, y in zip(times_a, times_b)]
    return statistics.median(times_a), statistics.median(times_b), statistics.median(ratios)


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def make_resnet18_onnx() -> Path:
    import torch
    import models

    path = WORK / "resnet18.onnx"
    if not path.exists():
        model = models.torchvision_model("resnet18")
        torch.onnx.export(model, (torch.randn(2, 3, 224, 224),), str(path), dynamo=True,
                          input_names=["x"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--convert-runs", type=int, default=2)
    parser.add_argument("--skip-convert", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    py, nb = str(BIN_DIR / "python"), str(BIN_DIR / "neuralbridge")
    rows = []
    a, b, r = pair([nb, "--help"], [py, "-c", "import typer, rich"], args.runs)
    rows.append(("`neuralbridge --help`", "`python -c 'import typer, rich'`", a, b, r, "<= 1.5"))
    onnx_path = make_resnet18_onnx()
    a, b, r = pair([nb, "inspect", onnx_path.name], [py, "-c", "import typer, rich"], args.runs)
    rows.append(("`neuralbridge inspect resnet18.onnx`", "`python -c 'import typer, rich'`",
                 a, b, r, ""))
    if not args.skip_convert:
        def clean():
            for p in ("nb.savedmodel", "raw_out"):
                shutil.rmtree(WORK / p, ignore_errors=True)

        ours = [nb, "-q", "convert", onnx_path.name, "--to", "tf", "-o", "nb.savedmodel"]
        raw = [str(BIN_DIR / "onnx2tf"), "-i", onnx_path.name, "-o", "raw_out"]
        a, b, r = pair(ours, raw, args.convert_runs, before=clean)
        rows.append(("`neuralbridge convert resnet18.onnx --to tf` (validation included)",
                     "`onnx2tf -i resnet18.onnx -o out` (defaults, venv activated: runs "
                     "onnxsim)", a, b, r, "<= 0.5"))
        a, b, r = pair(ours, raw, args.convert_runs, before=clean, env_b=NOT_ACTIVATED)
        rows.append(("`neuralbridge convert resnet18.onnx --to tf` (validation included)",
                     "the same onnx2tf with `onnxsim` not on PATH (skips simplification)",
                     a, b, r, ""))
    lines = ["# Benchmarks", "", f"Machine: {machine()}. Medians of alternating runs "
             f"({args.runs} for start-up, {args.convert_runs} for conversion); whole-process "
             "wall time.", "",
             "| command | baseline | command s | baseline s | ratio | target |",
             "| --- | --- | --- | --- | --- | --- |"]
    for cmd, base, sa, sb, ratio, target in rows:
        lines.append(f"| {cmd} | {base} | {sa:.2f} | {sb:.2f} | {ratio:.2f} | {target} |")
    lines += ["", "Notes:", "",
              "- Commands run as in an activated venv (the venv's `bin` first on PATH). "
              "onnx2tf's default run then simplifies the graph with the `onnxsim` executable "
              "and writes float32 and float16 `.tflite` files besides the SavedModel; with "
              "`onnxsim` missing from PATH it skips that step without failing (second row).",
              "- `neuralbridge convert` includes its validation: the source on onnxruntime, "
              "the built model against onnxruntime, and the written SavedModel re-loaded and "
              "run on the same inputs.",
              "- Importing TensorFlow + Keras + onnx + onnxruntime alone takes about 0.45x "
              "of the raw onnx2tf run without onnxsim: that import floor is shared by both "
              "tools."]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "BENCHMARKS.md").write_text(text)


if __name__ == "__main__":
    main()
