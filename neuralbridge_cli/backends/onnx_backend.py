"""ONNX backend: load, describe and run ONNX models. Imports neither torch nor TensorFlow."""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from .. import lazy
from ..errors import ConversionError, InputSpecError, LoadError, SourceNotFoundError, first_line
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
        text = first_line(exc)
        hint = "re-export it; a truncated or corrupt file cannot be read"
        if "should be stored in" in text or "external" in text.lower():
            hint = "keep its external data file (weights) next to it, as it was exported"
        raise LoadError(f"{source} is not a readable ONNX model: {text}", hint=hint) from exc
    if not proto.graph.node and not proto.graph.output:
        raise LoadError(f"{source} holds no ONNX graph", hint="re-export the model")
    check(proto, str(path))
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


def fix_input_shapes(proto, specs: list[TensorSpec]) -> int:
    """--static: give the graph inputs the concrete shapes of `specs` (matched by position)
    where the graph leaves a dim symbolic; the converters then build fixed-shape models.
    Returns how many dims were fixed."""
    initializers = {init.name for init in proto.graph.initializer}
    values = [v for v in proto.graph.input if v.name not in initializers]
    fixed = 0
    for value, spec in zip(values, specs):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            continue
        for dim, size in zip(dims, spec.shape):
            if isinstance(size, int) and not dim.HasField("dim_value"):
                dim.dim_value = size  # clears dim_param (a oneof)
                fixed += 1
    return fixed


PROTOBUF_LIMIT = 2**31 - 1  # a serialized ModelProto cannot be larger


def byte_size(proto) -> int:
    """Serialized size; protobuf raises instead of counting past 2 GB, so then estimate it
    from the initializer shapes (always over the limit)."""
    try:
        return proto.ByteSize()
    except Exception:
        import numpy as np

        total = 0
        for tensor in proto.graph.initializer:
            name = ONNX_DTYPES.get(tensor.data_type, "float32")
            itemsize = 2 if name == "bfloat16" else 8 if name == "string" else np.dtype(name).itemsize
            total += int(np.prod(tensor.dims, dtype=np.float64)) * itemsize
        return max(total, PROTOBUF_LIMIT + 1)


# id(proto) -> (proto, session): protobuf messages take no attributes, so the cache lives
# here; the proto is kept alive with its session so that its id cannot be reused.
_SESSIONS: dict[int, tuple] = {}
_MAX_SESSIONS = 4


def session(proto, path: str | None = None):
    """An onnxruntime CPU session for `proto` (from `path` when the proto is over 2 GB).

    Cached per proto object: the pipeline runs a source ONNX model several times (reference
    outputs, builder checks), and a session costs ~0.3 s to build."""
    cached = _SESSIONS.get(id(proto))
    if cached is not None and cached[0] is proto:
        return cached[1]
    sess = _new_session(proto, path)
    if len(_SESSIONS) >= _MAX_SESSIONS:
        _SESSIONS.pop(next(iter(_SESSIONS)))
    _SESSIONS[id(proto)] = (proto, sess)
    return sess


def _new_session(proto, path: str | None):
    ort = lazy.require("onnxruntime", "run ONNX models")
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: a failing run raises, with the same message
    threads = int(os.environ.get("NEURALBRIDGE_THREADS") or 0)
    if threads:  # batch workers share the cores: no more threads than their share, no spinning
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if byte_size(proto) < PROTOBUF_LIMIT:
        model = proto.SerializeToString()
    elif path and Path(path).is_file():
        model = str(path)  # external data is read next to the file
    else:  # over the protobuf limit and only in memory: run it from a temporary copy
        import tempfile

        with tempfile.TemporaryDirectory(prefix="nb-large-") as folder:
            model = str(Path(folder) / "model.onnx")
            save_external(proto, model)
            return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run(handle: ModelHandle, arrays: list) -> list:
    for spec in graph_inputs(handle.obj):
        if spec.dtype == "string":
            raise InputSpecError(f"{handle.name}: input {spec.name} is a string tensor",
                                 hint="only models with numeric inputs can be converted; keep "
                                      "the text handling outside the model")
    try:
        sess = session(handle.obj, handle.source)
        names = [i.name for i in sess.get_inputs()]
        return list(sess.run(None, dict(zip(names, arrays))))
    except (LoadError, InputSpecError):
        raise
    except Exception as exc:
        op = _unsupported_op(str(exc))
        if op:
            raise ConversionError(f"{handle.name} uses the op {op}, which onnxruntime and the "
                                  "converters do not support",
                                  hint="replace that op, or export with a standard opset") from exc
        raise


_OP_PATTERNS = (re.compile(r"([\w.]+:\w+)\(-?\d+\) is not a registered function/op"),
                re.compile(r"No Op registered for (\w+) with domain_version of \d+"),
                re.compile(r"Could not find an implementation for (\w+\(\d+\))"),
                re.compile(r"Unrecognized attribute.*for operator (\w+)"))


def _unsupported_op(text: str) -> str | None:
    for pattern in _OP_PATTERNS:
        found = pattern.search(text)
        if found:
            return found.group(1)
    return None


def to_onnx(handle: ModelHandle, specs=None, options=None):
    yield "as-is", handle.obj


def from_onnx(proto, specs=None, options=None, target: str = "onnx") -> ModelHandle:
    return wrap(proto, fmt="onnx")



def saves_directly(handle: ModelHandle, target: str) -> bool:
    """Every model of this framework can be saved in each of its formats."""
    return True

def save(handle: ModelHandle, path: str, target: str = "onnx", options=None) -> str:
    onnx = lazy.onnx()
    proto = handle.obj
    if byte_size(proto) > PROTOBUF_LIMIT - 2**20:  # protobuf limit: weights go to a side file
        save_external(proto, path)
    else:
        onnx.save_model(proto, path)
    return "onnx"


def save_external(proto, path: str) -> None:
    """Save with all weights in `<path>.data`, referenced by the name the file will have.

    `path` is atomic_output's temporary name: the data file is written next to it as a side
    file (moved along on success), but the model must point at the final `<name>.data`.
    """
    from ..atomic import final_name

    onnx = lazy.onnx()
    header = onnx.ModelProto()
    header.CopyFrom(proto)  # saving with external data strips the weights from the proto
    onnx.save_model(header, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=Path(path).name + ".data", size_threshold=1024)
    final = final_name(path) + ".data"
    for tensor in _all_tensors(header.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = final
    Path(path).write_bytes(header.SerializeToString())


def _all_tensors(graph):
    """Initializers and tensor attributes of a graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _all_tensors(sub)


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
        # tf2onnx writes the version string "None" when it has none
        "producer": " ".join(v for v in (proto.producer_name, proto.producer_version)
                             if v and v != "None"),
        "ir_version": proto.ir_version,
        "parameters": parameter_count(proto),
        "nodes": len(proto.graph.node),
        "ops": op_histogram(proto),
    }


def check(proto, path: str | None = None) -> None:
    """Run onnx.checker (from the file when the model is over 2 GB); LoadError on failure."""
    onnx = lazy.onnx()
    try:
        if byte_size(proto) < PROTOBUF_LIMIT:
            onnx.checker.check_model(proto)
        elif path:
            onnx.checker.check_model(path)
    except Exception as exc:
        where = path or "the ONNX model"
        raise LoadError(f"{where} fails onnx.checker: {first_line(exc)}",
                        hint="re-export the model; the graph is not valid ONNX") from exc

