"""ONNX -> Keras 3 (neuralbridge_cli.backends.onnx_to_keras): real torch exports, onnxruntime as the
reference, and a plain-Keras subprocess (nothing of this package imported) for the saved files."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from models import rel_error, seeded_init, small_cnn, text_lstm, torchvision_model, \
    transformer_encoder
from neuralbridge_cli.backends import onnx_to_keras as o2k
from neuralbridge_cli.errors import ConversionError

TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore")  # exporter tracer/deprecation chatter


# ----------------------------------------------------------------------------- helpers
def export_onnx(model, inputs, path, *, dynamo: bool, dynamic_batch: bool = True):
    """torch.onnx export with a dynamic batch: dynamo (opset 18) or TorchScript (opset 17)."""
    names = [f"in{i}" for i in range(len(inputs))]
    if dynamo:
        batch = torch.export.Dim("batch")
        torch.onnx.export(model, tuple(inputs), str(path), dynamo=True, opset_version=18,
                          input_names=names,
                          dynamic_shapes=tuple({0: batch} for _ in inputs) if dynamic_batch else None)
    else:
        axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
        torch.onnx.export(model, tuple(inputs), str(path), dynamo=False, opset_version=17,
                          input_names=names, dynamic_axes=axes)
    return onnx.load(str(path))


def run_ort(proto, arrays):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), arrays)})


def run_keras(model, arrays):
    out = model(arrays if len(arrays) > 1 else arrays[0])
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else [np.asarray(out)]


def seeded(shape, seed, dtype="float32", high=100):
    rng = np.random.default_rng(seed)
    if dtype.startswith("int"):
        return rng.integers(0, high, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def assert_matches(model, proto, arrays_by_batch):
    """Keras outputs vs onnxruntime for each list of input arrays; returns the worst rel error."""
    worst = 0.0
    for arrays in arrays_by_batch:
        ref = run_ort(proto, arrays)
        got = run_keras(model, arrays)
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            assert g.shape == r.shape
            assert float(np.max(np.abs(r))) > 1e-3  # the check is not vacuous
            worst = max(worst, rel_error(g, r))
    assert worst < TOL, worst
    return worst


def convert_and_check(torch_model, shape, tmp_path, *, dynamo, dtype="float32", name="m"):
    example = torch.from_numpy(seeded((2,) + shape, 0, dtype))
    proto = export_onnx(torch_model, [example], tmp_path / f"{name}.onnx", dynamo=dynamo)
    model = o2k.convert_onnx_to_keras(proto)
    assert model.inputs[0].shape[0] is None  # dynamic batch
    assert_matches(model, proto, [[seeded((2,) + shape, 1, dtype)], [seeded((3,) + shape, 2, dtype)]])
    return proto, model


# ----------------------------------------------------------------------------- real models
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript17", "dynamo18"])
def test_small_cnn(tmp_path, dynamo):
    convert_and_check(small_cnn(), (3, 32, 32), tmp_path, dynamo=dynamo)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript17", "dynamo18"])
def test_text_lstm_embedding(tmp_path, dynamo):
    proto, model = convert_and_check(text_lstm(), (12,), tmp_path, dynamo=dynamo, dtype="int64")
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Embedding", "LSTM", "Dense"} <= kinds


def test_bidirectional_two_layer_lstm(tmp_path):
    convert_and_check(text_lstm(bidirectional=True, num_layers=2), (9,), tmp_path, dynamo=False,
                      dtype="int64")


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript17", "dynamo18"])
def test_transformer_encoder(tmp_path, dynamo):
    convert_and_check(transformer_encoder(), (10, 32), tmp_path, dynamo=dynamo)


def test_resnet18_keras_and_h5_roundtrip(tmp_path):
    proto, model = convert_and_check(torchvision_model("resnet18"), (3, 64, 64), tmp_path,
                                     dynamo=False)
    # NHWC inside: one transpose at the input, none between the convolutions
    assert sum(type(op).__name__ == "Transpose" for op in model.operations) == 1
    x = [seeded((3, 3, 64, 64), 5)]
    want = run_ort(proto, x)
    for path in (tmp_path / "r18.keras", tmp_path / "r18.h5"):
        (o2k.save_keras if path.suffix == ".keras" else o2k.save_h5)(model, path)
        import keras

        loaded = keras.saving.load_model(str(path))  # safe_mode=True, no custom_objects
        assert rel_error(run_keras(loaded, x)[0], want[0]) < TOL


def test_layout_nhwc(tmp_path):
    proto = export_onnx(small_cnn(), [torch.zeros(2, 3, 32, 32)], tmp_path / "c.onnx", dynamo=False)
    model = o2k.convert_onnx_to_keras(proto, layout="nhwc")
    assert tuple(model.inputs[0].shape) == (None, 32, 32, 3)
    x = seeded((3, 3, 32, 32), 3)
    ref = run_ort(proto, [x])[0]
    got = run_keras(model, [np.ascontiguousarray(x.transpose(0, 2, 3, 1))])[0]
    assert got.shape == ref.shape and rel_error(got, ref) < TOL
    # no transpose at all in the NHWC model
    assert not any(type(op).__name__ == "Transpose" for op in model.operations)


# ----------------------------------------------------------------------------- op coverage
class _Fn(torch.nn.Module):
    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for key, mod in mods.items():
            setattr(self, key, mod)

    def forward(self, *xs):
        return self.fn(self, *xs)


F = torch.nn.functional
OP_CASES = {
    "conv_transpose": (lambda: _Fn(lambda s, x: s.ct(x), ct=torch.nn.ConvTranspose2d(
        4, 6, 3, stride=2, padding=1, output_padding=1)), [(4, 8, 8)]),
    "pool_ceil_and_exclusive_pad": (lambda: _Fn(lambda s, x: torch.cat([
        F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True),
        F.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=False)], 1)),
        [(3, 10, 10)]),
    "resize_pad_pixel_shuffle": (lambda: _Fn(lambda s, x: F.pixel_shuffle(F.pad(
        F.interpolate(x, scale_factor=2, mode="bilinear"), (1, 1, 1, 1), mode="reflect"), 2)),
        [(8, 5, 5)]),
    "gru_bidirectional": (lambda: _Fn(lambda s, x: s.g(x)[0], g=torch.nn.GRU(
        8, 12, batch_first=True, bidirectional=True)), [(7, 8)]),
    "multihead_attention": (lambda: _Fn(lambda s, x: s.a(x, x, x, need_weights=False)[0],
                                        a=torch.nn.MultiheadAttention(16, 4, batch_first=True)),
                            [(5, 16)]),
    "norms_and_activations": (lambda: _Fn(lambda s, x: s.g(s.i(x)) + F.leaky_relu(x, 0.2)
                                          + F.elu(x) + F.mish(x) + s.p(x) + F.hardtanh(x),
                                          i=torch.nn.InstanceNorm2d(6, affine=True),
                                          g=torch.nn.GroupNorm(3, 6), p=torch.nn.PReLU(6)),
                              [(6, 5, 5)]),
    "slicing_gather_reduce": (lambda: _Fn(lambda s, x: torch.cat([
        x.split(2, dim=1)[1], x[:, :, ::2, 1:-1].mean(-1, keepdim=True).expand(-1, -1, -1, 6)[:, :2],
        x[:, [3, 0]].amax(2, keepdim=True).expand(-1, -1, 3, -1)], 2).cumsum(1).softmax(-1)),
        [(6, 6, 6)]),
    "conv1d_dilated_depthwise": (lambda: _Fn(lambda s, x: s.d(s.c(x)), c=torch.nn.Conv1d(
        4, 8, 3, padding=2, dilation=2), d=torch.nn.Conv1d(8, 16, 5, stride=2, groups=8)),
        [(4, 16)]),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_coverage(tmp_path, case):
    build, shapes = OP_CASES[case]
    model = seeded_init(build(), 0)
    examples = [torch.from_numpy(seeded((2,) + s, k)) for k, s in enumerate(shapes)]
    proto = export_onnx(model, examples, tmp_path / "op.onnx", dynamo=False)
    keras_model = o2k.convert_onnx_to_keras(proto)
    assert_matches(keras_model, proto, [[seeded((2,) + s, 7 + k) for k, s in enumerate(shapes)],
                                        [seeded((3,) + s, 9 + k) for k, s in enumerate(shapes)]])


def test_lstm_with_initial_state_inputs(tmp_path):
    lstm = seeded_init(_Fn(lambda s, x, h, c: s.g(x, (h, c))[0],
                           g=torch.nn.LSTM(8, 12, batch_first=True)), 0)
    xs = [torch.from_numpy(seeded(s, k)) for k, s in enumerate([(2, 7, 8), (1, 2, 12), (1, 2, 12)])]
    proto = export_onnx(lstm, xs, tmp_path / "l.onnx", dynamo=False, dynamic_batch=False)
    model = o2k.convert_onnx_to_keras(proto)
    assert_matches(model, proto, [[x.numpy() for x in xs]])


# ----------------------------------------------------------------------------- errors / options
def _graph_model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_op_names_the_op():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    proto = _graph_model([helper.make_node("Relu", ["x"], ["r"]),
                          helper.make_node("Det", ["r"], ["y"], name="the_det")], [x], [y])
    with pytest.raises(ConversionError, match=r"ONNX op 'Det' \(node 'the_det'\)"):
        o2k.convert_onnx_to_keras(proto)
    custom = _graph_model([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")],
                          [x], [y])
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(ConversionError, match="com.microsoft.Gelu"):
        o2k.convert_onnx_to_keras(custom)


def test_dynamic_non_batch_dim_needs_input_shapes():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(seeded((4, 3), 0), "w")
    proto = _graph_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [w])
    with pytest.raises(ConversionError, match="dynamic dimension at axis 1"):
        o2k.convert_onnx_to_keras(proto)
    model = o2k.convert_onnx_to_keras(proto, input_shapes={"x": (None, 5, 4)})
    assert tuple(model.inputs[0].shape) == (None, 5, 4)
    assert_matches(model, proto, [[seeded((3, 5, 4), 1)]])


def test_progress_messages():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    proto = _graph_model([helper.make_node("Sigmoid", ["x"], ["y"])], [x], [y])
    messages = []
    model = o2k.convert_onnx_to_keras(proto, progress=messages.append)
    assert messages and all(isinstance(m, str) for m in messages)
    assert [o.name for o in model.outputs] and model.output_names == ["y"]


# ----------------------------------------------------------------------------- plain Keras loads
_LOADER = textwrap.dedent("""
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np, keras
    report = {}
    for path, npz in json.loads(sys.argv[1]):
        io = np.load(npz)
        xs = [io[k] for k in sorted(k for k in io.files if k.startswith("x"))]
        model = keras.saving.load_model(path)          # default safe_mode=True, no custom_objects
        out = model(xs if len(xs) > 1 else xs[0])
        out = out if isinstance(out, (list, tuple)) else [out]
        report[path] = [np.asarray(o).tolist() for o in out]
    report["project_modules"] = sorted(m for m in sys.modules if m.startswith("neuralbridge"))
    print("REPORT" + json.dumps(report))
""")


def test_saved_files_load_in_plain_keras(tmp_path):
    """.keras and .h5 load in a fresh interpreter that imports nothing of this project."""
    jobs, expected = [], {}
    cases = [("cnn", small_cnn(), (3, 32, 32), "float32"),
             ("lstm", text_lstm(), (12,), "int64"),
             ("enc", transformer_encoder(), (10, 32), "float32")]
    for name, torch_model, shape, dtype in cases:
        proto = export_onnx(torch_model, [torch.from_numpy(seeded((2,) + shape, 0, dtype))],
                            tmp_path / f"{name}.onnx", dynamo=False)
        model = o2k.convert_onnx_to_keras(proto)
        x = seeded((3,) + shape, 4, dtype)
        np.savez(tmp_path / f"{name}.npz", x0=x)
        ref = run_ort(proto, [x])
        for ext, save in (("keras", o2k.save_keras), ("h5", o2k.save_h5)):
            path = str(tmp_path / f"{name}.{ext}")
            save(model, path)
            jobs.append((path, str(tmp_path / f"{name}.npz")))
            expected[path] = ref
    proc = subprocess.run([sys.executable, "-I", "-c", _LOADER, json.dumps(jobs)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT")), None)
    assert line is not None, proc.stderr[-3000:]
    report = json.loads(line[len("REPORT"):])
    assert report.pop("project_modules") == []
    for path, ref in expected.items():
        got = [np.asarray(o, dtype=np.float32) for o in report[path]]
        assert rel_error(got[0], ref[0]) < TOL, path


def test_keras_builtin_h5_would_not_load(tmp_path):
    """Why save_h5 exists: Keras 3's own legacy .h5 config cannot name keras.ops nodes."""
    import keras

    proto = export_onnx(small_cnn(), [torch.zeros(2, 3, 32, 32)], tmp_path / "c.onnx", dynamo=False)
    model = o2k.convert_onnx_to_keras(proto)
    model.save(str(tmp_path / "builtin.h5"))
    with pytest.raises(Exception, match="Unknown layer"):
        keras.saving.load_model(str(tmp_path / "builtin.h5"))
    o2k.save_h5(model, tmp_path / "ours.h5")
    keras.saving.load_model(str(tmp_path / "ours.h5"))
