"""The zoo's CI subset: three small models (a CNN, an Embedding+LSTM, a two-input Keras
model) through every route that applies, each one a real `neuralbridge convert` process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_zoo_ci_subset_passes_every_route(tmp_path):
    report = tmp_path / "ZOO.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "zoo.py"), "--set", "ci",
                           "--jobs", "2", "--work", str(tmp_path / "work"), "--report",
                           str(report)], capture_output=True, text=True, timeout=2400)
    rows = [json.loads(line) for line in
            (tmp_path / "work" / "results.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r["exit"] != 0]
    assert proc.returncode == 0 and not failed, failed or proc.stderr[-2000:]
    # torch models: 7 routes each; the Keras model: 5
    assert len(rows) == 7 + 7 + 5
    for row in rows:
        assert row["rel"] is not None and row["rel"] < 1e-3, row
        assert row["peak_mib"] > 100, row  # measured for the process itself
    trips = [r for r in rows if r["route"] == "round trip"]
    assert all(r["end_to_end"]["passed"] and r["end_to_end"]["rel"] < 1e-3 for r in trips)
    text = report.read_text()
    assert "**19 of 19 conversions passed** over 3 models." in text


def test_resume_in_a_new_clone_remakes_only_the_lost_inputs(tmp_path, monkeypatch):
    """Results kept in git, work folder gone: a passed route is redone only when a pending
    route reads its output and that file is missing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("zoo_script", ROOT / "scripts" / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, zoo)  # dataclasses look their module up
    spec.loader.exec_module(zoo)
    monkeypatch.setattr(zoo, "WORK", tmp_path)
    model = zoo.registry()["resnet18"]
    plan = zoo.torch_plan(model)
    passed = {("resnet18", r): {"exit": 0} for r in ("torch->onnx", "torch->tf", "torch->tflite",
                                                       "onnx->torch")}
    assert zoo._lost_inputs("resnet18", plan, passed) == {"resnet18.onnx", "resnet18.savedmodel"}
    (tmp_path / "resnet18.onnx").write_bytes(b"kept")
    assert zoo._lost_inputs("resnet18", plan, passed) == {"resnet18.savedmodel"}
    every = {("resnet18", route): {"exit": 0} for route, _, _ in plan}
    assert zoo._lost_inputs("resnet18", plan, every) == set()
