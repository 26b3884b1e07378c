"""`neuralbridge validate A B` with real models: torch vs onnxruntime, perturbed, NHWC."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trust_helpers import error_line, export_cnn, invoke, invoke_json, nhwc_copy, scale_first_conv


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn")
    proto = export_cnn(folder / "cnn.onnx")
    return folder, proto


def test_torch_vs_its_onnx_passes_with_all_metrics(cnn):
    folder, _ = cnn
    result, data = invoke_json("validate", "models:small_cnn", folder / "cnn.onnx")
    assert result.exit_code == 0, result.output
    row = data["outputs"][0]
    assert data["passed"] and data["batches"] == [2, 3]
    assert row["shape"] == [5, 10]  # batch 2 and batch 3 stacked
    assert row["max_rel_error"] < 1e-5 and row["mean_abs_error"] <= row["max_abs_error"]
    assert row["cosine"] == pytest.approx(1.0, abs=1e-9)
    assert row["top1_agreement"] == 1.0


def test_perturbed_copy_fails_with_exit_3_naming_the_output(cnn, tmp_path):
    folder, proto = cnn
    bad = scale_first_conv(proto, tmp_path / "bad.onnx", 1.01)
    result = invoke("validate", folder / "cnn.onnx", bad)
    assert result.exit_code == 3
    line = error_line(result)
    assert "differs from" in line and f"({proto.graph.output[0].name})" in line
    assert "FAIL" in result.stdout


def test_per_output_tolerance(cnn, tmp_path):
    folder, proto = cnn
    bad = scale_first_conv(proto, tmp_path / "bad.onnx", 1.01)
    name = proto.graph.output[0].name
    result, data = invoke_json("validate", folder / "cnn.onnx", bad, "--atol", f"{name}:1.0")
    assert result.exit_code == 0
    assert data["outputs"][0]["atol"] == 1.0


def test_nhwc_model_validates_against_nchw_source(cnn, tmp_path):
    folder, proto = cnn
    nhwc = nhwc_copy(proto, tmp_path / "nhwc.onnx")
    result, data = invoke_json("validate", "models:small_cnn", nhwc)
    assert result.exit_code == 0, result.output
    assert any("NCHW -> NHWC" in note for note in data["layout"])
    assert data["max_rel_error"] < 1e-5


def test_inputs_file_samples_and_plot(cnn, tmp_path):
    folder, _ = cnn
    batch = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "batch.npz", x=batch)
    result, data = invoke_json("validate", "models:small_cnn", folder / "cnn.onnx",
                               "--inputs", tmp_path / "batch.npz")
    assert result.exit_code == 0 and data["batches"] == [4]
    result, data = invoke_json("validate", "models:small_cnn", folder / "cnn.onnx",
                               "--samples", "2", "--plot", tmp_path / "err.png")
    assert result.exit_code == 0
    assert data["outputs"][0]["shape"] == [10, 10]  # 2 draws x (batch 2 + batch 3)
    assert Path(tmp_path / "err.png").stat().st_size > 1000


def test_bad_tolerance_is_a_usage_error(cnn):
    folder, _ = cnn
    result = invoke("validate", folder / "cnn.onnx", folder / "cnn.onnx", "--atol", "x:abc")
    assert result.exit_code == 2 and "--atol" in error_line(result)


@pytest.mark.slow
def test_resnet18_state_dict_vs_savedmodel_and_perturbed(workdir):
    """Done-when: resnet18 .pt vs its SavedModel passes; one conv x1.01 fails with exit 3."""
    import torch

    import models

    model = models.torchvision_model("resnet18")
    torch.save(model.state_dict(), "r18.pt")
    state = model.state_dict()
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"] * 1.01
    torch.save(state, "r18_bad.pt")
    cls = ["--model-class", "torchvision.models:resnet18"]
    assert invoke("convert", "r18.pt", *cls, "--to", "tf", "-o", "r18.savedmodel").exit_code == 0
    result, data = invoke_json("validate", "r18.pt", "r18.savedmodel", *cls)
    assert result.exit_code == 0 and data["max_rel_error"] < 1e-5
    result = invoke("validate", "r18_bad.pt", "r18.savedmodel", *cls)
    assert result.exit_code == 3 and "(output)" in error_line(result)
