"""Reduced-precision variants (fp16, int8) of ONNX and TFLite models, and what they cost.

ONNX fp16: weights and activations in float16 through onnxconverter-common, with the inputs
and outputs kept float32 and numerically sensitive ops (normalisations, softmax, exp/log,
reductions) left in float32. ONNX int8: onnxruntime quantization, static (QDQ, per channel,
calibrated on representative inputs) for graphs with convolutions, dynamic (weights only,
activations quantized at run time) otherwise, or as --quantization says. TFLite: the
TFLite converter's float16 weights, or int8 with a representative dataset (float fallback
for ops without an int8 kernel). Calibration data comes from --calibration FILE or from
seeded inputs drawn from the model's input specs.
"""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import lazy
from .errors import ConversionError, UsageError, first_line
from .options import DEFAULT_ATOL, DEFAULT_RTOL, PRECISIONS, Options

# default (atol, rtol x output scale) of the built-in validation for each precision
DEFAULT_TOLERANCES = {"fp16": (1e-3, 1e-2), "int8": (1e-2, 0.1)}
FP32_SENSITIVE_OPS = ["LayerNormalization", "BatchNormalization", "InstanceNormalization",
                      "GroupNormalization", "Softmax", "LogSoftmax", "Exp", "Log", "Pow",
                      "Sqrt", "Reciprocal", "ReduceMean", "ReduceSum", "ReduceSumSquare",
                      "ReduceL2", "Erf", "Range", "Resize", "Upsample"]
CALIBRATION_SAMPLES = 8
TARGETS = ("onnx", "tflite")


def prepare(options: Options, target: str) -> None:
    """Check the target takes --precision; loosen tolerances the user left at the defaults
    (an fp16/int8 model cannot match fp32 to 1e-4)."""
    if target not in TARGETS:
        raise UsageError(f"--precision {options.precision} is for --to onnx or tflite, not "
                         f"{target}")
    if options.atol == DEFAULT_ATOL and options.rtol == DEFAULT_RTOL:
        options.atol, options.rtol = DEFAULT_TOLERANCES[options.precision]


# ---------------------------------------------------------------- calibration data
def calibration_sets(specs, options: Options, count: int = CALIBRATION_SAMPLES) -> list[list]:
    """Representative input sets at batch 1: rows of --calibration, else seeded draws."""
    import numpy as np

    from .specs import dummy_inputs

    if options.calibration:
        from .datafiles import arrays_for, read_data

        arrays = [np.asarray(a) for a in arrays_for(specs, read_data(options.calibration))]
        rows = arrays[0].shape[0] if arrays[0].ndim else 1
        return [[a[i:i + 1] for a in arrays] for i in range(rows)]
    return [dummy_inputs(specs, 1, seed=1000 + k) for k in range(count)]


def _permuted(arrays, perms: dict) -> list:
    import numpy as np

    return [np.ascontiguousarray(np.transpose(a, perms[i])) if i in perms else a
            for i, a in enumerate(arrays)]


# ---------------------------------------------------------------- ONNX
def onnx_fp16(proto):
    """A float16 copy of `proto` with float32 inputs/outputs and sensitive ops in fp32."""
    lazy.require("onnxconverter_common", "write fp16 ONNX models")
    from onnxconverter_common import float16

    with _quiet():
        return float16.convert_float_to_float16(
            proto, keep_io_types=True,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + FP32_SENSITIVE_OPS)


def onnx_int8(proto, calibration: list[list], method: str = "auto"):
    """An int8 copy of `proto`: static QDQ (calibrated) or dynamic quantization."""
    onnx = lazy.onnx()
    quant = lazy.require("onnxruntime.quantization", "write int8 ONNX models")
    if method == "auto":
        method = "static" if any(n.op_type in ("Conv", "ConvTranspose") for n in
                                 proto.graph.node) else "dynamic"
    names = [i.name for i in proto.graph.input
             if i.name not in {init.name for init in proto.graph.initializer}]
    with tempfile.TemporaryDirectory(prefix="nb-quant-") as tmp, _quiet():
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(proto, src)
        if method == "static":
            reader = _calibration_reader([dict(zip(names, arrays)) for arrays in calibration], quant)
            quant.quantize_static(src, dst, reader, quant_format=quant.QuantFormat.QDQ,
                                  per_channel=True, activation_type=quant.QuantType.QInt8,
                                  weight_type=quant.QuantType.QInt8)
        else:
            quant.quantize_dynamic(src, dst, weight_type=quant.QuantType.QInt8)
        return onnx.load(dst)


def _calibration_reader(feeds, quant):
    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    return Reader()


class _quiet:
    """onnxruntime.quantization warns through the root logger; keep it off the console."""

    def __enter__(self):
        self.level = logging.root.level
        logging.root.setLevel(logging.ERROR)
        import warnings

        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        logging.root.setLevel(self.level)
        self.warnings.__exit__(*exc)
        return False


# ---------------------------------------------------------------- TFLite
def tflite_configure(precision: str, calibration: list[list]):
    """A callback for onnx_to_tf.save_tflite that sets the converter's precision."""
    tf = lazy.tensorflow()

    def configure(converter, concrete):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if precision == "fp16":
            converter.target_spec.supported_types = [tf.float16]
            return
        if not calibration:  # dynamic range: int8 weights, float activations
            return

        def representative():
            for arrays in calibration:
                yield list(arrays)

        converter.representative_dataset = representative

    return configure


# ---------------------------------------------------------------- writing a variant
def save_variant(handle, target: str, path: str, options: Options) -> str:
    """Write `handle` (an ONNX or TF model from the pipeline) at options.precision."""
    from .backends import onnx_backend

    specs = handle.inputs or []
    calibration = [_permuted(a, handle.input_perms) for a in calibration_sets(specs, options)] \
        if options.precision == "int8" else []
    options.progress(f"writing a {options.precision} {target} model")
    try:
        if target == "onnx":
            proto = (onnx_fp16(handle.obj) if options.precision == "fp16" else
                     onnx_int8(handle.obj, calibration, options.quantization))
            onnx_backend.save(onnx_backend.wrap(proto), path)
            return f"onnx ({options.precision})"
        return _save_tflite_variant(handle, path, options.precision, calibration)
    except UsageError:
        raise
    except Exception as exc:
        raise ConversionError(f"cannot write the {options.precision} {target} model: "
                              f"{first_line(exc)}") from exc


def _save_tflite_variant(handle, path: str, precision: str, calibration: list) -> str:
    """TFLite fp16/int8. A fully int8 graph can fail at run time: an op quantized badly (a
    Div whose divisor rounds to zero), or the interpreter aborting the whole process (seen
    with resnet18 at a dynamic batch). So it is tried in a child process first; when it
    fails, the int8 weights are kept with float activations, and the format says so."""
    from .backends import tf_backend

    tf_backend._save_tflite(handle, path, tflite_configure(precision, calibration))
    if precision != "int8" or _runs_in_child(path, calibration[0]):
        return f"tflite ({precision})"
    tf_backend._save_tflite(handle, path, tflite_configure(precision, []))
    return "tflite (int8 weights, float activations)"


PROBE = """
import sys, numpy as np
from neuralbridge_cli.backends.onnx_to_tf import run_tflite
with np.load(sys.argv[2]) as data:
    arrays = [data[k] for k in sorted(data.files, key=int)]
for batch in (1, 2):  # the validation runs batch 2
    run_tflite(sys.argv[1], [np.concatenate([a] * batch) for a in arrays])
"""


def _runs_in_child(path: str, arrays: list) -> bool:
    """Run the .tflite on `arrays` in a separate Python process: True when it works."""
    import subprocess
    import sys

    import numpy as np

    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    with tempfile.TemporaryDirectory(prefix="nb-probe-") as tmp:
        feed = os.path.join(tmp, "feed.npz")
        np.savez(feed, **{str(i): a for i, a in enumerate(arrays)})
        try:
            proc = subprocess.run([sys.executable, "-c", PROBE, path, feed], env=env,
                                  capture_output=True, timeout=300)
        except subprocess.TimeoutExpired:
            return False
    return proc.returncode == 0


def _quiet_native():
    import contextlib

    return contextlib.nullcontext() if os.environ.get("NEURALBRIDGE_VERBOSE") == "1" \
        else lazy.silenced_stderr()


# ---------------------------------------------------------------- compare-precision
@dataclass
class VariantResult:
    """One precision of the model: size, error against fp32, latency."""

    precision: str
    path: str | None  # None when the variants were not kept (no --output-dir)
    size_bytes: int
    max_abs_error: float
    mean_abs_error: float
    max_rel_error: float
    top1_agreement: float | None
    latency_ms: float  # median
    latency_runs: int


@dataclass
class PrecisionReport:
    source: str
    target: str
    batch: int
    variants: list[VariantResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "batch": self.batch,
                "variants": [asdict(v) for v in self.variants], "notes": self.notes}


def compare_precisions(source, options: Options, precisions=("fp32", "fp16", "int8"), *,
                       target: str = "onnx", data: dict | None = None, runs: int = 20,
                       out_dir: str | None = None) -> PrecisionReport:
    """Build each precision of `source` as `target`, and measure size, error vs fp32 and
    median latency on this machine."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise UsageError(f"unknown precision(s) {', '.join(unknown) or '(none)'}",
                         hint="use --precisions fp32,fp16,int8")
    if target not in TARGETS:
        raise UsageError(f"compare-precision builds onnx or tflite models, not {target}")
    keep = out_dir is not None
    folder = Path(out_dir) if keep else Path(tempfile.mkdtemp(prefix="nb-precision-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        report = _compare(source, options, list(precisions), target, data, runs, folder)
        if not keep:  # the variants are deleted below: report no paths that will not exist
            for variant in report.variants:
                variant.path = None
        return report
    finally:
        if not keep:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


def _compare(source, options, precisions, target, data, runs, folder) -> PrecisionReport:
    from .datafiles import arrays_for
    from .pipeline import convert
    from .specs import DEFAULT_BATCH, dummy_inputs

    stem = Path(str(source).rstrip("/")).name.split(".")[0] or "model"
    suffix = ".onnx" if target == "onnx" else ".tflite"
    base_opts = replace(options, precision="fp32", force=True)
    fp32_path = folder / f"{stem}-fp32{suffix}"
    options.progress(f"building the fp32 {target} model")
    result = convert(source, target, str(fp32_path), base_opts)
    converted = result.target
    specs = result.source.inputs
    arrays = arrays_for(specs, data) if data is not None else dummy_inputs(specs, DEFAULT_BATCH,
                                                                          seed=7)
    report = PrecisionReport(str(source), target, int(arrays[0].shape[0]) if arrays[0].ndim
                             else 1)
    perms = converted.input_perms
    paths = {"fp32": str(fp32_path)}
    report_notes = report.notes
    for precision in precisions:
        if precision == "fp32":
            continue
        path = folder / f"{stem}-{precision}{suffix}"
        variant_opts = replace(options, precision=precision, force=True)
        converted.inputs = converted.inputs or specs
        saved = save_variant(converted, target, str(path), variant_opts)
        if "float activations" in saved:
            report_notes.append(f"{precision}: the fully int8 TFLite model failed to run; "
                                "int8 weights with float activations instead")
        paths[precision] = str(path)
    reference = None
    for precision in ["fp32"] + [p for p in precisions if p != "fp32"]:
        options.progress(f"measuring {precision}")
        feed = _permuted(arrays, perms)
        run = _runner(paths[precision], target, feed)
        outputs = run(feed)
        if reference is None:
            reference = outputs
        row = _variant_row(precision, paths[precision], reference, outputs, run, feed, runs)
        if precision in precisions:
            report.variants.append(row)
    if "fp32" not in precisions:
        report.notes.append("errors are against the fp32 model, built for reference")
    if data is None:
        report.notes.append(f"seeded inputs at batch {report.batch}; int8 calibrated on "
                            + (options.calibration or f"{CALIBRATION_SAMPLES} seeded samples"))
    return report


def _variant_row(precision, path, reference, outputs, run, feed, runs) -> VariantResult:
    from .validate import compare_outputs

    cmp = compare_outputs(reference, outputs, atol=0.0, rtol=0.0)
    top1 = [o.top1_agreement for o in cmp.outputs if o.top1_agreement is not None]
    for _ in range(2):  # warm-up: first runs allocate and pick kernels
        run(feed)
    times = []
    for _ in range(max(runs, 1)):
        started = time.perf_counter()
        run(feed)
        times.append((time.perf_counter() - started) * 1000)
    return VariantResult(precision, path, _size(path), cmp.max_abs_error,
                         max(o.mean_abs_error for o in cmp.outputs), cmp.max_rel_error,
                         min(top1) if top1 else None, statistics.median(times), len(times))


def _size(path: str) -> int:
    p = Path(path)
    extra = Path(str(p) + ".data")
    return p.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def _runner(path: str, target: str, sample: list):
    """A callable running the saved file with one session/interpreter (so latency excludes
    loading): arrays in, list of outputs out. TFLite tries the interpreters run_tflite does."""
    import numpy as np

    if target == "onnx":
        ort = lazy.require("onnxruntime", "run ONNX models")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda arrays: session.run(None, dict(zip(names, arrays)))
    from .backends.onnx_to_tf import _run_tflite, _tflite_interpreter

    errors = []
    for mode in ("default", "plain", "flex"):
        try:
            with _quiet_native():
                interpreter = _tflite_interpreter(path, mode)
                _run_tflite(interpreter, sample)
        except (RuntimeError, ValueError) as exc:
            errors.append(first_line(exc))
            continue
        return lambda arrays, it=interpreter: [np.asarray(o) for o in _run_tflite(it, arrays)]
    raise ConversionError(f"cannot run {path}: {errors[-1]}")


def plot_precisions(report: PrecisionReport, path: str) -> str:
    """Bar charts of error against fp32 and median latency per precision."""
    lazy.require("matplotlib", "draw --plot charts")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v.precision for v in report.variants]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.bar(names, [v.max_rel_error for v in report.variants], color="tab:red")
    left.set_title("max error / output scale vs fp32", fontsize=9)
    right.bar(names, [v.latency_ms for v in report.variants], color="tab:blue")
    right.set_title(f"median latency, ms (batch {report.batch})", fontsize=9)
    fig.suptitle(f"{report.source} as {report.target}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
