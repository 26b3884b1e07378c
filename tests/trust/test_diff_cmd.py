"""diff: a fine-tuned layer is found by name; a Keras model matches its PyTorch conversion."""
from __future__ import annotations

import numpy as np
import pytest

from trust_helpers import invoke, invoke_json


def test_reinitialised_last_layer_is_the_only_change(workdir):
    import torch

    import models

    model = models.small_cnn()
    torch.save(model.state_dict(), "base.pt")
    torch.manual_seed(1)
    model[-1].reset_parameters()
    torch.save(model.state_dict(), "tuned.pt")
    result, data = invoke_json("diff", "base.pt", "tuned.pt", "--model-class",
                               "models:small_cnn", "--html", "diff.html")
    assert result.exit_code == 0, result.output
    assert data["alignment"] == "name"
    assert data["changed_layers"] == ["11"]  # the final Linear of the Sequential
    assert data["changed"] == 2 and data["matched"] == data["a_tensors"]
    assert not data["structure"] and not data["unmatched_a"] and not data["unmatched_b"]
    page = (workdir / "diff.html").read_text()
    assert "<svg" in page and "11.weight" in page


def test_structure_change_is_reported(workdir):
    import torch
    from torch import nn

    import models

    torch.save(models.small_cnn().state_dict(), "base.pt")
    table = invoke("diff", "base.pt", "base.pt", "--model-class", "models:small_cnn")
    assert table.exit_code == 0 and "every weight matched and unchanged" in table.stdout
    wider = models.small_cnn()
    wider[-1] = nn.Linear(16, 12)
    torch.export.save(torch.export.export(wider, (torch.zeros(2, 3, 32, 32),)), "wider.pt2")
    result, data = invoke_json("diff", "base.pt", "wider.pt2", "--model-class",
                               "models:small_cnn")
    assert result.exit_code == 0, result.output
    assert data["structure"], data


def _keras_cnn():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(epsilon=1e-3)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # BatchNorm statistics far from identity, so folding shows
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([1 + 0.2 * rng.standard_normal(g.shape), rng.standard_normal(b.shape),
                               rng.standard_normal(m.shape), 1 + rng.random(v.shape)])
        if isinstance(layer, keras.layers.Dense):
            layer.set_weights([w + rng.standard_normal(w.shape) for w in layer.get_weights()])
    return model


def test_keras_model_against_its_torch_conversion(workdir):
    _keras_cnn().save("small.keras")
    assert invoke("convert", "small.keras", "--to", "torch", "-o", "small.pt2").exit_code == 0
    result, data = invoke_json("diff", "small.keras", "small.pt2")
    assert result.exit_code == 0, result.output
    assert data["alignment"] == "position"
    assert data["changed"] == 0 and not data["unmatched_a"] and not data["unmatched_b"]
    assert max(t["rel_l2"] for t in data["tensors"]) < 1e-5
    assert data["identical"]


@pytest.mark.slow
def test_mobilenetv2_keras_against_its_torch_conversion(workdir):
    """Done-when: every weight of Keras MobileNetV2 matched and unchanged in the conversion."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35,
                                           classes=10)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([1 + 0.1 * rng.standard_normal(g.shape),
                               0.1 * rng.standard_normal(b.shape),
                               0.1 * rng.standard_normal(m.shape), 1 + 0.2 * rng.random(v.shape)])
    model.save("mnv2.keras")
    assert invoke("convert", "mnv2.keras", "--to", "torch", "-o", "mnv2.pt2").exit_code == 0
    result, data = invoke_json("diff", "mnv2.keras", "mnv2.pt2")
    assert result.exit_code == 0
    assert data["a_tensors"] == 262 and data["changed"] == 0
    assert not data["unmatched_a"] and not data["unmatched_b"] and data["identical"]


@pytest.mark.slow
def test_resnet18_final_layer_reinitialised(workdir):
    import torch

    import models

    model = models.torchvision_model("resnet18")
    torch.save(model.state_dict(), "a.pt")
    torch.manual_seed(5)
    model.fc.reset_parameters()
    torch.save(model.state_dict(), "b.pt")
    result, data = invoke_json("diff", "a.pt", "b.pt", "--model-class",
                               "torchvision.models:resnet18")
    assert data["changed_layers"] == ["fc"] and data["changed"] == 2


def test_torch_against_its_onnx_export(workdir):
    """By position, with the exporter's BatchNorm folding undone; integer constants ignored."""
    from trust_helpers import export_cnn

    export_cnn(workdir / "cnn.onnx")
    result, data = invoke_json("diff", "models:small_cnn", "cnn.onnx")
    assert result.exit_code == 0, result.output
    assert data["alignment"] == "position" and data["identical"], data
    assert data["matched"] == data["b_tensors"] == 8  # 3 convs + linear, weight and bias each
