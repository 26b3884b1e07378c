"""Input-spec inference from the first layer, and torch -> ONNX export of real models."""
from __future__ import annotations

import numpy as np
import pytest

import models
from neuralbridge_cli.backends import torch_backend
from neuralbridge_cli.model import ModelHandle
from neuralbridge_cli.options import Options
from neuralbridge_cli.pipeline import convert


def specs_of(module):
    return torch_backend.input_specs(ModelHandle("torch", module, "live", "m"))


def test_infers_conv_linear_embedding_rnn_and_transformer():
    from torch import nn

    (conv,) = specs_of(models.small_cnn())
    assert conv.shape == (None, 3, 224, 224) and conv.dtype == "float32"
    (linear,) = specs_of(nn.Sequential(nn.Linear(12, 4)))
    assert linear.shape == (None, 12)
    (ids,) = specs_of(models.text_lstm(vocab=50))
    assert ids.name == "ids" and ids.dtype == "int64" and ids.shape == (None, 16)
    assert ids.value_range == (0, 50)
    (seq,) = specs_of(models.transformer_encoder(d_model=32))
    assert seq.shape == (None, 16, 32)
    (gru,) = specs_of(nn.GRU(7, 5))  # batch_first=False: (seq, batch, features)
    assert gru.shape == (16, None, 7)


def test_vit_uses_its_image_size():
    import torchvision

    (spec,) = specs_of(torchvision.models.vit_b_16(weights=None, image_size=64))
    assert spec.shape == (None, 3, 64, 64)


def test_nothing_to_infer_from():
    from torch import nn

    assert specs_of(nn.ReLU()) is None


@pytest.mark.parametrize("builder", [models.text_lstm, models.transformer_encoder])
def test_sequence_models_export_to_onnx_with_inferred_shapes(builder):
    module = builder()
    result = convert(module, "onnx", None, Options(atol=1e-5, rtol=1e-4))
    assert result.report.passed and result.report.max_rel_error < 1e-5
    assert any("inferred" in note for note in result.notes)


@pytest.mark.parametrize("opset", [17, 20])
def test_requested_opset_is_honoured(opset):
    """The dynamo exporter translates at 18 and often cannot lower to 17: an older opset
    goes to the TorchScript exporter first; a newer one stays with dynamo."""
    result = convert(models.small_cnn(), "onnx", None, Options(opset=opset))
    proto = result.target.obj
    assert [i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")] == [opset]
    assert result.strategy == ("torchscript" if opset == 17 else "dynamo")
    assert result.report.passed
    assert not any("could not lower" in n for n in result.notes)
