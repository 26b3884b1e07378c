"""Precision variants: convert --precision and compare-precision with real onnxruntime/TFLite."""
from __future__ import annotations

import onnx
import pytest

from trust_helpers import export_cnn, invoke, invoke_json


def _encoder_pt2(path):
    import torch

    import models

    model = models.transformer_encoder(d_model=64, nhead=4, layers=2)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (models.seeded_input((2, 16, 64)),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def test_compare_precision_on_a_transformer_encoder(workdir):
    _encoder_pt2(workdir / "encoder.pt2")
    result, data = invoke_json("compare-precision", "encoder.pt2", "--runs", "5", "-o", "variants",
                               "--plot", "precision.png")
    assert result.exit_code == 0, result.output
    rows = {v["precision"]: v for v in data["variants"]}
    assert list(rows) == ["fp32", "fp16", "int8"]
    assert rows["int8"]["size_bytes"] < rows["fp16"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert rows["fp32"]["max_abs_error"] == 0
    assert 0 < rows["fp16"]["max_rel_error"] < 1e-2
    assert 0 < rows["int8"]["max_rel_error"] < 0.2
    assert all(v["latency_ms"] > 0 and v["latency_runs"] == 5 for v in rows.values())
    assert (workdir / "precision.png").stat().st_size > 1000
    fp16 = onnx.load(rows["fp16"]["path"])
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io kept
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)


def test_convert_precision_onnx(workdir):
    export_cnn(workdir / "cnn.onnx")
    result, data = invoke_json("convert", "cnn.onnx", "--to", "onnx", "--precision", "int8",
                               "-o", "cnn-int8.onnx")
    assert result.exit_code == 0, result.output
    assert data["saved_format"] == "onnx (int8)"
    assert data["validation"]["passed"] and data["validation"]["rtol"] == 0.1
    ops = {n.op_type for n in onnx.load("cnn-int8.onnx").graph.node}
    assert "QuantizeLinear" in ops  # static QDQ for a convolutional graph
    result, data = invoke_json("convert", "cnn.onnx", "--to", "onnx", "--precision", "fp16",
                               "-o", "cnn-fp16.onnx")
    assert result.exit_code == 0 and data["validation"]["max_rel_error"] < 1e-2


def test_dynamic_quantization_and_calibration_file(workdir):
    import numpy as np

    _encoder_pt2(workdir / "encoder.pt2")
    samples = np.random.default_rng(4).standard_normal((6, 16, 64)).astype(np.float32)
    np.savez("calib.npz", src=samples)
    result, data = invoke_json("convert", "encoder.pt2", "--to", "onnx", "--precision", "int8",
                               "--quantization", "dynamic", "-o", "enc-int8.onnx")
    assert result.exit_code == 0, result.output
    ops = {n.op_type for n in onnx.load("enc-int8.onnx").graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    result, data = invoke_json("compare-precision", "encoder.pt2", "--precisions", "int8",
                               "--quantization", "static", "--calibration", "calib.npz",
                               "--runs", "2")
    assert result.exit_code == 0, result.output
    assert [v["precision"] for v in data["variants"]] == ["int8"]
    assert any("calib.npz" in note for note in data["notes"])


def test_precision_needs_onnx_or_tflite(workdir):
    export_cnn(workdir / "cnn.onnx")
    result = invoke("convert", "cnn.onnx", "--to", "keras", "--precision", "fp16")
    assert result.exit_code == 2 and "--precision" in result.output


@pytest.mark.slow
def test_tflite_precisions(workdir):
    import torch

    import models

    program = torch.export.export(models.small_cnn(), (models.seeded_input((2, 3, 32, 32)),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1,
                                                                       max=64)},))
    torch.export.save(program, "cnn.pt2")
    result, data = invoke_json("compare-precision", "cnn.pt2", "--to", "tflite", "--runs", "3")
    assert result.exit_code == 0, result.output
    assert [v["precision"] for v in data["variants"]] == ["fp32", "fp16", "int8"]
    assert all(v["top1_agreement"] == 1.0 for v in data["variants"])


@pytest.mark.slow
def test_resnet18_compare_precision(workdir):
    import torch

    import models

    torch.save(models.torchvision_model("resnet18").state_dict(), "r18.pt")
    result, data = invoke_json("compare-precision", "r18.pt", "--model-class",
                               "torchvision.models:resnet18", "--runs", "5")
    assert result.exit_code == 0, result.output
    rows = {v["precision"]: v for v in data["variants"]}
    assert rows["int8"]["size_bytes"] < rows["fp16"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert rows["int8"]["top1_agreement"] >= 0.5
