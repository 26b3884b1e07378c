"""Small real models for the trust commands' tests (torch -> ONNX exports, hand-built graphs)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from neuralbridge_cli.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def invoke_json(*args):
    result = invoke(*args, "--json")
    return result, json.loads(result.stdout)


def error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def export_cnn(path, static: bool = False):
    """models.small_cnn exported to ONNX (batch 1 and fixed when static)."""
    import models
    from neuralbridge_cli.api import export_onnx

    shape = (1, 3, 32, 32) if static else (2, 3, 32, 32)
    return export_onnx(models.small_cnn(), str(path), input_shape=shape, static=static)


def scale_first_conv(proto, path, factor: float = 1.01):
    """A copy of `proto` with its first Conv weight scaled (a deliberately perturbed model)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    init = next(i for i in proto.graph.initializer if i.name == conv.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
    onnx.save(proto, str(path))
    return path


def nhwc_copy(proto, path):
    """The same model taking channels-last input: a Transpose in front of the NCHW graph."""
    import onnx
    from onnx import helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph_input = proto.graph.input[0]
    old = graph_input.name
    dims = graph_input.type.tensor_type.shape.dim
    n, c, h, w = [d.dim_value or d.dim_param for d in dims]
    for node in proto.graph.node:
        node.input[:] = [f"{old}_nchw" if name == old else name for name in node.input]
    proto.graph.node.insert(0, helper.make_node("Transpose", [old], [f"{old}_nchw"],
                                                perm=[0, 3, 1, 2]))
    del proto.graph.input[0]
    proto.graph.input.insert(0, helper.make_tensor_value_info(
        old, onnx.TensorProto.FLOAT, [n or "N", h, w, c]))
    onnx.save(proto, str(path))
    return path


def token_model(path, seq: int = 16, vocab: int = 50):
    """A static text model: ids int64 [1, seq] -> embedding -> mean -> logits [1, 4]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((vocab, 8)).astype(np.float32), "table")
    head = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "head")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("ReduceMean", ["emb", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "head"], ["logits"])]
    graph = helper.make_graph(nodes, "tokens",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, seq])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
                              [table, head, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path
