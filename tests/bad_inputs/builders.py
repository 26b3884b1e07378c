"""Small model files built from code (seeded), valid and broken, for the bad-input tests."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np


def random_bytes(path: Path, size: int = 4096, seed: int = 0) -> Path:
    """Bytes that are no model at all (seeded)."""
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def onnx_mlp(path: Path | None = None, features: int = 4, classes: int = 3):
    """x[N,4] -> MatMul -> Add -> Relu -> y[N,3]: the smallest useful ONNX model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(features, classes)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(classes,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if path is not None:
        onnx.save(model, str(path))
    return model


def onnx_conv(path: Path, size: int = 16, batch: int = 1) -> Path:
    """An image model: x[1,3,16,16] -> Conv(3->4) -> Relu -> GlobalAveragePool -> Flatten."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]),
         helper.make_node("Flatten", ["g"], ["y"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def onnx_custom_op(path: Path) -> Path:
    """A graph with an op from a domain no runtime or converter knows."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def onnx_failing_checker(path: Path) -> Path:
    """A node reads a tensor nothing produces: onnx.checker rejects the graph."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "ghost"], ["y"])], "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def onnx_string_io(path: Path, output_only: bool = False) -> Path:
    """String tensors: the input (or only the output) of the graph is a string tensor."""
    import onnx
    from onnx import TensorProto, helper

    if output_only:  # float in, string out (Cast to string)
        nodes = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    else:
        nodes = [helper.make_node("Identity", ["x"], ["y"])]
        inputs = [helper.make_tensor_value_info("x", TensorProto.STRING, [1, 4])]
    graph = helper.make_graph(nodes, "strings", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.STRING, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def onnx_missing_external_data(path: Path) -> Path:
    """A model whose weights live in a side file that is not there."""
    import onnx

    model = onnx_mlp()
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)
    os.remove(str(path) + ".data")
    return path


def onnx_empty_graph(path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(helper.make_graph([], "empty", [], []),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def truncate(source: Path, path: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def keras_dense(path: Path) -> Path:
    """A tiny seeded Keras model (x[4] -> Dense(3))."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3, name="dense")])
    model.save(str(path))
    return path


def keras_lambda(path: Path) -> Path:
    """A Keras model with a Lambda layer (Python code stored in the file)."""
    import keras

    inputs = keras.Input((4,), name="x")
    outputs = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    keras.Model(inputs, outputs).save(str(path))
    return path


def tflite_dense(path: Path) -> Path:
    """A tiny .tflite converted from a seeded tf.function."""
    import tensorflow as tf

    weight = tf.constant(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    def serve(x):
        return tf.nn.relu(tf.matmul(x, weight))

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], None)
    path.write_bytes(converter.convert())
    return path


def torch_state_dict(path: Path, in_features: int = 4, out_features: int = 3) -> Path:
    import torch

    torch.manual_seed(0)
    torch.save(torch.nn.Linear(in_features, out_features).state_dict(), path)
    return path


def pickle_payload(path: Path, marker: Path) -> Path:
    """A .pt file whose unpickling would create `marker` (it must never run)."""
    import torch

    torch.save({"weight": Payload(str(marker))}, path)
    return path


class Payload:
    """Unpickling this calls os.system-free `open(marker, 'w')` through builtins.exec."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def zip_with(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


MODELS_PY = '''
import torch


class KeywordOnly(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x, *, scale):
        return self.fc(x) * scale


class DictOfStrings(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return {"label": "cat", "score": 1}


class StringOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return "cat"


def not_a_module():
    return 42


def broken_factory():
    raise ValueError("this factory is broken")
'''

BROKEN_MODULE_PY = "raise RuntimeError('import-time failure')\n"
