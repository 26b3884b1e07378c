"""ONNX -> PyTorch (neuralbridge_cli.backends.onnx_to_torch): real exporters, onnx2torch,
onnxruntime as the reference for ONNX semantics, and a plain-torch subprocess for saved programs."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from models import rel_error, seeded_init, seeded_input, small_cnn, text_lstm, torchvision_model, \
    transformer_encoder, upsampling_head
from neuralbridge_cli.backends import onnx_to_torch as o2t
from neuralbridge_cli.errors import ConversionError

TOL = 1e-4


# ----------------------------------------------------------------------------- helpers
def export_onnx(model, inputs, path, *, dynamo: bool):
    """Export with a dynamic batch: the dynamo exporter (opset 20 here) or TorchScript at opset 17."""
    names = [f"in{i}" for i in range(len(inputs))]
    if dynamo:
        batch = torch.export.Dim("batch")
        torch.onnx.export(model, tuple(inputs), str(path), dynamo=True,
                          dynamic_shapes=tuple({0: batch} for _ in inputs))
    else:
        torch.onnx.export(model, tuple(inputs), str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=["out"],
                          dynamic_axes={**{n: {0: "batch"} for n in names}, "out": {0: "batch"}})
    return onnx.load(str(path))


def run_ort(proto, arrays):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: a for i, a in zip(session.get_inputs(), arrays)})


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def run_saved_in_fresh_python(path, inputs, tmp_path):
    """Load `path` in a new interpreter that imports only torch; return its outputs."""
    torch.save(list(inputs), tmp_path / "inputs.pt")
    code = textwrap.dedent(f"""
        import sys, torch
        path = {str(path)!r}
        try:
            fn = torch.export.load(path).module()
        except Exception:
            fn = torch.jit.load(path)
        xs = torch.load({str(tmp_path / 'inputs.pt')!r})
        with torch.no_grad():
            out = fn(*xs)
        torch.save(list(out) if isinstance(out, (list, tuple)) else [out], {str(tmp_path / 'outputs.pt')!r})
        leaked = [m for m in ("neuralbridge_cli", "onnx2torch", "onnx") if m in sys.modules]
        assert not leaked, leaked
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return torch.load(tmp_path / "outputs.pt")


def check_roundtrip(model, inputs2, inputs3, onnx_proto, tmp_path, *, save=True, prefer="exported",
                    fresh_process=False):
    """Convert `onnx_proto` back to torch, compare with `model` at batch 2, save, reload at batch 3
    (in a new interpreter that imports only torch when `fresh_process`)."""
    prepared = o2t.prepare_for_onnx2torch(onnx_proto)
    arrays = [x.numpy() for x in inputs2]
    for got, want in zip(run_ort(prepared, arrays), run_ort(onnx_proto, arrays)):
        assert rel_error(got, want) < 1e-5  # the graph fixes keep the semantics
    converted = o2t.convert_onnx_to_torch(onnx_proto)
    with torch.no_grad():
        want2 = as_list(model(*inputs2))
        got2 = as_list(converted(*inputs2))
        want3 = as_list(model(*inputs3))
    assert len(got2) == len(want2)
    for got, want in zip(got2, want2):
        assert rel_error(got, want) < TOL
    if not save:
        return converted, None
    fmt = o2t.save_torch_program(converted, list(inputs2), tmp_path / "model.pt2", prefer=prefer)
    assert fmt in ("exported", "torchscript") and not fmt.fixed_batch
    if fresh_process:
        got3 = run_saved_in_fresh_python(tmp_path / "model.pt2", inputs3, tmp_path)
    else:
        with torch.no_grad():
            got3 = as_list(o2t.load_torch_program(tmp_path / "model.pt2")(*inputs3))
    for got, want in zip(got3, want3):
        assert rel_error(got, want) < TOL
    return converted, fmt


def make_model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def vinfo(name, shape=None, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


# ----------------------------------------------------------------------------- real exporters
def test_small_cnn_from_the_dynamo_exporter(tmp_path):
    """Opset 20: Gelu-20, ReduceMean-18, AveragePool-19, Reshape(allowzero=1)."""
    model = small_cnn()
    x2, x3 = seeded_input((2, 3, 32, 32), 0), seeded_input((3, 3, 32, 32), 1)
    proto = export_onnx(model, [x2], tmp_path / "cnn.onnx", dynamo=True)
    assert {"Gelu", "ReduceMean", "AveragePool"} <= {n.op_type for n in proto.graph.node}
    prepared = o2t.prepare_for_onnx2torch(proto)
    assert {imp.version for imp in prepared.opset_import if imp.domain == ""} == {o2t.TARGET_OPSET}
    assert "Gelu" not in {n.op_type for n in prepared.graph.node}
    _, fmt = check_roundtrip(model, [x2], [x3], proto, tmp_path)
    assert fmt == "exported"


def test_resnet18_from_the_torchscript_exporter(tmp_path):
    """Deduplicated weights arrive through Identity nodes (onnx2torch: KeyError 'onnx::Conv_...')."""
    model = torchvision_model("resnet18")
    x2, x3 = seeded_input((2, 3, 64, 64), 0), seeded_input((3, 3, 64, 64), 1)
    with torch.no_grad():
        assert float(model(x2).abs().max()) > 0.1  # the seeded init gives O(1) outputs
    proto = export_onnx(model, [x2], tmp_path / "resnet18.onnx", dynamo=False)
    check_roundtrip(model, [x2], [x3], proto, tmp_path, save=False)


def test_text_lstm_torchscript_export_and_saved_program(tmp_path):
    model = text_lstm()
    ids2 = seeded_input((2, 7), 0, dtype="int64", high=100)
    ids3 = seeded_input((3, 7), 1, dtype="int64", high=100)
    proto = export_onnx(model, [ids2], tmp_path / "lstm.onnx", dynamo=False)
    assert "LSTM" in {n.op_type for n in proto.graph.node}
    _, fmt = check_roundtrip(model, [ids2], [ids3], proto, tmp_path)
    assert fmt == "exported"


def test_bidirectional_two_layer_lstm(tmp_path):
    model = text_lstm(bidirectional=True, num_layers=2)
    ids2 = seeded_input((2, 5), 0, dtype="int64", high=100)
    ids3 = seeded_input((3, 5), 1, dtype="int64", high=100)
    proto = export_onnx(model, [ids2], tmp_path / "bilstm.onnx", dynamo=False)
    check_roundtrip(model, [ids2], [ids3], proto, tmp_path, prefer="torchscript")


def test_transformer_encoder_keeps_a_dynamic_batch(tmp_path):
    """Multi-head attention reshapes by batch * heads, computed from Shape nodes."""
    model = transformer_encoder()
    x2, x3 = seeded_input((2, 6, 32), 0), seeded_input((3, 6, 32), 1)
    proto = export_onnx(model, [x2], tmp_path / "encoder.onnx", dynamo=False)
    assert "Shape" in {n.op_type for n in proto.graph.node}
    _, fmt = check_roundtrip(model, [x2], [x3], proto, tmp_path, fresh_process=True)
    assert fmt == "exported"


def test_torchscript_fallback_is_forced_by_prefer(tmp_path):
    model = small_cnn()
    x2, x3 = seeded_input((2, 3, 32, 32), 0), seeded_input((3, 3, 32, 32), 1)
    proto = export_onnx(model, [x2], tmp_path / "cnn.onnx", dynamo=False)
    _, fmt = check_roundtrip(model, [x2], [x3], proto, tmp_path, prefer="torchscript", fresh_process=True)
    assert fmt == "torchscript"
    assert isinstance(o2t.load_torch_program(tmp_path / "model.pt2"), torch.jit.ScriptModule)


def test_keras_two_inputs_two_outputs_through_tf2onnx():
    from neuralbridge_cli import lazy

    tf = lazy.tensorflow()  # after torch (imported above) and triton
    keras = lazy.require("keras")
    tf2onnx = lazy.require("tf2onnx")
    keras.utils.set_random_seed(0)
    a = keras.Input((16,), name="a")
    b = keras.Input((8, 8, 3), name="b")
    h = keras.layers.Dense(32, activation="relu")(a)
    c = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, padding="same", activation="relu")(b))
    joined = keras.layers.Concatenate()([h, c])
    logits = keras.layers.Dense(5, name="logits")(joined)
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(joined)
    model = keras.Model([a, b], [logits, score])
    spec = [tf.TensorSpec((None, 16), tf.float32, name="a"), tf.TensorSpec((None, 8, 8, 3), tf.float32, name="b")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, 16)).astype(np.float32), rng.standard_normal((2, 8, 8, 3)).astype(np.float32)]
    want = [np.asarray(y) for y in model(xs)]
    converted = o2t.convert_onnx_to_torch(proto)
    with torch.no_grad():
        got = as_list(converted(*[torch.from_numpy(x) for x in xs]))
    assert len(got) == 2
    for g, w in zip(got, want):
        assert g.shape == w.shape and rel_error(g, w) < TOL


# ----------------------------------------------------------------------------- graph passes
def _conv_through_identity():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Identity", ["w"], ["w_shared"]),
             helper.make_node("Conv", ["x", "w_shared"], ["y"], pads=[1, 1, 1, 1])]
    return make_model(nodes, [vinfo("x", ["N", 3, 8, 8])], [vinfo("y")], [w])


def test_identity_fed_initializers_are_folded():
    import onnx2torch

    proto = _conv_through_identity()
    with pytest.raises(KeyError):  # the onnx2torch bug this pass works around
        onnx2torch.convert(proto)
    prepared = o2t.prepare_for_onnx2torch(proto)
    assert "Identity" not in {n.op_type for n in prepared.graph.node}
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = run_ort(proto, [x])[0]
    assert rel_error(run_ort(prepared, [x])[0], want) == 0.0
    with torch.no_grad():
        assert rel_error(o2t.convert_onnx_to_torch(proto)(torch.from_numpy(x)), want) < 1e-6
    assert [n.op_type for n in proto.graph.node] == ["Identity", "Conv"]  # the input is not modified


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu20_is_decomposed(approximate):
    proto = make_model([helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)],
                       [vinfo("x", ["N", 7])], [vinfo("y")], opset=20)
    prepared = o2t.prepare_for_onnx2torch(proto)
    assert "Gelu" not in {n.op_type for n in prepared.graph.node}
    x = np.linspace(-5, 5, 14, dtype=np.float32).reshape(2, 7)
    want = run_ort(proto, [x])[0]
    assert rel_error(run_ort(prepared, [x])[0], want) < 1e-6
    with torch.no_grad():
        assert rel_error(o2t.convert_onnx_to_torch(proto)(torch.from_numpy(x)), want) < 1e-6


def test_outputs_of_multi_output_nodes_and_inputs_come_back_in_order():
    nodes = [helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
             helper.make_node("Relu", ["a"], ["r"])]
    proto = make_model(nodes, [vinfo("x", ["N", 6])], [vinfo("b"), vinfo("r"), vinfo("x")], opset=18)
    x = np.arange(12, dtype=np.float32).reshape(2, 6) - 6
    want = run_ort(proto, [x])
    got = o2t.convert_onnx_to_torch(proto)(torch.from_numpy(x))
    assert len(got) == 3
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w)


def test_opset18_ops_lowered_by_hand_where_version_converter_has_no_adapter():
    """version_converter cannot lower Split-18, so the whole graph is lowered by hand:
    Split num_outputs -> sizes, ReduceMean/ReduceMax axes input -> attribute, Pad axes -> full pads."""
    axes = numpy_helper.from_array(np.asarray([1], np.int64), "axes")
    pads = numpy_helper.from_array(np.asarray([1, 2], np.int64), "pads")
    pad_axes = numpy_helper.from_array(np.asarray([-1], np.int64), "pad_axes")
    nodes = [helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
             helper.make_node("ReduceMean", ["a", "axes"], ["m"], keepdims=1),
             helper.make_node("ReduceMax", ["b", "axes"], ["mx"], keepdims=0),
             helper.make_node("Pad", ["x", "pads", "", "pad_axes"], ["p"], mode="reflect"),
             helper.make_node("Add", ["p", "p"], ["y"])]
    proto = make_model(nodes, [vinfo("x", ["N", 6, 5])], [vinfo("m"), vinfo("mx"), vinfo("y")],
                       [axes, pads, pad_axes], opset=18)
    prepared = o2t.prepare_for_onnx2torch(proto)
    assert {imp.version for imp in prepared.opset_import if imp.domain == ""} == {17}
    x = np.random.default_rng(0).standard_normal((2, 6, 5)).astype(np.float32)
    want = run_ort(proto, [x])
    for got, ref in zip(run_ort(prepared, [x]), want):
        assert rel_error(got, ref) < 1e-6
    with torch.no_grad():
        got = o2t.convert_onnx_to_torch(proto)(torch.from_numpy(x))
    for g, ref in zip(got, want):
        assert tuple(g.shape) == ref.shape and rel_error(g, ref) < 1e-6


def test_reverse_sequence_matches_onnxruntime():
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["y"], batch_axis=0, time_axis=1)
    proto = make_model([node], [vinfo("x", [3, 5, 2]), vinfo("lens", [3], TensorProto.INT64)], [vinfo("y")])
    x = np.arange(30, dtype=np.float32).reshape(3, 5, 2)
    lens = np.asarray([5, 2, 3], np.int64)
    want = run_ort(proto, [x, lens])[0]
    got = o2t.convert_onnx_to_torch(proto)(torch.from_numpy(x), torch.from_numpy(lens))
    np.testing.assert_array_equal(got.numpy(), want)


def test_missing_converter_names_op_and_version():
    proto = make_model([helper.make_node("Det", ["x"], ["y"])], [vinfo("x", [3, 3])], [vinfo("y")])
    with pytest.raises(ConversionError, match=r"Det \(op version 11\)"):
        o2t.convert_onnx_to_torch(proto)


def test_failing_converter_names_the_node():
    """onnx2torch's Conv converter needs the weight as an initializer, not a graph input."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv_with_input_weight")]
    proto = make_model(nodes, [vinfo("x", [1, 3, 8, 8]), vinfo("w", [4, 3, 3, 3])], [vinfo("y")])
    with pytest.raises(ConversionError, match=r"Conv \(op version 11\) node 'conv_with_input_weight'"):
        o2t.convert_onnx_to_torch(proto)


# ----------------------------------------------------------------------------- recurrent ops vs onnxruntime
T, N, I, H = 5, 3, 4, 6


def _recurrent_case(op, *, direction="forward", bias=True, peephole=False, lens=None, initial=False,
                    **attrs):
    """An ONNX LSTM/GRU/RNN node (layout 0) with seeded weights; returns (model, feeds)."""
    rng = np.random.default_rng(0)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    dirs = 2 if direction == "bidirectional" else 1
    inits = [numpy_helper.from_array((rng.standard_normal((dirs, gates * H, I)) * 0.5).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((dirs, gates * H, H)) * 0.5).astype(np.float32), "R")]
    inputs = [vinfo("X", [T, "N", I])]
    feeds = [rng.standard_normal((T, N, I)).astype(np.float32)]
    names = ["X", "W", "R", ""]
    if bias:
        inits.append(numpy_helper.from_array((rng.standard_normal((dirs, 2 * gates * H)) * 0.3).astype(np.float32),
                                             "B"))
        names[3] = "B"
    names.append("")
    if lens is not None:
        inputs.append(vinfo("lens", ["N"], TensorProto.INT32))
        feeds.append(np.asarray(lens, dtype=np.int32))
        names[4] = "lens"
    state_names = ["initial_h"] + (["initial_c"] if op == "LSTM" else [])
    for name in state_names:
        names.append(name if initial else "")
        if initial:
            inputs.append(vinfo(name, [dirs, "N", H]))
            feeds.append(rng.standard_normal((dirs, N, H)).astype(np.float32))
    if peephole:
        inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 3 * H)).astype(np.float32), "P"))
        names.append("P")
    while names and names[-1] == "":
        names.pop()
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outputs, hidden_size=H, direction=direction, **attrs)
    model = make_model([node], inputs, [vinfo(o) for o in outputs], inits)
    return model, feeds


RECURRENT_CASES = {
    "lstm-forward": ("LSTM", {}),
    "lstm-bidirectional-initial-states": ("LSTM", {"direction": "bidirectional", "initial": True}),
    "lstm-reverse-no-bias": ("LSTM", {"direction": "reverse", "bias": False}),
    "lstm-reverse-sequence-lens": ("LSTM", {"direction": "reverse", "lens": [5, 2, 4], "initial": True}),
    "lstm-bidirectional-sequence-lens": ("LSTM", {"direction": "bidirectional", "lens": [3, 5, 1]}),
    "lstm-peephole-clip-input-forget": ("LSTM", {"peephole": True, "clip": 0.7, "input_forget": 1}),
    "lstm-activations": ("LSTM", {"activations": ["HardSigmoid", "LeakyRelu", "Tanh"],
                                  "activation_alpha": [0.3, 0.05], "activation_beta": [0.4]}),
    "gru-bidirectional-linear-before-reset": ("GRU", {"direction": "bidirectional", "linear_before_reset": 1,
                                                      "initial": True}),
    "gru-linear-before-reset-0": ("GRU", {"linear_before_reset": 0}),
    "gru-reverse-sequence-lens": ("GRU", {"direction": "reverse", "lens": [2, 5, 3]}),
    "rnn-tanh": ("RNN", {"initial": True}),
    "rnn-relu-bidirectional": ("RNN", {"direction": "bidirectional", "activations": ["Relu", "Relu"]}),
}


@pytest.mark.parametrize("case", list(RECURRENT_CASES))
def test_recurrent_ops_match_onnxruntime(case):
    op, kwargs = RECURRENT_CASES[case]
    model, feeds = _recurrent_case(op, **kwargs)
    want = run_ort(model, feeds)
    converted = o2t.convert_onnx_to_torch(model)
    with torch.no_grad():
        got = as_list(converted(*[torch.from_numpy(f) for f in feeds]))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert tuple(g.shape) == w.shape
        assert rel_error(g, w) < 1e-5, case


def test_lstm_layout_1_matches_layout_0():
    """onnxruntime has no batch-first (layout=1) LSTM: compare with the transposed layout-0 graph."""
    model0, feeds = _recurrent_case("LSTM", direction="bidirectional", initial=True)
    model1 = onnx.ModelProto()
    model1.CopyFrom(model0)
    model1.graph.node[0].attribute.append(helper.make_attribute("layout", 1))
    x, h0, c0 = feeds
    want_y, want_h, want_c = run_ort(model0, feeds)
    converted = o2t.convert_onnx_to_torch(model1)
    with torch.no_grad():
        y, h, c = converted(torch.from_numpy(x.transpose(1, 0, 2).copy()),
                            torch.from_numpy(h0.transpose(1, 0, 2).copy()),
                            torch.from_numpy(c0.transpose(1, 0, 2).copy()))
    assert rel_error(y, want_y.transpose(2, 0, 1, 3)) < 1e-5  # [batch, seq, dirs, hidden]
    assert rel_error(h, want_h.transpose(1, 0, 2)) < 1e-5
    assert rel_error(c, want_c.transpose(1, 0, 2)) < 1e-5


def test_seeded_init_gives_order_one_outputs():
    model = seeded_init(torchvision_model("mobilenet_v3_small"))
    with torch.no_grad():
        out = model(seeded_input((2, 3, 64, 64)))
    assert 1e-2 < float(out.abs().max()) < 1e3


def test_tflite_style_node_names_save_a_loadable_pt2(tmp_path):
    """TFLite-derived node names (`a/Conv2D;a/BiasAdd`, commas) broke .pt2 loading."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1],
                              name="seq/conv2d/Conv2D;seq/conv2d/BiasAdd"),
             helper.make_node("Relu", ["c"], ["y"], name="seq/re,lu;1")]
    proto = make_model(nodes, [vinfo("x", ["N", 3, 8, 8])], [vinfo("y")], [w])
    prepared = o2t.prepare_for_onnx2torch(proto)
    assert [n.name for n in prepared.graph.node] == ["seq/conv2d/Conv2D_seq/conv2d/BiasAdd",
                                                     "seq/re_lu_1"]
    x2 = torch.from_numpy(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    x3 = torch.from_numpy(rng.standard_normal((3, 3, 8, 8)).astype(np.float32))
    reference = lambda x: torch.from_numpy(run_ort(proto, [x.numpy()])[0])  # noqa: E731
    _, fmt = check_roundtrip(reference, [x2], [x3], proto, tmp_path)
    assert fmt == "exported"


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("size", [7, 8])
def test_same_auto_pad_becomes_explicit_pads(tmp_path, workdir, mode, size):
    """tf2onnx writes auto_pad SAME_UPPER for Keras "same" padding (Keras MobileNetV3Small)
    and onnx2torch refuses it; with the spatial size unknown in the graph it comes from the
    input spec (the validated size). Odd and even sizes, stride 2, conv and pooling."""
    from neuralbridge_cli.options import Options
    from neuralbridge_cli.pipeline import convert

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad=mode, strides=[2, 2]),
         helper.make_node("MaxPool", ["c"], ["y"], auto_pad=mode, kernel_shape=[2, 2],
                          strides=[2, 2])],
        "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "h", "w"])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(workdir / "same.onnx"))
    result = convert("same.onnx", "torch", "same.pt2",
                     Options(input_specs=[o2t_spec("x", (None, 3, size, size))]))
    assert result.report.passed and result.report.max_rel_error < 1e-5
    assert any("SAME padding made explicit" in n for n in result.notes)


def o2t_spec(name, shape):
    from neuralbridge_cli.specs import TensorSpec

    return TensorSpec(name, shape)


def test_reduceprod_and_max_shape_arithmetic_keep_an_exportable_batch(tmp_path):
    """tf2onnx's einsum lowering (Keras MultiHeadAttention) folds batch axes with
    ReduceProd(Gather(Shape(x))) and broadcasts them with Max(...): onnx2torch's Reshape reads
    those as tensor data, torch.export failed on it and the model fell back to TorchScript."""
    i64 = lambda name, values: numpy_helper.from_array(np.asarray(values, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["sx"]),
        helper.make_node("Shape", ["y"], ["sy"]),
        helper.make_node("Gather", ["sx", "batch_axes"], ["bx"]),
        helper.make_node("Gather", ["sy", "batch_axes"], ["by"]),
        helper.make_node("ReduceProd", ["bx"], ["px"], keepdims=1),
        helper.make_node("Concat", ["px", "rest"], ["fold"], axis=0),
        helper.make_node("Reshape", ["x", "fold"], ["xf"]),
        helper.make_node("Max", ["bx", "by"], ["b"]),
        helper.make_node("Concat", ["b", "tail"], ["unfold"], axis=0),
        helper.make_node("Reshape", ["xf", "unfold"], ["xu"]),
        helper.make_node("Add", ["xu", "y"], ["out"]),
    ]
    proto = make_model(nodes, [vinfo("x", ["N", 4, 6, 5]), vinfo("y", ["N", 4, 6, 5])],
                       [vinfo("out")],
                       [i64("batch_axes", [0, 1]), i64("rest", [6, 5]), i64("tail", [6, 5])])
    values = o2t._shape_values(proto, o2t._value_types(proto, True))
    assert len(values["px"][1]) == 1 and values["px"][0] == 1
    rng = np.random.default_rng(0)
    batch = lambda n: [torch.from_numpy(rng.standard_normal((n, 4, 6, 5)).astype(np.float32))  # noqa: E731
                       for _ in range(2)]
    reference = lambda x, y: torch.from_numpy(run_ort(proto, [x.numpy(), y.numpy()])[0])  # noqa: E731
    _, fmt = check_roundtrip(reference, batch(2), batch(3), proto, tmp_path)
    assert fmt == "exported"


@pytest.mark.parametrize("layer", ["GRU", "SimpleRNN"])
def test_keras_recurrent_loop_from_tf2onnx_is_unrolled(layer, tmp_path):
    """Keras 3 GRU / SimpleRNN come out of tf2onnx as an ONNX Loop (its rewriters only know
    the Keras 2 patterns) and onnx2torch has no Loop: with a static sequence length the loop
    is unrolled, and the saved program keeps a dynamic batch."""
    from neuralbridge_cli import lazy

    tf = lazy.tensorflow()
    keras = lazy.require("keras")
    tf2onnx = lazy.require("tf2onnx")
    keras.utils.set_random_seed(0)
    x = keras.Input((7, 6), name="x")
    seq = getattr(keras.layers, layer)(5, return_sequences=True)(x)
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.Flatten()(seq)))
    spec = [tf.TensorSpec((None, 7, 6), tf.float32, name="x")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    assert any(n.op_type == "Loop" for n in proto.graph.node)
    prepared = o2t.prepare_for_onnx2torch(proto)
    assert not any(n.op_type == "Loop" for n in prepared.graph.node)
    assert "loop-unroll x1" in prepared.metadata_props[-1].value
    rng = np.random.default_rng(0)
    batch = lambda n: [torch.from_numpy(rng.standard_normal((n, 7, 6)).astype(np.float32))]  # noqa: E731
    reference = lambda x: torch.from_numpy(np.array(model(x.numpy())))  # noqa: E731
    _, fmt = check_roundtrip(reference, batch(2), batch(3), proto, tmp_path)
    assert fmt == "exported"


def test_loop_with_a_data_dependent_condition_is_left_alone():
    """A Loop that stops on a value computed from the data cannot be unrolled: the graph keeps
    it and the conversion error names the op."""
    one = numpy_helper.from_array(np.asarray(1.0, np.float32), "one")
    limit = numpy_helper.from_array(np.asarray(10.0, np.float32), "limit")
    trips = numpy_helper.from_array(np.asarray(5, np.int64), "trips")
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "one"], ["v_out"]),
         helper.make_node("ReduceSum", ["v_out"], ["total"], keepdims=0),
         helper.make_node("Less", ["total", "limit"], ["cond_out"])],
        "body", [vinfo("i", [], TensorProto.INT64), vinfo("cond_in", [], TensorProto.BOOL),
                 vinfo("v_in", ["N"])],
        [vinfo("cond_out", [], TensorProto.BOOL), vinfo("v_out", ["N"])])
    nodes = [helper.make_node("Constant", [], ["go"], value=numpy_helper.from_array(np.asarray(True))),
             helper.make_node("Loop", ["trips", "go", "x"], ["y"], body=body)]
    proto = make_model(nodes, [vinfo("x", ["N"])], [vinfo("y", ["N"])], [one, limit, trips])
    prepared = o2t.prepare_for_onnx2torch(proto)
    assert [n.op_type for n in prepared.graph.node] == ["Loop"]
    with pytest.raises(ConversionError, match="Loop"):
        o2t.convert_onnx_to_torch(proto)


def _accumulating_loop(name, source, result, trips, cond_node=None, extra_nodes=()):
    """Loop `name`: h <- h + x, `trips` times (`cond_node` computes cond_out from cond_in)."""
    body_nodes = [*extra_nodes, helper.make_node("Add", ["h", "x"], ["h2"])]
    cond_out = "c_in"
    if cond_node is not None:
        body_nodes.append(cond_node)
        cond_out = cond_node.output[0]
    body = helper.make_graph(
        body_nodes, "body", [vinfo("i", [], TensorProto.INT64), vinfo("c_in", [], TensorProto.BOOL),
                             vinfo("h", ["N", 4])],
        [vinfo(cond_out, [], TensorProto.BOOL), vinfo("h2", ["N", 4])])
    return helper.make_node("Loop", [trips, "go", source], [result], body=body, name=name)


def _loop_graph(loops, trips=3):
    inits = [numpy_helper.from_array(np.asarray(trips, np.int64), "trips"),
             numpy_helper.from_array(np.asarray(True), "go")]
    return make_model(loops, [vinfo("x", ["N", 4]), vinfo("h0", ["N", 4])], [vinfo(loops[-1].output[0], ["N", 4])],
                      inits)


@pytest.mark.parametrize("case", ["identity-cond", "same-tag-names", "unnamed-twins"])
def test_unrolled_loops_match_onnxruntime_in_corner_cases(case):
    """Found by an adversarial helper: a condition passed through Identity was not recognised
    as constant; loops named `a/b` and `a_b` (or unnamed body nodes of one op) gave clashing
    names in the unrolled graph."""
    if case == "identity-cond":
        loops = [_accumulating_loop("loop", "h0", "hf", "trips",
                                    cond_node=helper.make_node("Identity", ["c_in"], ["c_out"]))]
    elif case == "same-tag-names":
        loops = [_accumulating_loop("a/b", "h0", "h1", "trips"), _accumulating_loop("a_b", "h1", "hf", "trips")]
    else:
        twins = [helper.make_node("Add", ["x", "x"], ["t"]), helper.make_node("Add", ["t", "x"], ["u"])]
        loops = [_accumulating_loop("", "h0", "hf", "trips", extra_nodes=twins)]
    proto = _loop_graph(loops)
    prepared = o2t.prepare_for_onnx2torch(proto)
    assert not any(n.op_type == "Loop" for n in prepared.graph.node)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    h0 = np.zeros((2, 4), np.float32)
    want = run_ort(proto, [x, h0])[0]
    assert np.allclose(run_ort(prepared, [x, h0])[0], want, atol=1e-6)  # a valid graph
    got = o2t.convert_onnx_to_torch(proto)(torch.from_numpy(x), torch.from_numpy(h0))
    assert np.allclose(got.numpy(), want, atol=1e-6)


def test_unrolling_counts_steps_of_an_empty_body():
    """A pass-through body has no nodes, yet every step adds a constant and a scan Unsqueeze:
    a huge trip count must not unroll (200,000 steps used to take a GB)."""
    body = helper.make_graph([], "body", [vinfo("i", [], TensorProto.INT64), vinfo("c_in", [], TensorProto.BOOL),
                                          vinfo("h", ["N", 4])],
                             [vinfo("c_in", [], TensorProto.BOOL), vinfo("h", ["N", 4]), vinfo("i", [], TensorProto.INT64)])
    loop = helper.make_node("Loop", ["trips", "go", "h0"], ["hf", "steps"], body=body)
    proto = make_model([loop], [vinfo("h0", ["N", 4])], [vinfo("steps", [200_000], TensorProto.INT64)],
                       [numpy_helper.from_array(np.asarray(200_000, np.int64), "trips"),
                        numpy_helper.from_array(np.asarray(True), "go")])
    assert o2t._unroll_static_loops(proto) == 0


def test_interpolate_to_computed_sizes_exports_with_a_dynamic_batch(tmp_path):
    """`F.interpolate(size=...)` exports as Resize(x, sizes=Concat(Shape(x)[:2], [h, w]));
    onnx2torch reads those sizes as tensor data and torch.export failed on it (lraspp, an
    FPN backbone: TorchScript fallback). Bilinear and nearest, to another map's size."""
    model = upsampling_head()
    x2, x3 = seeded_input((2, 3, 30, 30)), seeded_input((3, 3, 30, 30), seed=1)
    proto = export_onnx(model, [x2], tmp_path / "head.onnx", dynamo=True)
    assert sum(1 for n in proto.graph.node if n.op_type == "Resize") == 2
    _, fmt = check_roundtrip(model, [x2], [x3], proto, tmp_path)
    assert fmt == "exported"
