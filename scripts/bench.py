"""`make bench`: NeuralBridge against the raw tools, side by side, as ratios -> docs/BENCHMARKS.md.

1. Start-up: `neuralbridge --help` against `python -c "import typer, rich"`.
2. Conversion wall time and peak RSS of `neuralbridge convert` against the raw tool doing
   the same step with its defaults (onnx2tf, tf2onnx, a plain torch.onnx.export script,
   onnx2torch.convert), for resnet18, mobilenet_v3_small and a transformer encoder.
3. Inference latency of the converted TF model against its PyTorch source (and, for
   mobilenet_v3_small, against Keras' own MobileNetV3Small as a TF-native reference).

Pairs run alternately (A B A B ...) so machine drift hits both; medians are reported.
Usage: python scripts/bench.py [--runs 7] [--convert-runs 2] [--models resnet18,...]
       [--skip-convert] [--skip-latency]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.executable).parent
WORK = ROOT / "bench-out"
# Every command runs as in an activated venv: onnx2tf's default run calls the `onnxsim`
# executable, which it finds only on PATH (without it, onnx2tf skips that step silently).
# as a user's shell runs them: with the byte-code cache (PYTHONDONTWRITEBYTECODE, set on some
# machines, makes every start compile the package from source, ~15 ms on `--help`)
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ACTIVATED = {**USER_ENV, "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
             "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"),
                                            os.environ.get("PYTHONPATH", "")])}
NOT_ACTIVATED = {**ACTIVATED, "PATH": os.pathsep.join(
    p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != BIN_DIR)}
MODELS = {  # name -> (import path, model args) for `neuralbridge convert`
    "resnet18": ("models:torchvision_model", {"name": "resnet18"}),
    "mobilenet_v3_small": ("models:torchvision_model", {"name": "mobilenet_v3_small"}),
    "transformer_encoder": ("models:transformer_encoder", {}),
}
RAW_TORCH_EXPORT = """
import sys, torch, models
name, out = sys.argv[1], sys.argv[2]
model = models.transformer_encoder() if name == "transformer_encoder" else \\
    models.torchvision_model(name)
x = torch.randn(2, 16, 32) if name == "transformer_encoder" else torch.randn(2, 3, 224, 224)
torch.onnx.export(model, (x,), out)
"""
RAW_ONNX2TORCH = "import sys, onnx2torch; onnx2torch.convert(sys.argv[1])"


class Failed(Exception):
    """A benchmarked command exited non-zero."""


def timed(cmd: list[str], env=None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the process) of one run; Failed if it exits non-zero."""
    started = time.perf_counter()
    with open(WORK / ".stderr", "w") as err:
        proc = subprocess.Popen(cmd, cwd=WORK, stdout=subprocess.DEVNULL, stderr=err,
                                env=env or ACTIVATED)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (WORK / ".stderr").read_text().strip().splitlines()[-1:] or ["?"]
        raise Failed(f"exit {proc.returncode}: {tail[0][:160]}")
    return elapsed, usage.ru_maxrss / 1024


def pair(a: list[str], b: list[str], runs: int, before=None, env_b=None) -> dict:
    """Medians of A and B (seconds, peak MiB) and the median of the pairwise ratios A/B.
    A command that fails is not run again; its error is kept ("a_error"/"b_error")."""
    ta, tb, ma, mb, errors = [], [], [], [], {}
    for _ in range(runs):
        for key, cmd, times, mems, env in (("a", a, ta, ma, None), ("b", b, tb, mb, env_b)):
            if key in errors:
                continue
            if before:
                before()
            try:
                seconds, mib = timed(cmd, env)
            except Failed as exc:
                errors[key] = str(exc)
                continue
            times.append(seconds)
            mems.append(mib)
    result = {f"{k}_error": v for k, v in errors.items()}
    for key, times, mems in (("a", ta, ma), ("b", tb, mb)):
        if times:
            result[key], result[f"{key}_mib"] = statistics.median(times), statistics.median(mems)
    if ta and tb and not errors:
        result["ratio"] = statistics.median(x / y for x, y in zip(ta, tb))
    return result


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


def nb(*args: str) -> list[str]:
    return [str(BIN_DIR / "neuralbridge"), "-q", *args, "--force"]


def prepare(name: str) -> None:
    """The model's ONNX file and SavedModel, made once with neuralbridge (not timed)."""
    source, args = MODELS[name]
    for target, out in (("onnx", f"{name}.onnx"), ("tf", f"{name}.savedmodel")):
        if not (WORK / out).exists():
            timed(nb("convert", source, "--model-args", json.dumps(args), "--to", target,
                     "-o", out))


def conversion_rows(name: str, runs: int) -> list[tuple]:
    """(route, ours, raw tool, result dict or error text) for one model."""
    source, args = MODELS[name]
    prepare(name)
    py = str(BIN_DIR / "python")
    outs = ("nb_out.onnx", "nb_out.savedmodel", "nb_out.pt2", "raw_out", "raw_out.onnx")

    def clean():
        for p in outs:
            target = WORK / p
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else \
                target.unlink(missing_ok=True)

    cases = [
        ("torch -> onnx", nb("convert", source, "--model-args", json.dumps(args), "--to",
                             "onnx", "-o", "nb_out.onnx"),
         [py, "-c", RAW_TORCH_EXPORT, name, "raw_out.onnx"], "plain `torch.onnx.export` script"),
        ("onnx -> tf", nb("convert", f"{name}.onnx", "--to", "tf", "-o", "nb_out.savedmodel"),
         [str(BIN_DIR / "onnx2tf"), "-i", f"{name}.onnx", "-o", "raw_out"],
         "`onnx2tf -i m.onnx -o out`"),
        ("onnx -> torch", nb("convert", f"{name}.onnx", "--to", "torch", "-o", "nb_out.pt2"),
         [py, "-c", RAW_ONNX2TORCH, f"{name}.onnx"], "`onnx2torch.convert(m.onnx)`"),
        ("tf -> onnx", nb("convert", f"{name}.savedmodel", "--to", "onnx", "-o", "nb_out.onnx"),
         [py, "-m", "tf2onnx.convert", "--saved-model", f"{name}.savedmodel", "--output",
          "raw_out.onnx"], "`python -m tf2onnx.convert --saved-model`"),
    ]
    rows = []
    for route, ours, raw, label in cases:
        rows.append((route, label, pair(ours, raw, runs, before=clean)))
        print(route, name, rows[-1][2], flush=True)
    clean()
    return rows


LATENCY_SCRIPT = """
import json, sys, time, statistics
sys.path.insert(0, 'tests')
import numpy as np
from neuralbridge_cli.api import load_as_torch, load_as_tf
import models
name, saved, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch
torch.set_num_threads(2)
model = models.transformer_encoder() if name == 'transformer_encoder' else \\
    models.torchvision_model(name)
shape = (1, 16, 32) if name == 'transformer_encoder' else (1, 3, 224, 224)
x = np.random.default_rng(0).standard_normal(shape).astype('float32')
def median_ms(fn):
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)
with torch.no_grad():
    xt = torch.from_numpy(x)
    result = {'torch_ms': median_ms(lambda: model(xt))}
import tensorflow as tf
loaded = tf.saved_model.load(saved)
xf = tf.constant(x)
result['converted_tf_ms'] = median_ms(lambda: loaded.serve(xf))
if name == 'mobilenet_v3_small':
    import keras
    native = keras.applications.MobileNetV3Small(weights=None, input_shape=(224, 224, 3))
    serve = tf.function(lambda t: native(t, training=False))
    xn = tf.constant(np.transpose(x, (0, 2, 3, 1)))
    result['keras_native_ms'] = median_ms(lambda: serve(xn))
print(json.dumps(result))
"""


def latency(name: str, runs: int) -> dict | str:
    prepare(name)
    proc = subprocess.run([str(BIN_DIR / "python"), "-c", LATENCY_SCRIPT, name,
                           str(WORK / f"{name}.savedmodel"), str(runs)], cwd=ROOT,
                          capture_output=True, text=True, env={**ACTIVATED,
                                                               "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        return f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:160]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _seconds(r: dict, key: str, digits: int = 1) -> str:
    return f"{r[key]:.{digits}f}" if key in r else f"failed ({r[key + '_error']})"


def _mib(r: dict, key: str) -> str:
    return f"{r[key + '_mib']:.0f}" if key in r else ""


def _ratio(r: dict, suffix: str = "") -> str:
    if suffix:
        return f"{r['a_mib'] / r['b_mib']:.2f}" if "a" in r and "b" in r else ""
    return f"{r['ratio']:.2f}" if "ratio" in r else ""


def render(args, startup: list, conversions: dict, latencies: dict) -> str:
    lines = ["# Benchmarks", "", f"Machine: {machine()}. Generated by `make bench` "
             f"(scripts/bench.py) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"load average before the run {os.getloadavg()[0]:.1f}. Whole-process wall "
             f"time, medians of alternating runs ({args.runs} for start-up, "
             f"{args.convert_runs} for conversions); ratio = median of pairwise ratios.", "",
             "## Start-up and the core ONNX -> TF target", "",
             "| command | baseline | command s | baseline s | ratio | target |",
             "| --- | --- | --- | --- | --- | --- |"]
    for cmd, base, r, target in startup:
        lines.append(f"| {cmd} | {base} | {_seconds(r, 'a', 2)} | {_seconds(r, 'b', 2)} | "
                     f"{_ratio(r)} | {target} |")
    if conversions:
        lines += ["", "## Conversion against the raw tools", "",
                  "Each raw tool does the same step with its defaults; NeuralBridge also "
                  "validates (source and converted model run on the same inputs) and "
                  "re-loads what it wrote.", "",
                  "| model | route | raw tool | NeuralBridge s | raw s | time ratio | "
                  "NeuralBridge MiB | raw MiB | memory ratio |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, rows in conversions.items():
            for route, label, r in rows:
                lines.append(f"| {name} | {route} | {label} | {_seconds(r, 'a')} | "
                             f"{_seconds(r, 'b')} | {_ratio(r)} | {_mib(r, 'a')} | "
                             f"{_mib(r, 'b')} | {_ratio(r, '_mib')} |")
    if latencies:
        lines += ["", "## Inference latency of the converted model", "",
                  "Batch 1, median of the runs after 5 warm-ups, 2 threads. The converted "
                  "SavedModel (from `neuralbridge convert ... --to tf`) against its PyTorch "
                  "source; for mobilenet_v3_small also Keras' own MobileNetV3Small (not the "
                  "same weights or exactly the same architecture: a TF-native yardstick).", "",
                  "| model | PyTorch ms | converted TF ms | TF / PyTorch | Keras-native ms |",
                  "| --- | --- | --- | --- | --- |"]
        for name, r in latencies.items():
            if isinstance(r, str):
                lines.append(f"| {name} | {r} | | | |")
                continue
            native = f"{r['keras_native_ms']:.1f}" if "keras_native_ms" in r else ""
            lines.append(f"| {name} | {r['torch_ms']:.1f} | {r['converted_tf_ms']:.1f} | "
                         f"{r['converted_tf_ms'] / r['torch_ms']:.2f} | {native} |")
    lines += ["", "## Notes", "",
              "- Commands run as in an activated venv (the venv's `bin` first on PATH). "
              "onnx2tf's default run then simplifies the graph with the `onnxsim` executable "
              "and writes float32 and float16 `.tflite` files besides the SavedModel; with "
              "`onnxsim` missing from PATH it skips that step without failing (second row "
              "of the first table).",
              "- Importing TensorFlow + Keras + onnx + onnxruntime alone takes about 0.45x of "
              "the raw onnx2tf run without onnxsim: both tools pay that floor.",
              "- `--help` renders click's plain help: typer's rich help panels cost ~150 ms "
              "of imports (rich.console, rich.markdown, markdown_it) per call."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--convert-runs", type=int, default=2)
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--skip-convert", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    py = str(BIN_DIR / "python")
    base = [py, "-c", "import typer, rich"]
    startup = [("`neuralbridge --help`", "`python -c 'import typer, rich'`",
                pair([str(BIN_DIR / "neuralbridge"), "--help"], base, args.runs), "<= 1.5")]
    prepare("resnet18")
    startup.append(("`neuralbridge inspect resnet18.onnx`", "`python -c 'import typer, rich'`",
                    pair([str(BIN_DIR / "neuralbridge"), "inspect", "resnet18.onnx"], base,
                         args.runs), ""))
    conversions, latencies = {}, {}
    if not args.skip_convert:
        def clean():
            for p in ("nb.savedmodel", "raw_out"):
                shutil.rmtree(WORK / p, ignore_errors=True)

        ours = nb("convert", "resnet18.onnx", "--to", "tf", "-o", "nb.savedmodel")
        raw = [str(BIN_DIR / "onnx2tf"), "-i", "resnet18.onnx", "-o", "raw_out"]
        startup.append(("`neuralbridge convert resnet18.onnx --to tf` (validation included)",
                        "`onnx2tf -i resnet18.onnx -o out` (defaults, venv activated)",
                        pair(ours, raw, args.convert_runs, before=clean), "<= 0.5"))
        startup.append(("the same", "the same onnx2tf, `onnxsim` not on PATH",
                        pair(ours, raw, args.convert_runs, before=clean,
                             env_b=NOT_ACTIVATED), ""))
        for name in [m for m in args.models.split(",") if m]:
            conversions[name] = conversion_rows(name, args.convert_runs)
    if not args.skip_latency:
        for name in [m for m in args.models.split(",") if m]:
            latencies[name] = latency(name, args.latency_runs)
    text = render(args, startup, conversions, latencies)
    print(text)
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "BENCHMARKS.md").write_text(text)


if __name__ == "__main__":
    main()
