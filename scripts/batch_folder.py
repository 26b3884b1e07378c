"""Build a folder of real small models and check `neuralbridge convert DIR` on it.

    python scripts/batch_folder.py build  batch-models        # the folder only
    python scripts/batch_folder.py check  batch-models work    # done-when checks 1-3 of issue 3

The folder holds 29 real models (seeded weights) plus 2 that must fail:
  - ONNX: MLPs built with onnx.helper, small CNNs and torchvision resnet18, squeezenet1_1,
    mobilenet_v3_small
    exported with torch's TorchScript exporter;
  - Keras .keras archives (functional and sequential) and one SavedModel folder;
  - PyTorch state dicts with a neuralbridge.toml naming their classes (torch.nn, torchvision
    ops and models) and input shapes;
  - broken/corrupt.onnx (garbage bytes) and broken/custom_op.onnx (an op nobody implements).

`check` converts the folder to ONNX with --jobs 2 and checks the reports (1), kills a second
batch with SIGKILL halfway and resumes it with --skip-existing, validating every output left
by the killed run (2), and runs --shard 0/3, 1/3, 2/3 (3). Figures go to work/check.json.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

EXPECTED_FAILED = {"broken/corrupt.onnx", "broken/custom_op.onnx"}

TOML = """\
# settings for the state dicts in this folder: the class that holds the weights, and shapes
["linear_a.pt"]
model_class = "torch.nn:Linear"
model_args = {in_features = 32, out_features = 8}
input_shape = "1,32"

["linear_b.pt"]
model_class = "torch.nn:Linear"
model_args = {in_features = 64, out_features = 16}
input_shape = "1,64"

["mlp_*.pt"]
model_class = "torchvision.ops:MLP"
input_shape = "1,24"

["mlp_a.pt"]
model_args = {in_channels = 24, hidden_channels = [48, 10]}

["mlp_b.pt"]
model_args = {in_channels = 24, hidden_channels = [64, 64, 5]}

["conv_block.pt"]
model_class = "torchvision.ops:Conv2dNormActivation"
model_args = {in_channels = 3, out_channels = 8}
input_shape = "1,3,32,32"

["squeezenet.pt"]
model_class = "torchvision.models:squeezenet1_1"
model_args = {num_classes = 10}
input_shape = "1,3,64,64"

["resnet18.pt"]
model_class = "torchvision.models:resnet18"
model_args = {num_classes = 10}
input_shape = "1,3,64,64"

["mobilenet_v3_small.pt"]
model_class = "torchvision.models:mobilenet_v3_small"
model_args = {num_classes = 10}
input_shape = "1,3,64,64"

["conv2d.pt"]
model_class = "torch.nn:Conv2d"
model_args = {in_channels = 3, out_channels = 6, kernel_size = 3}
input_shape = "1,3,16,16"
"""


def build(root: Path) -> list[str]:
    """Write the models under `root`; returns their relative paths."""
    from neuralbridge_cli import lazy

    lazy._prepare_tensorflow_import()  # triton before TensorFlow
    import keras
    import torch
    import torchvision

    import models

    root.mkdir(parents=True, exist_ok=True)
    onnx_dir, keras_dir, torch_dir, bad = (root / d for d in ("onnx", "keras", "torch", "broken"))
    for d in (onnx_dir, keras_dir, torch_dir, bad):
        d.mkdir(exist_ok=True)

    # ONNX
    for i, sizes in enumerate([(16, 32, 8), (32, 64, 64, 10), (8, 8), (128, 256, 4),
                                   (64, 64), (10, 40, 40, 2)]):
        models.onnx_mlp(onnx_dir / f"mlp_{i}.onnx", sizes=sizes, seed=i)
    exports = {f"cnn_{i}": (models.small_cnn(seed=i), (1, 3, 32, 32)) for i in range(3)}
    exports["resnet18"] = (models.torchvision_model("resnet18"), (1, 3, 64, 64))
    exports["squeezenet1_1"] = (models.torchvision_model("squeezenet1_1"), (1, 3, 64, 64))
    exports["mobilenet_v3_small"] = (models.torchvision_model("mobilenet_v3_small"), (1, 3, 64, 64))
    for name, (module, shape) in exports.items():
        torch.onnx.export(module, (models.seeded_input(shape),), str(onnx_dir / f"{name}.onnx"),
                          dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})

    # Keras
    models.keras_two_io(seed=0).save(keras_dir / "two_io.keras")
    for i in range(3):
        keras.utils.set_random_seed(i)
        cnn = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(8 + 4 * i, 3),
                                keras.layers.ReLU(), keras.layers.MaxPooling2D(),
                                keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
        cnn.save(keras_dir / f"cnn_{i}.keras")
    for i in range(3):
        keras.utils.set_random_seed(10 + i)
        mlp = keras.Sequential([keras.Input((20,)), keras.layers.Dense(64, activation="tanh"),
                                keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)])
        mlp.save(keras_dir / f"mlp_{i}.keras")
    keras.utils.set_random_seed(20)
    exported = keras.Sequential([keras.Input((12,)), keras.layers.Dense(24, activation="relu"),
                                 keras.layers.Dense(6)])
    with lazy.silenced_stderr():
        exported.export(str(keras_dir / "dense.savedmodel"), verbose=False)

    # PyTorch state dicts + neuralbridge.toml naming the classes
    torch.manual_seed(0)
    states = {
        "linear_a": torch.nn.Linear(32, 8), "linear_b": torch.nn.Linear(64, 16),
        "mlp_a": torchvision.ops.MLP(24, [48, 10]), "mlp_b": torchvision.ops.MLP(24, [64, 64, 5]),
        "conv_block": torchvision.ops.Conv2dNormActivation(3, 8),
        "squeezenet": torchvision.models.squeezenet1_1(num_classes=10),
        "conv2d": torch.nn.Conv2d(3, 6, 3),
        "resnet18": torchvision.models.resnet18(num_classes=10),
        "mobilenet_v3_small": torchvision.models.mobilenet_v3_small(num_classes=10),
    }
    for i, (name, module) in enumerate(states.items()):
        torch.save(models.seeded_init(module, seed=i).state_dict(), torch_dir / f"{name}.pt")
    (torch_dir / "neuralbridge.toml").write_text(TOML)

    # must fail, without stopping the rest
    (bad / "corrupt.onnx").write_bytes(b"\x08\x07" + os.urandom(2000))
    models.onnx_custom_op(bad / "custom_op.onnx")

    from neuralbridge_cli.batch import discover

    return [m.relative for m in discover(root)]


def neuralbridge(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "neuralbridge_cli", *map(str, args)], env=env,
                          **kwargs)


def check(root: Path, work: Path) -> dict:
    """Done-when checks 1-3 of issue 3; returns the figures."""
    import shutil
    from xml.etree import ElementTree as ET

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    figures: dict = {}
    names = build(root) if not root.exists() else _names(root)
    figures["models"] = len(names)

    # 1. --jobs 2 with reports
    started = time.perf_counter()
    proc = neuralbridge("convert", root, "--to", "onnx", "-o", work / "out1", "--jobs", 2,
                        "--report", work / "report1.json", "--junit", work / "report1.xml",
                        capture_output=True, text=True)
    report = json.loads((work / "report1.json").read_text())
    failed = {m["model"]: m["error"] for m in report["models"] if m["status"] != "ok"}
    suite = ET.parse(work / "report1.xml").getroot().find("testsuite")
    figures["run1"] = {"exit_code": proc.returncode, "seconds": round(time.perf_counter() - started, 1),
                       "counts": report["counts"], "failed": failed,
                       "junit": {k: suite.get(k) for k in ("tests", "failures", "skipped")}}
    assert set(failed) == EXPECTED_FAILED, failed
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert suite.get("tests") == str(len(names)) and suite.get("failures") == "2"
    print("summary table of run 1:\n" + proc.stdout)

    # 2. SIGKILL halfway, then --skip-existing
    out2 = work / "out2"
    args = [sys.executable, "-m", "neuralbridge_cli", "convert", str(root), "--to", "onnx",
            "-o", str(out2), "--jobs", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    half = (len(names) - len(EXPECTED_FAILED)) // 2
    while killed.poll() is None and len(list(out2.rglob(".*.neuralbridge.json"))) < half:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    time.sleep(2)
    present = sorted(p.relative_to(out2).as_posix() for p in out2.rglob("*.onnx")
                     if not p.name.startswith("."))
    partial = sorted(p.name for p in out2.rglob(".nbtmp-*"))
    recorded = len(list(out2.rglob(".*.neuralbridge.json")))
    errors = validate_outputs(root, out2, present)
    proc = neuralbridge("convert", root, "--to", "onnx", "-o", out2, "--jobs", 2, "--skip-existing",
                        "--report", work / "report2.json", capture_output=True, text=True)
    report = json.loads((work / "report2.json").read_text())
    counts = report["counts"]
    figures["run2"] = {"outputs_after_kill": len(present), "records_after_kill": recorded,
                       "partial_tmp_files_after_kill": len(partial),
                       "max_rel_error_of_outputs_after_kill": max(errors.values(), default=None),
                       "rerun_exit_code": proc.returncode, "rerun_counts": counts}
    assert counts["skipped"] == recorded and counts["ok"] == len(names) - 2 - recorded, counts
    assert all(e < 1e-3 for e in errors.values()), errors

    # 3. three shards (run side by side, like three CI machines)
    procs = [subprocess.Popen(args[:-2] + ["--jobs", "1", "-o", str(work / "out3"), "--shard",
                                           f"{k}/3", "--report", str(work / f"shard{k}.json")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for k in range(3)]
    for p in procs:
        p.wait()
    per_shard = [[m["model"] for m in json.loads((work / f"shard{k}.json").read_text())["models"]]
                 for k in range(3)]
    union = sorted(sum(per_shard, []))
    figures["run3"] = {"per_shard": [len(s) for s in per_shard], "total": len(union),
                       "distinct": len(set(union)), "all_models": union == sorted(names)}
    assert union == sorted(names)
    (work / "check.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    write_doc(figures)
    return figures


def write_doc(f: dict) -> None:
    """Put the figures between the check markers of docs/BATCH.md."""
    doc_path = REPO / "docs" / "BATCH.md"
    r1, r2, r3 = f["run1"], f["run2"], f["run3"]
    lines = [
        "<!-- check:start -->",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {f['models']} models "
        f"(target ONNX, `--jobs 2`):",
        "",
        f"1. Full run: exit code {r1['exit_code']} in {r1['seconds']} s; counts {r1['counts']}; "
        f"JUnit: {r1['junit']['tests']} test cases, {r1['junit']['failures']} failures. Failed, "
        "with their reason, while the rest converted:",
        *[f"   - `{name}`: {error}" for name, error in sorted(r1["failed"].items())],
        f"2. A second run killed with SIGKILL once half the records existed: "
        f"{r2['outputs_after_kill']} outputs present, {r2['records_after_kill']} with records, "
        f"{r2['partial_tmp_files_after_kill']} hidden `.nbtmp-*` leftovers; every present output "
        f"loaded and matched its source (max error relative to scale "
        f"{r2['max_rel_error_of_outputs_after_kill']:.2g}). Rerun with `--skip-existing`: exit "
        f"code {r2['rerun_exit_code']}, {r2['rerun_counts']['skipped']} skipped, "
        f"{r2['rerun_counts']['ok']} converted, "
        f"{r2['rerun_counts']['failed']} failed (the two broken files).",
        f"3. `--shard 0/3`, `1/3`, `2/3` (run side by side): {r3['per_shard']} models, "
        f"{r3['total']} in all, {r3['distinct']} distinct, every model exactly once: "
        f"{r3['all_models']}.",
        "<!-- check:end -->",
    ]
    doc = doc_path.read_text()
    head, _, rest = doc.partition("<!-- check:start -->")
    _, _, tail = rest.partition("<!-- check:end -->")
    doc_path.write_text(head + "\n".join(lines) + tail)


def _names(root: Path) -> list[str]:
    from neuralbridge_cli.batch import discover

    return [m.relative for m in discover(root)]


def validate_outputs(root: Path, out: Path, present: list[str]) -> dict[str, float]:
    """Load every output and compare it with its source on seeded inputs (max rel. error)."""
    from neuralbridge_cli.batch import discover
    from neuralbridge_cli.cli.params import build_options
    from neuralbridge_cli.pipeline import load_source, resolve_specs, run_model
    from neuralbridge_cli.specs import DEFAULT_BATCH, dummy_inputs
    from neuralbridge_cli.validate import compare_outputs

    by_output = {str(Path(m.relative).parent / (Path(m.relative).stem + ".onnx")): m
                 for m in discover(root)}
    errors = {}
    for name in present:
        model = by_output[name]
        options = build_options(settings=model.settings)
        source = load_source(str(model.path), options)
        arrays = dummy_inputs(resolve_specs(source, options), DEFAULT_BATCH, seed=1)
        converted = load_source(str(out / name), build_options())
        converted.inputs = source.inputs
        report = compare_outputs(run_model(source, arrays), run_model(converted, arrays),
                                 atol=1e-4, rtol=1e-3)
        errors[name] = report.max_rel_error
    return errors


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "build":
        found = build(folder)
        print(f"{len(found)} models in {folder}")
    elif command == "check":
        check(folder, Path(sys.argv[3]) if len(sys.argv) > 3 else Path("batch-work"))
    else:
        sys.exit(f"unknown command {command}; use build or check")
