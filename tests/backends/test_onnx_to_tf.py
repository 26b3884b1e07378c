"""ONNX -> TensorFlow (onnx2tf, saved without Keras): real torch exports, numbers checked
against onnxruntime relative to the output scale (seeded O(1) models, see tests/models.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import models
from neuralbridge_cli.errors import ConversionError

TOL = 1e-4


def export(model, args, path, *, names=("x",), outputs=("y",), dynamic=True, dynamo=False):
    """torch -> ONNX; TorchScript exporter at opset 17 by default, dynamic batch."""
    import torch

    args = args if isinstance(args, tuple) else (args,)
    if dynamo:
        from torch.export import Dim

        batch = Dim("batch", min=1, max=64)
        torch.onnx.export(model, args, str(path), dynamo=True, opset_version=18,
                          input_names=list(names), output_names=list(outputs),
                          dynamic_shapes=tuple({0: batch} for _ in args))
    else:
        axes = {n: {0: "batch"} for n in (*names, *outputs)} if dynamic else None
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17,
                          input_names=list(names), output_names=list(outputs),
                          dynamic_axes=axes)
    import onnx

    return onnx.load(str(path))


def ort_run(proto, arrays):
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), arrays)})


def as_list(outs):
    return [o.numpy() for o in (outs if isinstance(outs, tuple) else (outs,))]


def assert_close(actual, reference):
    assert len(actual) == len(reference)
    for a, r in zip(actual, reference):
        assert a.shape == r.shape
        assert np.abs(r).max() > 1e-2, "reference too small for a relative check"
        assert models.rel_error(a, r) < TOL


def o2t():
    from neuralbridge_cli.backends import onnx_to_tf

    return onnx_to_tf


def nchw_images(batch, size=32, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The small CNN exported with a dynamic batch, and its conversion (layout keep)."""
    import torch

    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    proto = export(models.small_cnn(), torch.zeros(2, 3, 32, 32), path)
    return proto, o2t().convert_onnx_to_tf(proto)


def test_small_cnn_matches_onnxruntime_at_any_batch(cnn):
    import tensorflow as tf

    proto, module = cnn
    assert isinstance(module, tf.Module) and isinstance(module, o2t().TFConverted)
    assert module.input_names == ("x",) and module.output_names == ("y",)
    (spec,) = module.serve.input_signature
    assert spec.shape.as_list() == [None, 3, 32, 32] and spec.dtype == tf.float32
    assert module.max_rel_error is not None and module.max_rel_error < TOL
    for batch in (2, 5):
        x = nchw_images(batch)
        out = module(x)
        assert isinstance(out, tf.Tensor)  # one output: a tensor, not a tuple
        assert_close([out.numpy()], ort_run(proto, [x]))


def test_conversion_is_quiet_and_reports_progress(cnn, capsys):
    proto, _ = cnn
    messages = []
    o2t().convert_onnx_to_tf(proto, progress=messages.append)
    assert capsys.readouterr().out == ""  # onnx2tf's prints do not reach stdout
    assert any("onnx2tf" in m for m in messages)


def test_nhwc_layout_takes_channels_last_images(cnn):
    proto, _ = cnn
    module = o2t().convert_onnx_to_tf(proto, layout="nhwc")
    (spec,) = module.serve.input_signature
    assert spec.shape.as_list() == [None, 32, 32, 3]
    x = nchw_images(3)
    assert_close(as_list(module(x.transpose(0, 2, 3, 1))), ort_run(proto, [x]))


def test_saved_model_runs_with_plain_tensorflow(cnn, tmp_path):
    proto, module = cnn
    path = tmp_path / "saved"
    o2t().save_saved_model(module, str(path))
    x = nchw_images(3)
    np.save(tmp_path / "x.npy", x)
    assert not (path / "keras_metadata.pb").exists()
    # a fresh interpreter, isolated (-I): no project on sys.path, only TensorFlow
    code = f"""
import json, numpy as np, tensorflow as tf
m = tf.saved_model.load({str(path)!r})
x = np.load({str(tmp_path / 'x.npy')!r})
sig = m.signatures["serving_default"]
(key,) = sig.structured_input_signature[1]
out = sig(**{{key: tf.constant(x)}})
print(json.dumps({{"input_key": key, "output_keys": sorted(out),
                  "call": m(x).numpy().tolist(), "serve": m.serve(x).numpy().tolist(),
                  "signature": out["y"].numpy().tolist()}}))
"""
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["input_key"] == "x" and result["output_keys"] == ["y"]
    (ref,) = ort_run(proto, [x])
    for key in ("call", "serve", "signature"):
        assert_close([np.asarray(result[key], np.float32)], [ref])


def test_tflite_runs_at_another_batch(cnn, tmp_path):
    proto, module = cnn
    path = tmp_path / "m.tflite"
    o2t().save_tflite(module, str(path))
    x = nchw_images(3)
    assert_close(o2t().run_tflite(str(path), [x]), ort_run(proto, [x]))


def test_dynamo_export_converts(tmp_path):
    import torch

    proto = export(models.small_cnn(), torch.zeros(2, 3, 32, 32), tmp_path / "d.onnx",
                   dynamo=True)
    module = o2t().convert_onnx_to_tf(proto)
    x = nchw_images(2)
    assert_close(as_list(module(x)), ort_run(proto, [x]))


def two_in_two_out():
    """image + vector in, a 4D feature map and logits out (onnx2tf makes the map NHWC)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 + 5, 3)

        def forward(self, image, vec):
            fmap = torch.relu(self.bn(self.conv(image)))
            pooled = fmap.mean(dim=(2, 3))
            return fmap, self.fc(torch.cat([pooled, vec], 1))

    return models.seeded_init(Net())


def test_two_inputs_two_outputs_keep_onnx_layout_and_order(tmp_path):
    import torch

    proto = export(two_in_two_out(), (torch.zeros(2, 3, 16, 16), torch.zeros(2, 5)),
                   tmp_path / "io.onnx", names=("image", "extra"), outputs=("map", "logits"))
    module = o2t().convert_onnx_to_tf(proto)
    assert module.input_names == ("image", "extra")  # names not in sorted order, on purpose
    assert module.output_names == ("map", "logits")
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((3, 3, 16, 16)).astype(np.float32),
              rng.standard_normal((3, 5)).astype(np.float32)]
    outs = module(*arrays)
    assert isinstance(outs, tuple) and outs[0].shape == (3, 4, 16, 16)
    refs = ort_run(proto, arrays)
    assert_close(as_list(outs), refs)
    o2t().save_tflite(module, str(tmp_path / "io.tflite"))
    assert_close(o2t().run_tflite(str(tmp_path / "io.tflite"), arrays), refs)


def test_text_lstm_takes_token_ids_as_is(tmp_path):
    import tensorflow as tf

    ids = models.seeded_input((2, 12), dtype="int64", high=100)
    proto = export(models.text_lstm(vocab=100), ids, tmp_path / "lstm.onnx", names=("ids",))
    for layout in ("keep", "nhwc"):
        module = o2t().convert_onnx_to_tf(proto, layout=layout)
        (spec,) = module.serve.input_signature
        assert spec.shape.as_list() == [None, 12] and spec.dtype == tf.int64
        x = models.seeded_input((3, 12), seed=5, dtype="int64", high=100).numpy()
        refs = ort_run(proto, [x])
        assert_close(as_list(module(x)), refs)
    o2t().save_tflite(module, str(tmp_path / "lstm.tflite"))
    assert_close(o2t().run_tflite(str(tmp_path / "lstm.tflite"), [x]), refs)


def test_transformer_encoder_sequence_input_is_not_transposed(tmp_path):
    x0 = models.seeded_input((2, 12, 32))
    proto = export(models.transformer_encoder(d_model=32), x0, tmp_path / "enc.onnx")
    for layout in ("keep", "nhwc"):
        module = o2t().convert_onnx_to_tf(proto, layout=layout)
        (spec,) = module.serve.input_signature
        assert spec.shape.as_list() == [None, 12, 32]
        x = models.seeded_input((3, 12, 32), seed=7).numpy()
        out = module(x)
        assert out.shape == (3, 12, 32)
        assert_close(as_list(out), ort_run(proto, [x]))


def test_fixed_batch_one_graph_still_takes_any_batch(tmp_path):
    import torch

    proto = export(models.small_cnn(), torch.zeros(1, 3, 32, 32), tmp_path / "b1.onnx",
                   dynamic=False)
    module = o2t().convert_onnx_to_tf(proto)
    assert module.serve.input_signature[0].shape.as_list() == [None, 3, 32, 32]
    x = nchw_images(3)
    ref = np.concatenate([ort_run(proto, [x[i:i + 1]])[0] for i in range(3)])
    assert_close(as_list(module(x)), [ref])


def test_no_network_access_when_onnx2tf_wants_test_images(tmp_path, monkeypatch):
    """A fixed batch <= 20 and 3-channel NHWC inputs make onnx2tf fetch sample images over
    HTTP; the converter must serve them offline."""
    import socket

    import torch

    proto = export(models.small_cnn(), torch.zeros(2, 3, 32, 32), tmp_path / "b2.onnx",
                   dynamic=False)
    mod = o2t()
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection",
                        lambda address, *a, **k: refuse(None, address))
    served = []
    original = mod._offline_test_images
    monkeypatch.setattr(mod, "_offline_test_images", lambda: served.append(1) or original())
    module = mod.convert_onnx_to_tf(proto, layout="nhwc")
    assert served, "the download path of onnx2tf was not exercised"
    assert attempts == []
    x = nchw_images(2)
    assert_close(as_list(module(x.transpose(0, 2, 3, 1))), ort_run(proto, [x]))


def test_unconvertible_graph_raises_conversion_error_naming_the_node():
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Frobnicate", ["x"], ["y"], name="frob_1", domain="example.custom")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("example.custom", 1)])
    onnx.checker.check_model(proto)
    with pytest.raises(ConversionError) as info:
        o2t().convert_onnx_to_tf(proto)
    message = str(info.value)
    assert "Frobnicate" in message and "frob_1" in message
    assert "\n" not in message


def test_resnet18_to_saved_model(tmp_path):
    """(Speed is measured by scripts/bench.py, not asserted here.)"""
    import torch

    proto = export(models.torchvision_model("resnet18"), torch.zeros(2, 3, 224, 224),
                   tmp_path / "r18.onnx")
    module = o2t().convert_onnx_to_tf(proto)  # includes the check against onnxruntime
    o2t().save_saved_model(module, str(tmp_path / "r18"))
    x = nchw_images(2, size=224)
    assert_close(as_list(module(x)), ort_run(proto, [x]))


def test_keras_builder_module_tracks_each_weight_once(cnn, tmp_path):
    """The Keras variables and the tf.Variables the traced graph captures are the same
    weights: a SavedModel held each twice (twice the size on disk)."""
    from neuralbridge_cli.backends import onnx_to_keras

    proto, _ = cnn
    keras_model = onnx_to_keras.convert_onnx_to_keras(proto)
    module = o2t().wrap_keras_model(keras_model, proto)
    assert len(module.model_variables) == len(keras_model.variables)
    o2t().save_saved_model(module, str(tmp_path / "cnn"))
    import tensorflow as tf

    stored = [name for name, _ in tf.train.list_variables(str(tmp_path / "cnn" / "variables"
                                                             / "variables"))
              if name.startswith("model_variables/")]
    assert len(stored) == len(keras_model.variables)


def test_resize_to_computed_sizes_keeps_a_dynamic_batch(tmp_path):
    """torch's exporter writes Resize(x, sizes=Concat(Shape(x)[:2], [h, w])); onnx2tf fails
    on that with a dynamic batch ("'size' must be a 1-D int32 Tensor") and the conversion
    used to fall back to batch 1 mapped over the batch, which TFLite runs only with Select
    TF ops. With constant scales the first strategy converts it, and the .tflite is plain."""
    import torch

    proto = export(models.upsampling_head(), torch.zeros(2, 3, 30, 30), tmp_path / "up.onnx",
                   dynamo=True)
    assert sum(1 for n in proto.graph.node if n.op_type == "Resize" and n.input[3]) == 2
    module = o2t().convert_onnx_to_tf(proto)
    assert module.strategy == "onnx2tf" and not module.notes
    x = nchw_images(3, size=30)
    assert_close(as_list(module(x)), ort_run(proto, [x]))
    path = tmp_path / "up.tflite"
    o2t().save_tflite(module, str(path))
    assert b"Flex" not in path.read_bytes()
    assert_close(o2t().run_tflite(str(path), [x]), ort_run(proto, [x]))


def test_resize_sizes_that_floor_differently_are_left_alone():
    """7 -> 10 is not floor(7 x float32(10/7)) = 9.99..: such sizes stay sizes."""
    assert o2t()._exact_scales("x", [None, 4, 7, 7], [1, 4, 10, 10], {}) is None
    assert o2t()._exact_scales("x", [None, 4, 7, 7], [("dim", 3, 0), 4, 14, 21], {3: "x"}) \
        == [1.0, 1.0, 2.0, 3.0]
    assert o2t()._exact_scales("x", [None, 4, 7, 7], [("dim", 3, 0), 4, 14, 14], {3: "other"}) is None


def test_resize_with_axes_or_a_kept_aspect_ratio_keeps_its_sizes():
    """Found by an adversarial helper: `axes` reorders what `sizes` mean, and a
    keep_aspect_ratio_policy other than stretch is defined for sizes only (opset 18)."""
    from onnx import TensorProto, helper, numpy_helper

    for attrs, sizes in (({"axes": [0, 1, 3, 2]}, [3, 2, 12, 8]),
                         ({"keep_aspect_ratio_policy": "not_larger"}, [3, 2, 8, 12])):
        nodes = [helper.make_node("Shape", ["x"], ["shape"], end=2),
                 helper.make_node("Concat", ["shape", "hw"], ["sizes"], axis=0),
                 helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", **attrs)]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 6])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(np.asarray(sizes[2:], np.int64), "hw")])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        x = np.random.default_rng(0).standard_normal((3, 2, 4, 6)).astype(np.float32)
        want = ort_run(proto, [x])[0]
        assert o2t()._resize_sizes_to_scales(proto) == 0
        assert ort_run(proto, [x])[0].shape == want.shape
