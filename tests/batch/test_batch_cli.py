"""`neuralbridge convert DIR` end to end, in real processes with real frameworks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

import models
from neuralbridge_cli.cli.app import app

REPO = Path(__file__).resolve().parents[2]
CRASH_MODULE = """
import os, signal
import torch

class Crash(torch.nn.Module):
    def __init__(self):
        super().__init__()
        os.kill(os.getpid(), signal.SIGKILL)  # a worker dying mid-model (segfault, OOM kill)

class Sleepy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        import time
        time.sleep(600)
"""


def env():
    paths = [str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "TF_CPP_MIN_LOG_LEVEL": "3"}


def neuralbridge(*args, cwd, timeout=900):
    return subprocess.run([sys.executable, "-m", "neuralbridge_cli", *map(str, args)], cwd=cwd,
                          env=env(), capture_output=True, text=True, timeout=timeout)


def onnx_outputs(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def seeded(shape, seed=5):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_mixed_folder_with_failures_reports_each_model(workdir):
    import torch

    root = workdir / "models"
    (root / "torch").mkdir(parents=True)
    models.onnx_mlp(root / "mlp.onnx")
    models.onnx_custom_op(root / "custom.onnx")
    (root / "broken.onnx").write_bytes(b"\x08\x07 this is not a protobuf \xff\xff")
    models.keras_two_io().save(root / "two.keras")
    torch.save(torch.nn.Linear(16, 4).state_dict(), root / "torch" / "lin.pt")
    torch.save(torch.nn.Linear(4, 4).state_dict(), root / "torch" / "crash.pt")
    (workdir / "crashmod.py").write_text(CRASH_MODULE)
    (root / "torch" / "neuralbridge.toml").write_text(
        'input_shape = "1,16"\n'
        '["lin.pt"]\nmodel_class = "torch.nn:Linear"\nmodel_args = {in_features = 16, out_features = 4}\n'
        '["crash.pt"]\nmodel_class = "crashmod:Crash"\n')

    proc = neuralbridge("convert", "models", "--to", "onnx", "-o", "out", "--jobs", 2,
                        "--report", "report.json", "--junit", "report.xml", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: 3 of 6 models failed" in proc.stderr
    for name in ("mlp.onnx", "two.keras", "torch/lin.pt", "custom.onnx", "broken.onnx"):
        assert name in proc.stdout  # the summary table

    report = json.loads((workdir / "report.json").read_text())
    status = {m["model"]: m["status"] for m in report["models"]}
    assert status == {"broken.onnx": "failed", "custom.onnx": "failed", "mlp.onnx": "ok",
                      "torch/crash.pt": "crashed", "torch/lin.pt": "ok", "two.keras": "ok"}
    errors = {m["model"]: m["error"] for m in report["models"]}
    assert "not a readable ONNX model" in errors["broken.onnx"]
    assert "Frobnicate" in errors["custom.onnx"]
    assert "SIGKILL" in errors["torch/crash.pt"]
    rows = {m["model"]: m for m in report["models"]}
    assert rows["torch/lin.pt"]["route"] == ["torch", "onnx"]
    assert rows["two.keras"]["route"] == ["tf", "onnx"]
    assert rows["mlp.onnx"]["max_abs_error"] == 0.0
    assert report["counts"] == {"ok": 3, "skipped": 0, "failed": 2, "mismatch": 0, "timeout": 0,
                                "crashed": 1}

    suite = ET.parse(workdir / "report.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("6", "3")
    failed = {c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None}
    assert failed == {"broken.onnx", "custom.onnx", "torch/crash.pt"}

    # the outputs mirror the tree and compute what the sources compute
    x = seeded((3, 16))
    np.testing.assert_allclose(onnx_outputs(workdir / "out" / "mlp.onnx", x)[0],
                               onnx_outputs(root / "mlp.onnx", x)[0], rtol=0, atol=0)
    linear = torch.nn.Linear(16, 4)
    linear.load_state_dict(torch.load(root / "torch" / "lin.pt"))
    np.testing.assert_allclose(onnx_outputs(workdir / "out" / "torch" / "lin.onnx", x)[0],
                               linear(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    assert (workdir / "out" / "two.onnx").is_file()
    assert not list((workdir / "out").rglob(".nbtmp-*"))


def test_sigkill_then_skip_existing_converts_only_what_is_missing(workdir):
    total = 8
    for i in range(total):
        models.onnx_mlp(workdir / "models" / f"m{i}.onnx", sizes=(256, 1024, 1024, 10), seed=i)
    args = ["-m", "neuralbridge_cli", "convert", "models", "--to", "onnx", "-o", "out",
            "--jobs", "1"]
    proc = subprocess.Popen([sys.executable, *args], cwd=workdir, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if list((workdir / "out").glob(".*.neuralbridge.json")):
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # the worker dies with its parent (PR_SET_PDEATHSIG)

    present = sorted(p.name for p in (workdir / "out").glob("m*.onnx"))
    recorded = sorted(p.name[1:-len(".neuralbridge.json")]
                      for p in (workdir / "out").glob(".*.neuralbridge.json"))
    assert 0 < len(present) < total, present
    x = seeded((2, 256))
    for name in present:  # nothing half-written where a finished model is expected
        np.testing.assert_array_equal(onnx_outputs(workdir / "out" / name, x)[0],
                                      onnx_outputs(workdir / "models" / name, x)[0])

    rerun = neuralbridge("convert", "models", "--to", "onnx", "-o", "out", "--jobs", 2,
                         "--skip-existing", "--json", cwd=workdir)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    skipped = sorted(m["model"] for m in report["models"] if m["status"] == "skipped")
    converted = sorted(m["model"] for m in report["models"] if m["status"] == "ok")
    assert skipped == recorded
    assert sorted(skipped + converted) == [f"m{i}.onnx" for i in range(total)]
    for i in range(total):
        np.testing.assert_array_equal(onnx_outputs(workdir / "out" / f"m{i}.onnx", x)[0],
                                      onnx_outputs(workdir / "models" / f"m{i}.onnx", x)[0])


def test_shards_together_convert_every_model_exactly_once(workdir):
    names = [f"{d}/n{i}.onnx" for d in ("a", "b", "c") for i in range(4)]
    for i, name in enumerate(names):
        models.onnx_mlp(workdir / "models" / name, sizes=(8, 4), seed=i)
    seen = []
    for k in range(3):
        proc = neuralbridge("convert", "models", "--to", "onnx", "-o", "out", "--jobs", 1,
                            "--shard", f"{k}/3", "--json", cwd=workdir)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["discovered"] == len(names)
        seen += [m["model"] for m in report["models"] if m["status"] == "ok"]
    assert sorted(seen) == sorted(names)  # every model, none twice
    assert sorted(p.relative_to(workdir / "out").as_posix()
                  for p in (workdir / "out").rglob("*.onnx")) == sorted(names)


runner = CliRunner()


@pytest.mark.parametrize("args,message", [
    (["convert", "models", "--to", "onnx"], "pass -o OUTDIR"),
    (["convert", "empty", "--to", "onnx", "-o", "out"], "no models found"),
    (["convert", "models/m.onnx", "--to", "onnx", "--jobs", "2"], "--jobs only apply"),
    (["convert", "models", "--to", "onnx", "-o", "out", "--shard", "5/3"], "bad --shard"),
    (["convert", "models", "-o", "out", "--save-onnx", "x.onnx"], "--save-onnx"),
])
def test_batch_usage_errors(workdir, args, message):
    (workdir / "empty").mkdir()
    models.onnx_mlp(workdir / "models" / "m.onnx", sizes=(4, 2))
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.slow
def test_timeout_kills_and_replaces_the_worker(workdir):
    import torch

    root = workdir / "models"
    root.mkdir()
    torch.save(torch.nn.Linear(4, 4).state_dict(), root / "sleepy.pt")
    models.onnx_mlp(root / "fast.onnx", sizes=(8, 4))
    (workdir / "crashmod.py").write_text(CRASH_MODULE)
    (root / "neuralbridge.toml").write_text('["sleepy.pt"]\nmodel_class = "crashmod:Sleepy"\n'
                                            'input_shape = "1,4"\n')
    started = time.monotonic()
    proc = neuralbridge("convert", "models", "--to", "onnx", "-o", "out", "--jobs", 1,
                        "--timeout", 20, "--json", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    status = {m["model"]: (m["status"], m["error"]) for m in json.loads(proc.stdout)["models"]}
    assert status["sleepy.pt"][0] == "timeout" and "20 s" in status["sleepy.pt"][1]
    assert status["fast.onnx"] == ("ok", None)
    assert time.monotonic() - started < 300
