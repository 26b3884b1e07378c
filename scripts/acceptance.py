"""`make acceptance`: the core issue's "done when" matrix, run through the real CLI.

Each conversion is one `neuralbridge convert ... --json` process (as a user runs it);
the table of exit codes, validation errors and seconds is printed and written to
docs/ACCEPTANCE.md. Usage: python scripts/acceptance.py [--models resnet18,vit_b_16] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
BIN = Path(sys.executable).with_name("neuralbridge")
TORCHVISION = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16"]
WORK = ROOT / "acceptance-out"


def cli(args: list[str], label: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))
    started = time.perf_counter()
    proc = subprocess.run([str(BIN), "-q", *args, "--json", "--force"], capture_output=True,
                          text=True, env=env, cwd=WORK)
    seconds = time.perf_counter() - started
    row = {"case": label, "exit": proc.returncode, "seconds": round(seconds, 1)}
    try:
        data = json.loads(proc.stdout)
        check = data.get("validation") or {}
        row.update(max_abs=check.get("max_abs_error"), max_rel=check.get("max_rel_error"),
                   passed=check.get("passed"), strategy=data.get("strategy"),
                   saved=data.get("saved_format"))
    except json.JSONDecodeError:
        pass
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
    print(json.dumps(row), flush=True)
    return row


def torchvision_cases(names: list[str], targets: list[str]) -> list[dict]:
    import torch
    import models

    rows = []
    for name in names:
        weights = WORK / f"{name}.pt"
        torch.save(models.torchvision_model(name).state_dict(), weights)
        base = [weights.name, "--model-class", f"torchvision.models:{name}"]
        for target, out in (("tf", f"{name}.savedmodel"), ("keras", f"{name}.keras"),
                            ("tflite", f"{name}.tflite"), ("onnx", f"{name}.onnx")):
            if target not in targets and target != "tf":  # tf feeds the way back
                continue
            rows.append(cli(["convert", *base, "--to", target, "-o", out], f"{name} -> {target}"))
        rows.append(cli(["convert", f"{name}.savedmodel", "--to", "torch", "-o",
                         f"{name}_back.pt2"], f"{name} tf -> torch"))
    return rows


def keras_cases() -> list[dict]:
    import keras

    import models

    keras.utils.set_random_seed(0)
    # raw logits, re-initialised to order 1: as built, the softmax output is 0.001 everywhere
    # and any converter would "validate" with error 0
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3),
                                               classifier_activation=None)
    models.keras_seeded_init(mobilenet).save(WORK / "mobilenetv2.keras")

    models.keras_two_io().save(WORK / "two_io.keras")
    rows = []
    for stem in ("mobilenetv2", "two_io"):
        for target, out in (("torch", f"{stem}.pt2"), ("onnx", f"{stem}.onnx")):
            rows.append(cli(["convert", f"{stem}.keras", "--to", target, "-o", out],
                            f"keras {stem} -> {target}"))
    return rows


def text_cases() -> list[dict]:
    return [cli(["convert", f"models:{factory}", "--to", "tf", "-o", f"{factory}.savedmodel"],
                f"{factory} -> tf (shapes inferred)")
            for factory in ("text_lstm", "transformer_encoder")]


def write_table(rows: list[dict]) -> None:
    lines = ["# Acceptance run (core issue)", "",
             f"`python scripts/acceptance.py`, {time.strftime('%Y-%m-%d')}, "
             f"{os.cpu_count()} cores.", "",
             "| case | exit | passed | max abs error | max rel. to scale | seconds | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fmt = lambda v: "" if v is None else f"{v:.3g}"
        note = r.get("error") or (f"exporter {r['strategy']}" if r.get("strategy") else "")
        lines.append(f"| {r['case']} | {r['exit']} | {r.get('passed')} | {fmt(r.get('max_abs'))} "
                     f"| {fmt(r.get('max_rel'))} | {r['seconds']} | {note} |")
    ok = sum(1 for r in rows if r["exit"] == 0)
    lines += ["", f"{ok} of {len(rows)} conversions succeeded and validated."]
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "ACCEPTANCE.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(TORCHVISION))
    parser.add_argument("--targets", default="tf,keras,tflite,onnx")
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    rows = torchvision_cases([m for m in args.models.split(",") if m], args.targets.split(","))
    if not args.skip_keras:
        rows += keras_cases() + text_cases()
    write_table(rows)
    sys.exit(0 if all(r["exit"] == 0 for r in rows) else 1)


if __name__ == "__main__":
    main()
