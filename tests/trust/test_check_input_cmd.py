"""check-input: each kind of wrong input gets its own finding and fix; --fix output runs."""
from __future__ import annotations

import numpy as np
import pytest

from trust_helpers import error_line, export_cnn, invoke, invoke_json, token_model

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check")
    export_cnn(folder / "cnn.onnx", static=True)  # input [1, 3, 32, 32] float32
    token_model(folder / "tokens.onnx")  # ids [1, 16] int64
    return folder


def _image_u8(shape):
    return RNG.integers(0, 256, shape).astype(np.uint8)


def _write(folder, name, data):
    path = folder / name
    if isinstance(data, dict):
        np.savez(path, **data)
    elif name.endswith(".png"):
        from PIL import Image

        Image.fromarray(data).save(path)
    else:
        np.save(path, data)
    return path


# (model, file name, data, expected kind, fixable by --fix)
CASES = [
    ("cnn", "nobatch.npy", RNG.random((3, 32, 32), np.float32), "missing-batch-dim", True),
    ("cnn", "nhwc.npy", RNG.random((1, 32, 32, 3), np.float32), "layout", True),
    ("cnn", "f64.npy", RNG.random((1, 3, 32, 32)), "dtype", True),
    ("cnn", "pixels.npy", (RNG.random((1, 3, 32, 32)) * 255).astype(np.float32), "value-range",
     True),
    ("cnn", "rank5.npy", RNG.random((1, 1, 3, 32, 32), np.float32), "extra-dim", True),
    ("cnn", "rgba.png", _image_u8((32, 32, 4)), "channels", True),
    ("cnn", "nan.npy", np.full((1, 3, 32, 32), np.nan, np.float32), "non-finite", False),
    ("cnn", "batch4.npy", RNG.random((4, 3, 32, 32), np.float32), "batch-size", False),
    ("cnn", "big.npy", RNG.random((1, 3, 64, 64), np.float32), "image-size", False),
    ("tokens", "short.npz", {"ids": RNG.integers(0, 50, (1, 10))}, "sequence-length", True),
    ("tokens", "named.npz", {"tokens": RNG.integers(0, 50, (1, 16))}, "input-names", True),
    ("tokens", "extra.npz", {"ids": RNG.integers(0, 50, (1, 16)), "mask": np.ones((1, 16))},
     "extra-input", True),
    ("tokens", "none.npz", {}, "missing-input", False),
    ("tokens", "floats.npz", {"ids": RNG.integers(0, 50, (1, 16)).astype(np.float32)}, "dtype",
     True),
    ("tokens", "oov.npz", {"ids": np.full((1, 16), 99)}, "id-range", False),
]


@pytest.mark.parametrize("model,name,data,kind,fixable", CASES, ids=[c[1] for c in CASES])
def test_each_kind_has_its_finding_and_fix(models_dir, tmp_path, model, name, data, kind,
                                           fixable):
    path = _write(tmp_path, name, data)
    result, info = invoke_json("check-input", models_dir / f"{model}.onnx", path)
    assert result.exit_code == 2
    found = {f["kind"]: f for f in info["findings"]}
    assert kind in found, info["findings"]
    assert found[kind]["fix"] and found[kind]["message"]
    assert found[kind]["fixable"] is fixable


def test_fix_writes_an_input_that_passes_and_runs(models_dir, tmp_path):
    path = _write(tmp_path, "photo.png", _image_u8((32, 32, 3)))
    result, info = invoke_json("check-input", models_dir / "cnn.onnx", path, "--fix", "-o",
                               tmp_path / "fixed.npz")
    assert result.exit_code == 0, result.output
    kinds = [f["kind"] for f in info["findings"]]
    assert kinds == ["missing-batch-dim", "layout", "dtype", "value-range"]
    assert info["recheck_ok"] and info["ran"]["outputs"] == [[1, 10]]
    fixed = np.load(tmp_path / "fixed.npz")
    assert fixed["input"].shape == (1, 3, 32, 32) and fixed["input"].max() <= 1.0
    again = invoke("check-input", models_dir / "cnn.onnx", tmp_path / "fixed.npz")
    assert again.exit_code == 0 and "fits" in again.stdout


def test_fix_pads_a_short_sequence(models_dir, tmp_path):
    path = _write(tmp_path, "short.npz", {"tokens": RNG.integers(0, 50, (10,)).astype(np.float64)})
    result, info = invoke_json("check-input", models_dir / "tokens.onnx", path, "--fix", "-o",
                               tmp_path / "ok.npz")
    assert result.exit_code == 0, result.output
    assert {"input-names", "missing-batch-dim", "sequence-length", "dtype"} <= \
        {f["kind"] for f in info["findings"]}
    assert np.load(tmp_path / "ok.npz")["ids"].shape == (1, 16)


def test_unfixable_input_is_refused_by_fix(models_dir, tmp_path):
    path = _write(tmp_path, "nan.npy", np.full((1, 3, 32, 32), np.nan, np.float32))
    result = invoke("check-input", models_dir / "cnn.onnx", path, "--fix")
    assert result.exit_code == 2 and "manual fix" in error_line(result)
    assert not (tmp_path / "fixed.npz").exists()


def test_api_returns_findings(models_dir):
    from neuralbridge_cli import check_input

    ok = check_input(str(models_dir / "cnn.onnx"), np.zeros((1, 3, 32, 32), np.float32))
    assert ok == []
    findings = check_input(str(models_dir / "cnn.onnx"), np.zeros((32, 32, 3), np.float64))
    assert [f.kind for f in findings] == ["missing-batch-dim", "layout", "dtype"]
