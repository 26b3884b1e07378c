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
