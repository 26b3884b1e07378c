"""`make zoo`: model zoo conformance, every route on every model, results in docs/ZOO.md.

Each conversion is one `neuralbridge convert ... --json` process, as a user runs it; its
exit code, validation error (relative to the output's scale), wall seconds and peak RSS
are recorded. A torch model goes torch -> onnx/tf/tflite, then onnx -> torch/tf from the
exported ONNX, and tf -> onnx/torch from the TF result (that last one is the round trip
torch -> tf -> torch, also checked end to end against the original). A Keras model goes
tf -> onnx/torch, onnx -> torch/tf, and back torch -> tf (round trip).

Results are appended to zoo-out/results.jsonl (`make zoo`: docs/zoo-results.jsonl, kept in
git) as they come, so an interrupted run resumes with --resume, also in a new clone: a passed
route whose output a pending route needs is run again when that file is gone. Usage:
    python scripts/zoo.py [--models a,b] [--set ci|full] [--jobs 2] [--resume [--redo]] [--timeout 1200]
                          [--work zoo-out] [--results F] [--report docs/ZOO.md]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).with_name("neuralbridge")
WORK = ROOT / "zoo-out"
ROUTES = ["torch->onnx", "torch->tf", "torch->tflite", "tf->onnx", "tf->torch",
          "onnx->torch", "onnx->tf", "round trip"]
TORCH_ROUTES = {"torch->onnx", "torch->tf", "torch->tflite", "tf->onnx", "onnx->torch",
                "onnx->tf", "round trip"}
TF_ROUTES = {"tf->onnx", "tf->torch", "onnx->torch", "onnx->tf", "round trip"}


@dataclass
class ZooModel:
    """A zoo entry: `source` is an import path (torch) or a builder writing a .keras file."""
    name: str
    family: str            # torchvision, torchvision-dense, keras.applications, sequence
    framework: str         # torch or tf
    source: str            # import path for torch; builder name in tests/zoo_models.py for keras
    args: dict = field(default_factory=dict)


TORCHVISION = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "densenet121",
               "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
               "regnet_y_400mf", "shufflenet_v2_x1_0", "squeezenet1_0", "mnasnet0_5",
               "googlenet", "inception_v3", "vgg11", "alexnet", "convnext_tiny", "vit_b_16",
               "swin_t", "maxvit_t"]
KERAS_APPS = ["MobileNetV2", "MobileNetV3Small", "ResNet50", "EfficientNetB0", "DenseNet121",
              "Xception", "InceptionV3", "ConvNeXtTiny", "NASNetMobile", "VGG16"]


def registry() -> dict[str, ZooModel]:
    models = [ZooModel(n, "torchvision", "torch", "models:torchvision_model", {"name": n})
              for n in TORCHVISION]
    models += [
        ZooModel("lraspp_mobilenet_v3_large", "torchvision segmentation", "torch",
                 "zoo_models:segmentation"),
        ZooModel("fasterrcnn_mobilenet_v3_fpn_backbone", "torchvision detection backbone",
                 "torch", "zoo_models:detection_backbone"),
    ]
    models += [ZooModel(n, "keras.applications", "tf", "keras_application", {"name": n})
               for n in KERAS_APPS]
    models += [
        ZooModel("embedding_lstm", "sequence", "torch", "models:text_lstm"),
        ZooModel("embedding_gru", "sequence", "torch", "zoo_models:text_gru"),
        ZooModel("bidirectional_lstm", "sequence", "torch", "models:text_lstm",
                 {"bidirectional": True}),
        ZooModel("transformer_encoder", "sequence", "torch", "models:transformer_encoder"),
        ZooModel("gpt_block", "sequence", "torch", "zoo_models:gpt_block"),
        ZooModel("keras_lstm", "sequence", "tf", "keras_lstm"),
        ZooModel("keras_mha", "sequence", "tf", "keras_mha"),
        ZooModel("small_cnn", "small (CI)", "torch", "models:small_cnn"),
        ZooModel("keras_two_io", "small (CI)", "tf", "keras_two_io"),
    ]
    return {m.name: m for m in models}


SETS = {
    "ci": ["small_cnn", "embedding_lstm", "keras_two_io"],
    "full": [n for n in registry() if n not in ("small_cnn", "keras_two_io")],
}


# ---------------------------------------------------------------- running one conversion
def run_cli(args: list[str], timeout: float) -> dict:
    """One `neuralbridge ... --json` process: exit code, JSON result, seconds, peak RSS."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"),
                                                       os.environ.get("PYTHONPATH", "")]))
    err_path = WORK / f".stderr-{os.getpid()}-{time.monotonic_ns()}"
    out_path = err_path.with_suffix(".out")
    started = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([str(BIN), "-q", *args, "--json", "--force"], stdout=out,
                                stderr=err, env=env, cwd=WORK)
        code, usage = _wait_with_usage(proc, timeout)
    seconds = time.perf_counter() - started
    stdout, stderr = out_path.read_text(), err_path.read_text()
    out_path.unlink(), err_path.unlink()
    row = {"exit": code, "seconds": round(seconds, 1)}
    if usage is not None:
        row["peak_mib"] = round(usage.ru_maxrss / 1024)
    try:
        data = json.loads(stdout)
        check = data.get("validation") or {}
        row.update(rel=check.get("max_rel_error"), abs=check.get("max_abs_error"),
                   passed=check.get("passed"), strategy=data.get("strategy"),
                   output=data.get("output"))
    except json.JSONDecodeError:
        pass
    if code != 0:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        if code is None:
            row["reason"] = f"timed out after {timeout:.0f} s"
        elif code < 0:  # SIGKILL with no message: on this machine, the out-of-memory killer
            row["reason"] = f"killed by signal {-code}" + (
                " (no message: most likely the kernel's out-of-memory killer)" if code == -9
                else "")
        else:
            row["reason"] = (lines or ["no message"])[-1][:240]
    return row


def _wait_with_usage(proc: subprocess.Popen, timeout: float):
    """Reap `proc` with wait4 (its own peak RSS, not the max over all children so far);
    kill it after `timeout` seconds. Returns (exit code or None on timeout, rusage)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage
        if time.monotonic() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return None, usage
        time.sleep(0.2)


# ---------------------------------------------------------------- per-model plans
def prepare_keras(model: ZooModel) -> str:
    """Write the Keras source model (seeded) to zoo-out; returns the file name."""
    path = WORK / f"{model.name}.keras"
    if not path.exists():
        subprocess.run([sys.executable, "-c", (
            "import sys; sys.path.insert(0, 'tests'); import zoo_models; "
            f"zoo_models.save_keras({model.source!r}, {json.dumps(model.args)!r}, {str(path)!r})")],
            cwd=ROOT, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path.name


def torch_plan(model: ZooModel) -> list[tuple[str, list[str], str | None]]:
    """(route, CLI args, prerequisite file) for a torch model, in dependency order."""
    n = model.name
    src = [model.source] + (["--model-args", json.dumps(model.args)] if model.args else [])
    return [
        ("torch->onnx", ["convert", *src, "--to", "onnx", "-o", f"{n}.onnx"], None),
        ("torch->tf", ["convert", *src, "--to", "tf", "-o", f"{n}.savedmodel"], None),
        ("torch->tflite", ["convert", *src, "--to", "tflite", "-o", f"{n}.tflite"], None),
        ("onnx->torch", ["convert", f"{n}.onnx", "--to", "torch", "-o", f"{n}_from_onnx.pt2"],
         f"{n}.onnx"),
        ("onnx->tf", ["convert", f"{n}.onnx", "--to", "tf", "-o", f"{n}_from_onnx.savedmodel"],
         f"{n}.onnx"),
        ("tf->onnx", ["convert", f"{n}.savedmodel", "--to", "onnx", "-o", f"{n}_from_tf.onnx"],
         f"{n}.savedmodel"),
        ("round trip", ["convert", f"{n}.savedmodel", "--to", "torch", "-o", f"{n}_back.pt2"],
         f"{n}.savedmodel"),
    ]


def keras_plan(model: ZooModel, keras_file: str) -> list[tuple[str, list[str], str | None]]:
    n = model.name
    return [
        ("tf->onnx", ["convert", keras_file, "--to", "onnx", "-o", f"{n}.onnx"], None),
        ("tf->torch", ["convert", keras_file, "--to", "torch", "-o", f"{n}.pt2"], None),
        ("onnx->torch", ["convert", f"{n}.onnx", "--to", "torch", "-o", f"{n}_from_onnx.pt2"],
         f"{n}.onnx"),
        ("onnx->tf", ["convert", f"{n}.onnx", "--to", "tf", "-o", f"{n}_from_onnx.savedmodel"],
         f"{n}.onnx"),
        ("round trip", ["convert", f"{n}.pt2", "--to", "tf", "-o", f"{n}_back.savedmodel"],
         f"{n}.pt2"),
    ]


def end_to_end(original: list[str], final: str, timeout: float) -> dict:
    """The round trip's result against the original model, on the same seeded inputs."""
    code = ("import json, sys; sys.path.insert(0, 'scripts'); import zoo; "
            f"print(json.dumps(zoo.compare_models({original!r}, {final!r})))")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              text=True, env=env, timeout=timeout)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as exc:  # recorded, never fatal for the zoo run
        return {"error": str(exc)[:200]}


def compare_models(original: list[str], final: str) -> dict:
    """Run `original` (source args as for the CLI) and `final` on seeded inputs; max rel error."""
    from neuralbridge_cli.options import Options
    from neuralbridge_cli.pipeline import load_source, resolve_specs, run_model
    from neuralbridge_cli.specs import dummy_inputs
    from neuralbridge_cli.validate import compare_outputs

    args = {}
    if "--model-args" in original:
        args = json.loads(original[original.index("--model-args") + 1])
    opts = Options(model_args=args)
    first = load_source(original[0], opts)
    specs = resolve_specs(first, opts)
    arrays = dummy_inputs(specs, seed=7)
    # a TorchScript result (.pt) cannot tell its own input shapes: the original's specs
    final_options = Options(input_specs=specs) if final.endswith(".pt") else Options()
    second = load_source(final, final_options)
    resolve_specs(second, final_options)
    report = compare_outputs(run_model(first, arrays), run_model(second, arrays),
                             atol=1e-4, rtol=1e-3)
    worst = max(report.outputs, key=lambda o: o.max_rel_error)
    return {"rel": worst.max_rel_error, "passed": report.passed}


#: models whose conversions peak at 12-16 GB RSS (docs/ZOO.md): two at once overflow 24 GB,
#: so they run one at a time (beside light models)
HEAVY = {"vgg11", "VGG16", "wide_resnet50_2", "vit_b_16"}
_HEAVY_LOCK = threading.Lock()


def run_model_routes(model: ZooModel, done: dict, timeout: float, log) -> None:
    with _HEAVY_LOCK if model.name in HEAVY else nullcontext():
        _run_model_routes(model, done, timeout, log)


def _run_model_routes(model: ZooModel, done: dict, timeout: float, log) -> None:
    routes = TF_ROUTES if model.framework == "tf" else TORCH_ROUTES
    if all((model.name, route) in done for route in routes):
        return  # nothing pending: not even the Keras source is rebuilt
    if model.framework == "tf":
        try:
            keras_file = prepare_keras(model)
        except subprocess.CalledProcessError as exc:
            for route in ("tf->onnx", "tf->torch", "onnx->torch", "onnx->tf", "round trip"):
                log(model, route, {"exit": -1, "reason": f"could not build the model: {exc}"})
            return
        plan, original = keras_plan(model, keras_file), [str(WORK / keras_file)]
    else:
        plan = torch_plan(model)
        original = [model.source] + (["--model-args", json.dumps(model.args)]
                                     if model.args else [])
    failed_files = set()
    written = {}  # planned output -> the file the CLI wrote (a .pt2 may come out as .pt)
    rerun = _lost_inputs(model.name, plan, done)
    for route, args, needs in plan:
        if (model.name, route) in done and args[args.index("-o") + 1] not in rerun:
            continue
        args = [written.get(a, a) for a in args]
        if needs in failed_files:
            row = {"exit": -1, "reason": f"skipped: its input {needs} was not produced"}
        else:
            row = run_cli(args, timeout)
        planned = args[args.index("-o") + 1]
        if row.get("exit") != 0:
            failed_files.add(planned)
        else:
            final = Path(row["output"]).name if row.get("output") else planned
            written[planned] = final
            if route == "round trip":
                row["end_to_end"] = end_to_end(original, str(WORK / final), timeout)
        log(model, route, row)


def _lost_inputs(name: str, plan, done: dict) -> set[str]:
    """Outputs of passed routes that a pending route reads but that are no longer on disk
    (results kept from another machine or a cleaned work folder): made again first."""
    pending_needs = {needs for route, _, needs in plan if (name, route) not in done and needs}
    return {needs for needs in pending_needs if not (WORK / needs).exists()}


# ---------------------------------------------------------------- report
def cell(row: dict | None) -> str:
    if row is None:
        return "n/a"
    if row.get("exit") == 0:
        rel = row.get("rel")
        text = f"ok {rel:.1e}" if isinstance(rel, (int, float)) else "ok"
        e2e = row.get("end_to_end", {})
        if "rel" in e2e:
            text += f" (e2e {e2e['rel']:.1e})"
        return f"{text}, {row['seconds']:.0f} s"
    if row.get("exit") == 3:
        return f"MISMATCH {row.get('rel', 0):.1e}"
    return "FAIL"


def write_report(results: dict, models: dict[str, ZooModel], path: Path) -> str:
    names = [n for n in models if any((n, r) in results for r in ROUTES)]
    not_run = [n for n in models if n not in names]
    lines = ["# Model zoo conformance", "",
             f"Generated by `make zoo` (scripts/zoo.py) on {time.strftime('%Y-%m-%d')}, "
             f"{os.cpu_count()} cores. Each cell: validation result of one "
             "`neuralbridge convert` process (max error relative to the output's scale, "
             "default tolerances atol 1e-4 + rtol 1e-3 x scale) and its wall seconds. "
             "`e2e`: the round trip's result against the original model. "
             "`n/a`: the route does not apply to the source framework. Results accumulate "
             "over resumed runs (`make zoo` retries only failed or missing routes; `--redo` "
             "runs a model again after a fix), so rows may come from different runs; seconds "
             "are wall time on a shared machine.", ""]
    ok = sum(1 for (n, _), r in results.items() if n in models and r.get("exit") == 0)
    total = sum(len(TF_ROUTES if m.framework == "tf" else TORCH_ROUTES) for m in models.values())
    missing = total - sum(1 for (n, _) in results if n in models)
    lines += [f"**{ok} of {total} conversions passed** over {len(models)} models"
              + (f"; {missing} not run yet" if missing else "")
              + (f" ({len(not_run)} models not started, listed last)" if not_run else "")
              + ".", ""]
    lines += ["| model | family | " + " | ".join(ROUTES) + " | peak MiB |",
              "| --- | --- | " + " | ".join("---" for _ in ROUTES) + " | --- |"]
    for n in names:
        rows = [results.get((n, r)) for r in ROUTES]
        applies = TF_ROUTES if models[n].framework == "tf" else TORCH_ROUTES
        peak = max((r.get("peak_mib", 0) for r in rows if r), default=0)
        lines.append(f"| {n} | {models[n].family} | " + " | ".join(
            cell(row) if row is not None or route not in applies else "not run"
            for route, row in zip(ROUTES, rows)) + f" | {peak} |")
    for n in not_run:  # listed, never left out: the run stopped before reaching them
        lines.append(f"| {n} | {models[n].family} | " + " | ".join("not run" for _ in ROUTES)
                     + " |  |")
    per_route = []
    for r in ROUTES:
        rows = [results[(n, r)] for n in names if (n, r) in results]
        if rows:
            per_route.append(f"| {r} | {sum(1 for x in rows if x.get('exit') == 0)} / "
                             f"{len(rows)} |")
    lines += ["", "## Per route", "", "| route | passed |", "| --- | --- |", *per_route]
    failures = [(n, r, results[(n, r)]) for n in names for r in ROUTES
                if (n, r) in results and results[(n, r)].get("exit") != 0]
    lines += ["", "## Failures and their reasons", ""]
    lines += [f"- **{n}** {r} (exit {row.get('exit')}): {row.get('reason', 'validation mismatch')}"
              for n, r, row in failures] or ["None."]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def load_results(path: Path) -> dict:
    results = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                results[(row["model"], row["route"])] = row
    return results


def main() -> None:
    global WORK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names (default: the chosen set)")
    parser.add_argument("--set", default="full", choices=sorted(SETS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--resume", action="store_true", help="keep earlier results")
    parser.add_argument("--report", default=str(ROOT / "docs" / "ZOO.md"))
    parser.add_argument("--work", default=str(WORK), help="folder for models and results")
    parser.add_argument("--results", help="results file (default: WORK/results.jsonl; "
                        "`make zoo` keeps it in docs/ so a partial run resumes in a new clone)")
    parser.add_argument("--redo", action="store_true",
                        help="with --resume: run every route of the chosen models again (after a "
                        "fix), keeping the other models' results")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the recorded results; convert nothing")
    args = parser.parse_args()
    WORK = Path(args.work).resolve()
    models = registry()
    names = args.models.split(",") if args.models else SETS[args.set]
    unknown = [n for n in names if n not in models]
    if unknown:
        raise SystemExit(f"unknown models: {', '.join(unknown)} (known: {', '.join(models)})")
    WORK.mkdir(exist_ok=True)
    results_path = Path(args.results).resolve() if args.results else WORK / "results.jsonl"
    if not (args.resume or args.report_only) and results_path.exists():
        results_path.unlink()
    # --resume keeps the conversions that passed; failed ones are tried again
    results = {k: v for k, v in load_results(results_path).items()
               if v.get("exit") == 0 or args.report_only}
    if args.redo and not args.report_only:
        results = {k: v for k, v in results.items() if k[0] not in names}

    def log(model: ZooModel, route: str, row: dict) -> None:
        row = {"model": model.name, "route": route, **row}
        results[(model.name, route)] = row
        with open(results_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    if args.report_only:
        print(write_report(results, {n: models[n] for n in names}, Path(args.report)))
        return
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(run_model_routes, models[n], dict(results), args.timeout,
                                   log) for n in names]:
            future.result()
    subset = {n: models[n] for n in names}
    print(write_report({k: v for k, v in results.items() if k[0] in subset}, subset,
                       Path(args.report)))
    failed = [k for k, v in results.items() if k[0] in subset and v.get("exit") != 0]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
