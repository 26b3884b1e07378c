"""ONNX backend: load, describe and run ONNX models. Imports neither torch nor TensorFlow."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from .. import lazy
from ..errors import first_line, LoadError, SourceNotFoundError
from ..model import ModelHandle
from ..specs import TensorSpec

# ONNX TensorProto element type -> numpy dtype name
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64",
               8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32",
               13: "uint64", 16: "bfloat16"}


def load(source: str, fmt=None, options=None) -> ModelHandle:
    onnx = lazy.onnx()
    path = Path(source)
    if not path.is_file():
        raise SourceNotFoundError(f"no such file: {source}")
    try:
        proto = onnx.load(str(path), load_external_data=True)
    except Exception as exc:
        raise LoadError(f"{source} is not a readable ONNX model: {first_line(exc)}",
                        hint="re-export it; a truncated or corrupt file cannot be read") from exc
    if not proto.graph.node and not proto.graph.output:
        raise LoadError(f"{source} holds no ONNX graph", hint="re-export the model")
    return wrap(proto, name=path.stem, source=str(path), fmt="onnx")


def wrap(obj, name: str | None = None, source: str | None = None, fmt: str = "live"):
    if type(obj).__name__ != "ModelProto":
        return None
    return ModelHandle("onnx", obj, fmt, name or obj.graph.name or "model",
                       inputs=graph_inputs(obj), outputs=graph_outputs(obj), source=source)


def _value_spec(value) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dims = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return TensorSpec(value.name, tuple(dims), ONNX_DTYPES.get(tensor_type.elem_type, "float32"))


def graph_inputs(proto) -> list[TensorSpec]:
    initializers = {init.name for init in proto.graph.initializer}
    return [_value_spec(v) for v in proto.graph.input if v.name not in initializers]


def graph_outputs(proto) -> list[TensorSpec]:
    return [_value_spec(v) for v in proto.graph.output]


def input_specs(handle: ModelHandle) -> list[TensorSpec]:
    return graph_inputs(handle.obj)


def session(proto):
    """An onnxruntime CPU session for `proto`, cached on the proto object."""
    cached = getattr(proto, "_nb_session", None)
    if cached is not None:
        return cached
    ort = lazy.require("onnxruntime", "run ONNX models")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    threads = int(os.environ.get("NEURALBRIDGE_THREADS") or 0)
    if threads:  # batch workers share the cores: no more threads than their share, no spinning
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    data = proto.SerializeToString() if proto.ByteSize() < 2**31 - 1 else None
    if data is None:
        raise LoadError("model over 2 GB: run it from its file path")
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def run(handle: ModelHandle, arrays: list) -> list:
    sess = session(handle.obj)
    names = [i.name for i in sess.get_inputs()]
    outputs = sess.run(None, dict(zip(names, arrays)))
    return list(outputs)


def to_onnx(handle: ModelHandle, specs=None, options=None):
    yield "as-is", handle.obj


def from_onnx(proto, specs=None, options=None, target: str = "onnx") -> ModelHandle:
    return wrap(proto, fmt="onnx")


def save(handle: ModelHandle, path: str, target: str = "onnx", options=None) -> str:
    onnx = lazy.onnx()
    proto = handle.obj
    if proto.ByteSize() > 2**31 - 1 - 2**20:  # protobuf limit: weights go to a side file
        onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(path).name + ".data")
    else:
        onnx.save_model(proto, path)
    return "onnx"


def op_histogram(proto) -> dict[str, int]:
    counts = Counter(node.op_type for node in proto.graph.node)
    return dict(counts.most_common())


def parameter_count(proto) -> int:
    total = 0
    for init in proto.graph.initializer:
        size = 1
        for d in init.dims:
            size *= d
        total += size
    return total


def describe(handle: ModelHandle) -> dict:
    proto = handle.obj
    opsets = {imp.domain or "ai.onnx": imp.version for imp in proto.opset_import}
    return {
        "class": "onnx.ModelProto",
        "opset": opsets.get("ai.onnx"),
        "opsets": opsets,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "ir_version": proto.ir_version,
        "parameters": parameter_count(proto),
        "nodes": len(proto.graph.node),
        "ops": op_histogram(proto),
    }


def check(proto) -> None:
    """Run onnx.checker; raise LoadError with its first line on failure."""
    onnx = lazy.onnx()
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise LoadError(f"the ONNX model fails onnx.checker: {first_line(exc)}") from exc

