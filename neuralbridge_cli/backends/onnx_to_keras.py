"""ONNX -> Keras 3 functional model made only of built-in layers and `keras.ops` calls.

Public interface::

    convert_onnx_to_keras(model_proto, *, layout="keep", progress=None, input_shapes=None)
        -> keras.Model (Keras 3)
    save_keras(model, path)   Keras v3 `.keras` archive
    save_h5(model, path)      legacy HDF5 `.h5` file

Both files load with the plain installed Keras 3, `keras.saving.load_model(path)`, with the
default `safe_mode=True` and no `custom_objects`: the model holds no Lambda layer, no custom
class and nothing of this package.

Why not onnx2tf
---------------
onnx2tf builds a tf_keras (Keras 2) model full of `TFOpLambda` layers; Keras 3 has no such class,
so neither its `.keras` (tf_keras "keras_v3") nor its `.h5` output loads in Keras 3. This module
walks the ONNX graph itself and emits Keras 3 objects: weighted ops become layers (Conv*,
DepthwiseConv*, Dense, BatchNormalization, LayerNormalization, GroupNormalization, Embedding,
LSTM/GRU/SimpleRNN) and the rest become `keras.ops` calls on KerasTensors, which Keras 3
serialises as `keras.src.ops.*` operations that its loader accepts in safe mode. Small constants
(biases that are not a layer's, scales, class tokens, position embeddings) are stored inline in
the model config as numpy arrays; all large weights live in layers.

How it works
------------
1. Every tensor is classified as *data* (depends on the values of a graph input) or *constant*
   (depends only on initializers, Constant nodes and input *shapes*). One pass in graph order,
   done at two batch sizes (2 and 3), folds every constant node (numpy, or the ONNX reference
   evaluator) and gives every data tensor its shape (ONNX shape inference of each node alone,
   so shapes computed through Shape->Gather->Concat->Reshape chains are always known). A
   constant that differs between the two batch sizes is batch-dependent: a Reshape target
   holding the batch becomes `-1` at that entry, so the Keras model keeps a dynamic batch, and
   batch-broadcast constants (zero LSTM states, expanded class tokens) are rebuilt from the
   batch size of an input. No onnxruntime is needed.
2. Each data node is converted in graph order (and its Keras shape checked against the
   inferred ONNX shape). A converted tensor carries a permutation: the
   Keras tensor is the ONNX tensor transposed by `perm`. Convolutions and pooling run
   channels-last (TensorFlow's CPU kernels are NHWC-only), ONNX Transpose nodes only change the
   permutation, and layout-agnostic ops (elementwise, normalisation, reductions, slicing) work in
   whatever layout their input has, so a ResNet has one transpose at the input and none inside.

Layouts
-------
``layout="keep"``: the Keras model takes and returns exactly the ONNX arrays (NCHW stays NCHW).
``layout="nhwc"``: float inputs of rank 3-5 that feed a convolution-like op (images, NCW audio,
volumes) are taken channels-last (NWC/NHWC/NDHWC); other inputs and all outputs keep the ONNX
layout.

Names
-----
Keras inputs are named after the ONNX inputs and each output is an `Identity` layer named after
the ONNX output (characters other than letters, digits and `_` become `_`), so
`model.input_names`/`model.output_names` follow the ONNX graph, in the same order.

Batch
-----
A symbolic first dimension is the batch and stays dynamic (`None`). Other symbolic dimensions
must be fixed with `input_shapes={"name": (None, 128)}`, else ConversionError. A fixed batch is
kept fixed.

Unsupported ops raise `ConversionError` naming the op and node (`SUPPORTED_OPS` lists the rest).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .. import lazy
from ..errors import ConversionError

__all__ = ["convert_onnx_to_keras", "save_keras", "save_h5", "SUPPORTED_OPS"]

_B1, _B2 = 2, 3  # the two batch sizes the constants and shapes are evaluated at
_INLINE_LIMIT = 1 << 20  # elements: larger non-layer constants are refused (config JSON size)
_NEG_BIG = -3.4028234663852886e38  # float32 lowest, the pad value of max pooling
# weights are set right after each layer is built: skip the random initialisers
_ZERO_INIT = {"kernel_initializer": "zeros", "bias_initializer": "zeros"}
_CL = "channels_last"  # explicit, so a user's keras.json image_data_format cannot change it

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
                7: "int64", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
                16: "bfloat16"}

# ops whose first input is channels-first image-like (used to decide layout="nhwc" inputs)
_SPATIAL_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool",
                "GlobalMaxPool", "BatchNormalization", "InstanceNormalization", "LpPool",
                "Resize", "Upsample", "DepthToSpace", "SpaceToDepth", "GroupNormalization"}
# ops an image typically passes through before its first spatial op
_PASS_THROUGH = {"Cast", "Identity", "Sub", "Div", "Mul", "Add", "Clip", "Relu", "Pad"}


# ----------------------------------------------------------------------------- values
class _Const:
    """A tensor that does not depend on input values; `v1`/`v2` are its values at batch 2 / 3."""

    __slots__ = ("v1", "v2")

    def __init__(self, v1, v2=None):
        self.v1 = np.asarray(v1)
        self.v2 = self.v1 if v2 is None else np.asarray(v2)

    @property
    def batch_dep(self) -> bool:
        if self.v1 is self.v2:
            return False
        if self.v1.shape != self.v2.shape:
            return True
        return not np.array_equal(self.v1, self.v2)

    @property
    def rank(self) -> int:
        return self.v1.ndim


class _Data:
    """A converted tensor: `t` (a KerasTensor) is the ONNX tensor transposed by `perm`.

    `s1`/`s2` are the ONNX-layout shapes at batch 2 / 3 (None where shape inference gave none).
    """

    __slots__ = ("t", "perm", "s1", "s2", "views")

    def __init__(self, t, perm, s1=None, s2=None):
        self.t = t
        self.perm = tuple(perm)
        self.s1, self.s2 = s1, s2
        self.views = {self.perm: t}

    @property
    def rank(self) -> int:
        return len(self.perm)


def _ident(rank: int) -> tuple:
    return tuple(range(rank))


def _cl(rank: int) -> tuple:
    """Channels-last permutation of a channels-first tensor."""
    return (0,) + tuple(range(2, rank)) + (1,)


def _squeeze_perm(perm, removed) -> tuple:
    removed = set(removed)
    return tuple(p - sum(1 for r in removed if r < p) for p in perm if p not in removed)


def _sanitize(name: str, fallback: str = "t") -> str:
    out = re.sub(r"[^A-Za-z0-9_]", "_", name or "").strip("_")
    if not out:
        out = fallback
    if out[0].isdigit():
        out = f"{fallback}_{out}"
    return out


def _dims(value_info):
    """Static dims of a ValueInfoProto, or None when the shape is missing or symbolic."""
    tt = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return tuple(int(d) for d in dims) if all(d is not None for d in dims) else None


def _say(progress, message):
    if progress is not None:
        progress(message)


# ----------------------------------------------------------------------------- converter
class _Converter:
    def __init__(self, proto, layout, progress, input_shapes):
        if layout not in ("keep", "nhwc"):
            raise ConversionError(f"unknown layout {layout!r}: use 'keep' or 'nhwc'")
        self.onnx = lazy.onnx()
        self.progress = progress
        self.layout = layout
        self.input_shapes = dict(input_shapes or {})
        proto = self._prepare(proto)
        self.proto = proto
        self.graph = proto.graph
        self.opset = 1
        for imp in proto.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = imp.version
        self.keras = lazy.require("keras", "build Keras models")
        self.ops = self.keras.ops
        self.layers = self.keras.layers
        self.values: dict[str, object] = {}
        self.names: set[str] = set()
        self._batch_ref = None
        self._batch_source = None
        self._done: set[int] = set()

    # --------------------------------------------------------------- preparation
    def _prepare(self, proto):
        onnx = self.onnx
        model = onnx.ModelProto()
        model.CopyFrom(proto)
        if len(model.functions):
            try:
                from onnx import inliner

                model = inliner.inline_local_functions(model)
            except Exception as exc:  # pragma: no cover - depends on onnx version
                raise ConversionError(f"cannot inline the model's local functions: {exc}") from exc
        return model

    def _input_infos(self):
        """(name, dtype, shape at B1, shape at B2, dynamic batch) for every real graph input."""
        inits = {i.name for i in self.graph.initializer}
        infos = []
        for value in self.graph.input:
            if value.name in inits:
                continue
            ttype = value.type.tensor_type
            if not value.type.HasField("tensor_type"):
                raise ConversionError(f"input '{value.name}' is not a tensor; only tensor inputs "
                                      "are supported")
            dtype = _ONNX_DTYPES.get(ttype.elem_type)
            if dtype is None:
                raise ConversionError(f"input '{value.name}' has an unsupported element type "
                                      f"{ttype.elem_type}")
            dims = []
            for d in ttype.shape.dim:
                dims.append(int(d.dim_value) if d.HasField("dim_value") else None)
            given = self.input_shapes.get(value.name)
            if given is not None:
                if len(given) != len(dims):
                    raise ConversionError(f"input_shapes['{value.name}'] has rank {len(given)}, "
                                          f"the model's input has rank {len(dims)}")
                # a None/-1 batch in input_shapes makes a fixed batch dynamic
                dims = [int(g) if (g is not None and g > 0) else (None if k == 0 else d)
                        for k, (g, d) in enumerate(zip(given, dims))]
            if not dims:
                raise ConversionError(f"input '{value.name}' is a scalar; Keras inputs need a "
                                      "batch dimension")
            dynamic = dims[0] is None
            for axis, d in enumerate(dims[1:], 1):
                if d is None:
                    raise ConversionError(
                        f"input '{value.name}' has a dynamic dimension at axis {axis}; only the "
                        "batch (axis 0) may be dynamic",
                        hint="fix it with input_shapes / --input-shape")
            s1 = tuple([_B1 if dynamic else dims[0]] + dims[1:])
            s2 = tuple([_B2 if dynamic else dims[0]] + dims[1:])
            infos.append((value.name, dtype, s1, s2, dynamic))
        return infos

    def _classify(self, input_names):
        data = set(input_names)
        for node in self.nodes:
            if node.op_type in ("Shape", "Size"):
                continue
            if node.op_type in ("If", "Loop", "Scan") and data:
                data.update(o for o in node.output if o)
                continue
            if any(i in data for i in node.input if i):
                data.update(o for o in node.output if o)
        return data

    def _topo_nodes(self):
        nodes = list(self.graph.node)
        produced = {o: k for k, n in enumerate(nodes) for o in n.output if o}
        indeg = [0] * len(nodes)
        users = [[] for _ in nodes]
        for k, n in enumerate(nodes):
            deps = {produced[i] for i in n.input if i in produced}
            indeg[k] = len(deps)
            for d in deps:
                users[d].append(k)
        ready = [k for k in range(len(nodes)) if indeg[k] == 0]
        order = []
        while ready:
            k = ready.pop(0)
            order.append(nodes[k])
            for u in users[k]:
                indeg[u] -= 1
                if indeg[u] == 0:
                    ready.append(u)
        if len(order) != len(nodes):
            raise ConversionError("the ONNX graph has a cycle or a dangling node input")
        return order

    # --------------------------------------------------------------- analysis
    def _analyse(self, infos, data):
        """One pass in graph order, at batch B1 and B2: evaluate every constant node (numpy or
        the ONNX reference evaluator) and infer every data tensor's shape (ONNX shape inference
        of that single node). Returns (constants, shapes)."""
        onnx = self.onnx
        numpy_helper = onnx.numpy_helper
        inits = {i.name: i for i in self.graph.initializer}
        consts: dict[str, _Const | None] = {}
        shapes: dict[str, tuple] = {}
        self.elem_types: dict[str, int] = {}
        for name, dtype, s1, s2, _ in infos:
            shapes[name] = (s1, s2)
            self.elem_types[name] = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

        def const(name):
            if name in consts:
                return consts[name]
            if name in inits:
                consts[name] = _Const(numpy_helper.to_array(inits[name]))
                return consts[name]
            return None

        for node in self.nodes:
            if any(o in data for o in node.output):
                self._infer_node(node, data, const, shapes)
                continue
            try:
                values = self._eval_const_node(node, data, const, shapes)
            except Exception:  # evaluated lazily: only an error if a data node needs it
                values = None
            for k, o in enumerate(node.output):
                if o:
                    consts[o] = None if values is None or values[k] is None else values[k]
        return consts, shapes

    def _eval_const_node(self, node, data, const, shapes):
        """Values (_Const per output) of a node that does not depend on input values."""
        op = node.op_type
        if op in ("Shape", "Size") and node.input[0] in data:
            pair = shapes.get(node.input[0])
            if pair is None:
                return None
            out = []
            for dims in pair:
                if op == "Size":
                    out.append(np.array(int(np.prod(dims)), dtype=np.int64))
                    continue
                at = self.attrs(node)
                r = len(dims)
                start, end = at.get("start", 0), at.get("end", r)
                start = min(max(start + r if start < 0 else start, 0), r)
                end = min(max(end + r if end < 0 else end, 0), r)
                out.append(np.array(dims[start:end], dtype=np.int64))
            return [_Const(out[0], out[1] if not np.array_equal(out[0], out[1]) else None)]
        ins = []
        for name in node.input:
            if not name:
                ins.append(None)
                continue
            v = const(name)
            if v is None:
                return None
            ins.append(v)
        if op == "Identity":
            return [ins[0]]
        dep = any(v is not None and v.v1 is not v.v2 for v in ins)
        r1 = self._evaluate(node, [None if v is None else v.v1 for v in ins])
        r2 = self._evaluate(node, [None if v is None else v.v2 for v in ins]) if dep else r1
        out = []
        for a, b in zip(r1, r2):
            a = np.asarray(a)
            b = np.asarray(b)
            out.append(_Const(a, b if (b is not a and not (a.shape == b.shape and np.array_equal(a, b))) else None))
        return out

    def _evaluate(self, node, arrays):
        """Outputs of one constant node: a numpy fast path for shape arithmetic, else the ONNX
        reference evaluator."""
        fast = _FAST_EVAL.get(node.op_type)
        if fast is not None:
            result = fast(self, node, arrays)
            if result is not None:
                return result
        onnx = self.onnx
        helper = onnx.helper
        names = [f"i{k}" if a is not None else "" for k, a in enumerate(arrays)]
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(names)
        del copy.output[:]
        copy.output.extend([f"o{k}" if o else "" for k, o in enumerate(node.output)])
        graph = helper.make_graph(
            [copy], "const",
            [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for n, a in zip(names, arrays) if a is not None],
            [helper.make_tensor_value_info(o, 0, None) for o in copy.output if o])
        model = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        model.ir_version = self.proto.ir_version
        from onnx.reference import ReferenceEvaluator

        feeds = {n: a for n, a in zip(names, arrays) if a is not None}
        outs = ReferenceEvaluator(model).run(None, feeds)
        it = iter(outs)
        return [next(it) if o else None for o in copy.output]

    def _infer_node(self, node, data, const, shapes):
        """Shapes at B1/B2 of a data node's outputs by ONNX shape inference of that node alone."""
        onnx = self.onnx
        helper = onnx.helper
        results = []
        for which in (0, 1):
            inputs, initializers, seen = [], [], set()
            for name in node.input:
                if not name or name in seen:
                    continue
                seen.add(name)
                if name in data:
                    pair = shapes.get(name)
                    inputs.append(helper.make_tensor_value_info(
                        name, self.elem_types.get(name, 0), None if pair is None else pair[which]))
                    continue
                v = const(name)
                if v is None:
                    return
                arr = v.v1 if which == 0 else v.v2
                if arr.size <= 4096:
                    initializers.append(onnx.numpy_helper.from_array(arr, name))
                else:
                    inputs.append(helper.make_tensor_value_info(
                        name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape))
            graph = helper.make_graph([node], "node", inputs, [], initializer=initializers)
            model = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
            model.ir_version = self.proto.ir_version
            try:
                inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
            except Exception:
                return
            found = {}
            for vi in inferred.graph.value_info:
                found[vi.name] = (_dims(vi), vi.type.tensor_type.elem_type)
            results.append(found)
        for name in node.output:
            if not name:
                continue
            (d1, t1), (d2, _) = results[0].get(name, (None, 0)), results[1].get(name, (None, 0))
            if t1:
                self.elem_types[name] = t1
            if d1 is not None and d2 is not None:
                shapes[name] = (d1, d2)

    def _image_inputs(self, infos, data):
        """Inputs taken channels-last with layout='nhwc'."""
        if self.layout != "nhwc":
            return set()
        consumers = {}
        for node in self.nodes:
            for i in node.input:
                consumers.setdefault(i, []).append(node)
        images = set()
        for name, dtype, s1, _, _ in infos:
            if not dtype.startswith("float") or len(s1) not in (3, 4, 5):
                continue
            frontier, seen = [name], set()
            while frontier:
                cur = frontier.pop()
                if cur in seen:
                    continue
                seen.add(cur)
                for node in consumers.get(cur, []):
                    if node.op_type in _SPATIAL_OPS and node.input[0] == cur:
                        images.add(name)
                    elif node.op_type in _PASS_THROUGH:
                        frontier.extend(o for o in node.output if o)
        return images

    # --------------------------------------------------------------- main
    def convert(self):
        keras = self.keras
        self.nodes = self._topo_nodes()
        infos = self._input_infos()
        data = self._classify([i[0] for i in infos])
        self.data_names = data
        self.consumers = {}
        for node in self.nodes:
            for i in node.input:
                if i:
                    self.consumers.setdefault(i, []).append(node)
        graph_outputs = [o.name for o in self.graph.output]
        for name in graph_outputs:
            if name not in data:
                raise ConversionError(f"output '{name}' does not depend on any input (a constant "
                                      "output); Keras models cannot return constants")
        _say(self.progress, "analysing the ONNX graph (constants and shapes)")
        consts, self.shapes = self._analyse(infos, data)
        for node in self.nodes:
            if any(o in data for o in node.output):
                for name in node.input:
                    if name and name not in data and consts.get(name) is None:
                        raise ConversionError(
                            f"cannot evaluate constant input '{name}' of {node.op_type} node "
                            f"'{node.name}' (computed by an op the ONNX reference evaluator lacks)")
        self.values.update({k: v for k, v in consts.items() if v is not None})
        images = self._image_inputs(infos, data)

        inputs = []
        for name, dtype, s1, s2, dynamic in infos:
            perm = _cl(len(s1)) if name in images else _ident(len(s1))
            actual = [s1[p] for p in perm]
            t = keras.Input(shape=tuple(actual[1:]), batch_size=None if dynamic else s1[0],
                            dtype=dtype, name=self._name(name, "input"))
            inputs.append(t)
            self.values[name] = _Data(t, perm, s1, s2)
            if dynamic and self._batch_source is None:
                self._batch_source = (t, len(actual))

        data_nodes = [n for n in self.nodes if any(o in data for o in n.output)]
        total = len(data_nodes)
        _say(self.progress, f"building the Keras 3 model from {total} ONNX nodes")
        for k, node in enumerate(data_nodes):
            if id(node) in self._done:
                continue
            self._convert_node(node)
            if self.progress is not None and total > 50 and (k + 1) % 100 == 0:
                _say(self.progress, f"converted {k + 1}/{total} nodes")

        outputs = []
        for name in graph_outputs:
            val = self.values[name]
            t = self.view(val, _ident(val.rank)) if isinstance(val, _Data) else self.as_data(val).t
            outputs.append(self.layers.Identity(name=self._name(name, "output"))(t))
        model = keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                            outputs[0] if len(outputs) == 1 else outputs,
                            name=_sanitize(self.graph.name, "converted"))
        return model

    # --------------------------------------------------------------- helpers
    def _name(self, base, fallback="layer"):
        name = _sanitize(base, fallback)
        candidate, k = name, 1
        while candidate in self.names:
            k += 1
            candidate = f"{name}_{k}"
        self.names.add(candidate)
        return candidate

    def layer_name(self, node, suffix=""):
        return self._name((node.name or node.op_type) + suffix, node.op_type.lower())

    def view(self, val: _Data, perm):
        """val's Keras tensor transposed into `perm` (cached)."""
        perm = tuple(perm)
        t = val.views.get(perm)
        if t is None:
            inv = [val.perm.index(p) for p in perm]
            t = self.ops.transpose(val.t, inv)
            val.views[perm] = t
        return t

    def onnx_view(self, val):
        return self.view(val, _ident(val.rank))

    def shape_pair(self, name, val=None):
        """ONNX shapes at B1/B2 of tensor `name`."""
        if name in self.shapes:
            return self.shapes[name]
        if isinstance(val, _Const):
            return val.v1.shape, val.v2.shape
        if isinstance(val, _Data):
            if val.s1 is not None:
                return val.s1, val.s2
            ks = self.onnx_view(val).shape
            return (tuple(_B1 if d is None else d for d in ks),
                    tuple(_B2 if d is None else d for d in ks))
        raise ConversionError(f"no shape known for tensor '{name}'")

    def batch_zeros(self):
        """A float32 KerasTensor of zeros with shape (batch,), taken from a dynamic-batch input."""
        if self._batch_ref is None:
            src = self._batch_source
            if src is None:
                raise ConversionError("a batch-dependent constant needs a dynamic-batch input")
            t, rank = src
            if rank > 1:
                t = t[(slice(None),) + (0,) * (rank - 1)]
            self._batch_ref = self.ops.zeros_like(t, dtype="float32")
        return self._batch_ref

    def as_data(self, val, what="tensor"):
        """A _Data for `val`, materialising a batch-broadcast constant if needed."""
        if isinstance(val, _Data):
            return val
        if not isinstance(val, _Const):
            raise ConversionError(f"missing {what}")
        v1, v2 = val.v1, val.v2
        if v1.ndim != v2.ndim:
            raise ConversionError(f"a constant {what} changes rank with the batch size")
        axes = [i for i in range(v1.ndim) if v1.shape[i] != v2.shape[i]]
        ops = self.ops
        if not axes:
            if val.batch_dep:
                raise ConversionError(f"a batch-dependent constant {what} (values computed from "
                                      "the batch size) is not supported")
            raise ConversionError(f"a constant {what} used as a model tensor is not supported")
        if len(axes) != 1 or v1.shape[axes[0]] != _B1 or v2.shape[axes[0]] != _B2:
            raise ConversionError(f"a batch-dependent constant {what} of shape {v1.shape} is "
                                  "not supported")
        axis = axes[0]
        base = np.take(v1, [0], axis=axis)
        if not (np.array_equal(np.broadcast_to(base, v1.shape), v1)
                and np.array_equal(np.broadcast_to(base, v2.shape), v2)):
            raise ConversionError(f"a batch-dependent constant {what} that is not a broadcast "
                                  "is not supported")
        zeros = ops.reshape(self.batch_zeros(), [-1 if i == axis else 1 for i in range(v1.ndim)])
        if base.dtype == np.bool_:
            t = ops.cast(ops.add(zeros, base.astype(np.float32)), "bool")
        else:
            if base.dtype != np.float32:
                zeros = ops.cast(zeros, str(base.dtype))
            t = ops.add(zeros, base)
        return _Data(t, _ident(v1.ndim), v1.shape, v2.shape)

    def const_arg(self, arr, what="constant"):
        """A numpy constant ready to be an op argument (python scalar when it is one)."""
        arr = np.asarray(arr)
        if arr.size > _INLINE_LIMIT:
            raise ConversionError(f"a {arr.shape} {what} is too large to store in the model config")
        return arr

    def const_value(self, val, what):
        if not isinstance(val, _Const):
            raise ConversionError(f"{what} must be a constant, not computed from input values")
        if val.batch_dep:
            raise ConversionError(f"{what} depends on the batch size")
        return val.v1

    def set_out(self, node, index, t, perm):
        name = node.output[index]
        if not name:
            return
        s = self.shapes.get(name)
        val = _Data(t, perm, *(s if s else (None, None)))
        self._check(node, name, val)
        self.values[name] = val

    def _check(self, node, name, val):
        if val.s1 is None:
            return
        kshape = tuple(val.t.shape)
        expect1 = [val.s1[p] for p in val.perm]
        expect2 = [val.s2[p] for p in val.perm]
        if len(kshape) != len(expect1):
            raise ConversionError(f"internal error converting {node.op_type} node '{node.name}': "
                                  f"Keras rank {len(kshape)} != ONNX rank {len(expect1)}")
        for k, e1, e2 in zip(kshape, expect1, expect2):
            if k is not None and e1 == e2 and k != e1:
                raise ConversionError(f"internal error converting {node.op_type} node "
                                      f"'{node.name}': Keras shape {kshape} != ONNX shape "
                                      f"{tuple(expect1)} (permuted)")

    def attrs(self, node):
        helper = self.onnx.helper
        out = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            out[a.name] = v
        return out

    def inp(self, node, k):
        if k >= len(node.input) or not node.input[k]:
            return None
        return self.values[node.input[k]]

    def single_consumer(self, name):
        users = self.consumers.get(name, [])
        outs = {o.name for o in self.graph.output}
        return users[0] if len(users) == 1 and name not in outs else None

    # --------------------------------------------------------------- dispatch
    def _convert_node(self, node):
        if node.domain not in ("", "ai.onnx"):
            raise ConversionError(f"ONNX op '{node.domain}.{node.op_type}' (node '{node.name}') is "
                                  "not supported by the Keras 3 converter")
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            raise ConversionError(f"ONNX op '{node.op_type}' (node '{node.name}') is not "
                                  "supported by the Keras 3 converter")
        try:
            handler(self, node)
        except ConversionError:
            raise
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ConversionError(f"cannot convert ONNX {node.op_type} node '{node.name}': "
                                  f"{msg}") from exc


# ----------------------------------------------------------------------------- op handlers
_HANDLERS: dict[str, Callable] = {}


def _handles(*names):
    def deco(fn):
        for n in names:
            _HANDLERS[n] = fn
        return fn
    return deco


def _passthrough(c, node):
    val = c.inp(node, 0)
    c.values[node.output[0]] = val
    for extra in node.output[1:]:
        if extra and c.consumers.get(extra):
            raise ConversionError(f"the mask output of {node.op_type} node '{node.name}' is not "
                                  "supported")


_HANDLERS["Identity"] = _passthrough
_HANDLERS["Dropout"] = _passthrough


def _unary(fn):
    def handler(c, node):
        x = c.as_data(c.inp(node, 0))
        c.set_out(node, 0, fn(c, c.attrs(node), x.t), x.perm)
    return handler


_UNARY = {
    "Relu": lambda c, a, t: c.ops.relu(t),
    "Sigmoid": lambda c, a, t: c.ops.sigmoid(t),
    "Tanh": lambda c, a, t: c.ops.tanh(t),
    "Exp": lambda c, a, t: c.ops.exp(t),
    "Log": lambda c, a, t: c.ops.log(t),
    "Sqrt": lambda c, a, t: c.ops.sqrt(t),
    "Abs": lambda c, a, t: c.ops.absolute(t),
    "Neg": lambda c, a, t: c.ops.negative(t),
    "Erf": lambda c, a, t: c.ops.erf(t),
    "Reciprocal": lambda c, a, t: c.ops.reciprocal(t),
    "Floor": lambda c, a, t: c.ops.floor(t),
    "Ceil": lambda c, a, t: c.ops.ceil(t),
    "Round": lambda c, a, t: c.ops.round(t),
    "Sin": lambda c, a, t: c.ops.sin(t),
    "Cos": lambda c, a, t: c.ops.cos(t),
    "Tan": lambda c, a, t: c.ops.tan(t),
    "Asin": lambda c, a, t: c.ops.arcsin(t),
    "Acos": lambda c, a, t: c.ops.arccos(t),
    "Atan": lambda c, a, t: c.ops.arctan(t),
    "Sinh": lambda c, a, t: c.ops.sinh(t),
    "Cosh": lambda c, a, t: c.ops.cosh(t),
    "Softplus": lambda c, a, t: c.ops.softplus(t),
    "Softsign": lambda c, a, t: c.ops.softsign(t),
    "Sign": lambda c, a, t: c.ops.sign(t),
    "Not": lambda c, a, t: c.ops.logical_not(t),
    "IsNaN": lambda c, a, t: c.ops.isnan(t),
    "IsInf": lambda c, a, t: c.ops.isinf(t),
    "Elu": lambda c, a, t: c.ops.elu(t, alpha=float(a.get("alpha", 1.0))),
    "LeakyRelu": lambda c, a, t: c.ops.leaky_relu(t, negative_slope=float(a.get("alpha", 0.01))),
    "HardSwish": lambda c, a, t: c.ops.hard_silu(t),
    "Mish": lambda c, a, t: c.ops.multiply(t, c.ops.tanh(c.ops.softplus(t))),
    "Gelu": lambda c, a, t: c.ops.gelu(t, approximate=a.get("approximate", "none") == "tanh"),
}
for _op, _fn in _UNARY.items():
    _HANDLERS[_op] = _unary(_fn)


@_handles("Selu")
def _selu(c, node):
    a = c.attrs(node)
    alpha, gamma = float(a.get("alpha", 1.67326319217681884765625)), float(a.get("gamma", 1.05070102214813232421875))
    x = c.as_data(c.inp(node, 0))
    if abs(alpha - 1.6732632) < 1e-6 and abs(gamma - 1.0507010) < 1e-6:
        t = c.ops.selu(x.t)
    else:
        t = c.ops.multiply(c.ops.elu(x.t, alpha=alpha), gamma)
    c.set_out(node, 0, t, x.perm)


@_handles("HardSigmoid")
def _hard_sigmoid(c, node):
    a = c.attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    x = c.as_data(c.inp(node, 0))
    if abs(alpha - 1.0 / 6.0) < 1e-6 and abs(beta - 0.5) < 1e-6:
        t = c.ops.hard_sigmoid(x.t)
    else:
        t = c.ops.clip(c.ops.add(c.ops.multiply(x.t, alpha), beta), 0.0, 1.0)
    c.set_out(node, 0, t, x.perm)


@_handles("Clip")
def _clip(c, node):
    x = c.as_data(c.inp(node, 0))
    a = c.attrs(node)
    if c.opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo_v, hi_v = c.inp(node, 1), c.inp(node, 2)
        lo = None if lo_v is None else c.const_value(lo_v, "Clip min").item()
        hi = None if hi_v is None else c.const_value(hi_v, "Clip max").item()
    t = x.t
    if lo == 0 and hi == 6:
        t = c.ops.relu6(t)
    elif lo is not None and hi is not None:
        t = c.ops.clip(t, lo, hi)
    elif lo is not None:
        t = c.ops.maximum(t, lo)
    elif hi is not None:
        t = c.ops.minimum(t, hi)
    c.set_out(node, 0, t, x.perm)


@_handles("PRelu")
def _prelu(c, node):
    args, perm = _broadcast_args(c, [c.inp(node, 0), c.inp(node, 1)])
    x, slope = args
    ops = c.ops
    c.set_out(node, 0, ops.where(ops.greater_equal(x, 0), x, ops.multiply(x, slope)), perm)


@_handles("Cast")
def _cast(c, node):
    x = c.as_data(c.inp(node, 0))
    to = _ONNX_DTYPES.get(c.attrs(node)["to"])
    if to is None:
        raise ConversionError(f"Cast to ONNX type {c.attrs(node)['to']} (node '{node.name}') is "
                              "not supported")
    c.set_out(node, 0, c.ops.cast(x.t, to), x.perm)


def _broadcast_args(c, vals):
    """Keras args for an elementwise op with ONNX (numpy) broadcasting, and the output perm."""
    datas = [v for v in vals if isinstance(v, _Data)]
    consts_rank = [v.rank for v in vals if isinstance(v, _Const)]
    rank = max([d.rank for d in datas] + consts_rank)
    if any(isinstance(v, _Const) and v.batch_dep for v in vals) or not datas:
        vals = [c.as_data(v) if isinstance(v, _Const) and v.batch_dep else v for v in vals]
        datas = [v for v in vals if isinstance(v, _Data)]
    full = [d for d in datas if d.rank == rank]
    perm = _ident(rank)
    for d in full:
        if d.perm != _ident(rank):
            perm = d.perm
            break
    if not full:  # a constant has the highest rank: work in ONNX layout
        perm = _ident(rank)
    args = []
    for v in vals:
        if isinstance(v, _Data):
            if v.rank == rank:
                args.append(c.view(v, perm))
            else:
                t = c.onnx_view(v)
                for _ in range(rank - v.rank):
                    t = c.ops.expand_dims(t, 0)
                if perm != _ident(rank):
                    t = c.ops.transpose(t, perm)
                args.append(t)
        else:
            arr = v.v1
            if arr.size == 1 and arr.ndim <= max(d.rank for d in datas):
                scalar = arr.reshape(())
                args.append(scalar.item() if arr.dtype == np.float32 or arr.dtype.kind in "iub"
                            else scalar)
                continue
            arr = arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
            if perm != _ident(rank):
                arr = np.transpose(arr, perm)
            args.append(c.const_arg(np.ascontiguousarray(arr)))
    return args, perm


def _binary(fn):
    def handler(c, node):
        args, perm = _broadcast_args(c, [c.inp(node, k) for k in range(len(node.input))])
        c.set_out(node, 0, fn(c, node, args), perm)
    return handler


def _div(c, node, args):
    a, b = args
    dtype = _arg_dtype(c, node)
    if dtype is not None and dtype.startswith(("int", "uint")):
        return c.ops.floor_divide(a, b)
    return c.ops.divide(a, b)


def _arg_dtype(c, node):
    for k in range(len(node.input)):
        v = c.inp(node, k)
        if isinstance(v, _Data):
            return str(v.t.dtype)
    return None


def _pow(c, node, args):
    a, b = args
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        if b == 2:
            return c.ops.square(a)
        if b == 1:
            return c.ops.multiply(a, 1.0)
        if b == 0.5:
            return c.ops.sqrt(a)
    return c.ops.power(a, b)


def _mod(c, node, args):
    if c.attrs(node).get("fmod", 0):
        raise ConversionError(f"Mod with fmod=1 (node '{node.name}') is not supported")
    return c.ops.mod(*args)


def _fold(fn):
    def inner(c, node, args):
        out = args[0]
        for a in args[1:]:
            out = fn(c)(out, a)
        return out
    return inner


_BINARY = {
    "Add": lambda c, n, a: c.ops.add(*a),
    "Sub": lambda c, n, a: c.ops.subtract(*a),
    "Mul": lambda c, n, a: c.ops.multiply(*a),
    "Div": _div,
    "Pow": _pow,
    "Mod": _mod,
    "Equal": lambda c, n, a: c.ops.equal(*a),
    "Less": lambda c, n, a: c.ops.less(*a),
    "LessOrEqual": lambda c, n, a: c.ops.less_equal(*a),
    "Greater": lambda c, n, a: c.ops.greater(*a),
    "GreaterOrEqual": lambda c, n, a: c.ops.greater_equal(*a),
    "And": lambda c, n, a: c.ops.logical_and(*a),
    "Or": lambda c, n, a: c.ops.logical_or(*a),
    "Xor": lambda c, n, a: c.ops.logical_xor(*a),
    "Where": lambda c, n, a: c.ops.where(*a),
    "Max": _fold(lambda c: c.ops.maximum),
    "Min": _fold(lambda c: c.ops.minimum),
    "Sum": _fold(lambda c: c.ops.add),
}
for _op, _fn in _BINARY.items():
    _HANDLERS[_op] = _binary(_fn)


@_handles("Mean")
def _mean(c, node):
    args, perm = _broadcast_args(c, [c.inp(node, k) for k in range(len(node.input))])
    out = args[0]
    for a in args[1:]:
        out = c.ops.add(out, a)
    c.set_out(node, 0, c.ops.divide(out, float(len(args))), perm)


# ---- linear algebra
def _dense(c, node, x: _Data, kernel, bias, name_suffix=""):
    """Dense over the last ONNX axis of x; returns (tensor, perm)."""
    r = x.rank
    if x.perm[-1] == r - 1:
        t, perm = x.t, x.perm
    else:
        t, perm = c.onnx_view(x), _ident(r)
    layer = c.layers.Dense(kernel.shape[1], use_bias=bias is not None,
                           name=c.layer_name(node, name_suffix), **_ZERO_INIT)
    out = layer(t)
    layer.set_weights([kernel.astype(np.float32)] + ([bias.astype(np.float32)] if bias is not None else []))
    return out, perm


def _bias_for(c, node, out_name, n):
    """A following Add of a constant (n,) bias that can be folded into a Dense layer."""
    user = c.single_consumer(out_name)
    if user is None or user.op_type != "Add" or len(user.input) != 2:
        return None, None
    other = user.input[1] if user.input[0] == out_name else user.input[0]
    val = c.values.get(other)
    if not isinstance(val, _Const) or val.batch_dep or val.v1.dtype != np.float32:
        return None, None
    arr = val.v1
    if arr.size != n or arr.shape[-1:] != (n,) or any(d != 1 for d in arr.shape[:-1]):
        return None, None
    out_rank = len(c.shape_pair(out_name)[0]) if out_name in c.shapes else None
    if out_rank is not None and arr.ndim > out_rank:
        return None, None
    return user, arr.reshape(n)


@_handles("MatMul")
def _matmul(c, node):
    a, b = c.inp(node, 0), c.inp(node, 1)
    ops = c.ops
    if isinstance(a, _Data) and isinstance(b, _Const) and not b.batch_dep and b.rank == 2 \
            and a.rank >= 2 and b.v1.dtype == np.float32:
        add, bias = _bias_for(c, node, node.output[0], b.v1.shape[1])
        t, perm = _dense(c, node, a, b.v1, bias)
        if add is not None:
            c._done.add(id(add))
            c.values[node.output[0]] = None
            node_out = add
        else:
            node_out = node
        c.set_out(node_out, 0, t, perm)
        return
    ta = c.onnx_view(a) if isinstance(a, _Data) else c.const_arg(c.const_value(a, "MatMul A"))
    tb = c.onnx_view(b) if isinstance(b, _Data) else c.const_arg(c.const_value(b, "MatMul B"))
    out_rank = max(len(getattr(ta, "shape")), len(getattr(tb, "shape")))
    c.set_out(node, 0, ops.matmul(ta, tb), _ident(out_rank))


@_handles("Gemm")
def _gemm(c, node):
    at = c.attrs(node)
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    a, b, cc = c.inp(node, 0), c.inp(node, 1), c.inp(node, 2)
    ops = c.ops
    if not isinstance(a, _Data):
        raise ConversionError(f"Gemm with a constant A input (node '{node.name}') is not supported")
    ta = c.onnx_view(a)
    if at.get("transA", 0):
        ta = ops.transpose(ta, (1, 0))
    xa = _Data(ta, (0, 1))
    if isinstance(b, _Const) and not b.batch_dep:
        w = b.v1.T if at.get("transB", 0) else b.v1
        w = w * alpha if alpha != 1.0 else w
        bias = None
        rest = None
        if cc is not None:
            cv = c.const_value(cc, "Gemm C") if isinstance(cc, _Const) else None
            if cv is not None and cv.size == w.shape[1] and cv.shape[-1:] == (w.shape[1],):
                bias = cv.reshape(-1) * beta
            else:
                rest = cc
        t, _ = _dense(c, node, xa, w, bias)
        if rest is not None:
            args, _ = _broadcast_args(c, [_Data(t, (0, 1)), rest])
            t = ops.add(args[0], ops.multiply(args[1], beta) if beta != 1.0 else args[1])
        c.set_out(node, 0, t, (0, 1))
        return
    tb = c.onnx_view(c.as_data(b))
    if at.get("transB", 0):
        tb = ops.transpose(tb, (1, 0))
    t = ops.matmul(ta, tb)
    if alpha != 1.0:
        t = ops.multiply(t, alpha)
    if cc is not None:
        args, _ = _broadcast_args(c, [_Data(t, (0, 1)), cc])
        t = ops.add(args[0], ops.multiply(args[1], beta) if beta != 1.0 else args[1])
    c.set_out(node, 0, t, (0, 1))


@_handles("Einsum")
def _einsum(c, node):
    eq = c.attrs(node)["equation"].replace(" ", "")
    args = []
    for k in range(len(node.input)):
        v = c.inp(node, k)
        args.append(c.onnx_view(v) if isinstance(v, _Data) else c.const_arg(c.const_value(v, "Einsum operand")))
    out = c.ops.einsum(eq, *args)
    c.set_out(node, 0, out, _ident(len(out.shape)))


# ---- convolution / pooling
def _spatial_pads(c, node, x_shape, kernel, strides, dilations):
    """ONNX pads (begin..., end...) for a spatial op, resolving auto_pad."""
    at = c.attrs(node)
    n = len(kernel)
    auto = at.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for i in range(n):
            size = x_shape[2 + i]
            out = -(-size // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto == "SAME_UPPER" else big)
            pads_e.append(big if auto == "SAME_UPPER" else small)
        return pads_b + pads_e
    if auto == "VALID":
        return [0] * (2 * n)
    return list(at.get("pads", [0] * (2 * n)))


def _pad_layer(c, node, t, pads, n, value=0.0):
    """Pad the spatial axes of a channels-last tensor."""
    if not any(pads):
        return t
    pb, pe = pads[:n], pads[n:]
    if any(p < 0 for p in pads):
        raise ConversionError(f"negative pads in {node.op_type} node '{node.name}' are not supported")
    if value == 0.0:
        cls = {1: c.layers.ZeroPadding1D, 2: c.layers.ZeroPadding2D, 3: c.layers.ZeroPadding3D}[n]
        arg = (pb[0], pe[0]) if n == 1 else tuple((pb[i], pe[i]) for i in range(n))
        return cls(arg, name=c.layer_name(node, "_pad"), data_format=_CL)(t)
    width = [[0, 0]] + [[pb[i], pe[i]] for i in range(n)] + [[0, 0]]
    return c.ops.pad(t, width, constant_values=value)


@_handles("Conv")
def _conv(c, node):
    at = c.attrs(node)
    x = c.as_data(c.inp(node, 0))
    w = c.const_value(c.inp(node, 1), f"Conv weight of node '{node.name}'").astype(np.float32)
    b = c.inp(node, 2)
    bias = None if b is None else c.const_value(b, "Conv bias").astype(np.float32)
    r = x.rank
    n = r - 2
    if n not in (1, 2, 3):
        raise ConversionError(f"Conv with {n} spatial dims (node '{node.name}') is not supported")
    kernel = list(w.shape[2:])
    strides = list(at.get("strides", [1] * n))
    dil = list(at.get("dilations", [1] * n))
    group = int(at.get("group", 1))
    s1 = c.shape_pair(node.input[0], x)[0]
    pads = _spatial_pads(c, node, s1, kernel, strides, dil)
    t = c.view(x, _cl(r))
    out_ch, in_per_group = w.shape[0], w.shape[1]
    in_ch = in_per_group * group
    padding = "valid"
    if any(pads):
        same = all(s == 1 for s in strides) and all(
            pads[i] == pads[n + i] == dil[i] * (kernel[i] - 1) // 2 and dil[i] * (kernel[i] - 1) % 2 == 0
            for i in range(n))
        if same:
            padding = "same"
        else:
            t = _pad_layer(c, node, t, pads, n)
    L = c.layers
    name = c.layer_name(node)
    if group == 1:
        cls = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}[n]
        layer = cls(out_ch, kernel, strides=strides, padding=padding, dilation_rate=dil,
                    data_format=_CL, use_bias=bias is not None, name=name, **_ZERO_INIT)
        kern = np.transpose(w, tuple(range(2, 2 + n)) + (1, 0))
    elif group == in_ch and out_ch % in_ch == 0 and n in (1, 2) and \
            not (any(s > 1 for s in strides) and any(d > 1 for d in dil)):
        mult = out_ch // in_ch
        cls = {1: L.DepthwiseConv1D, 2: L.DepthwiseConv2D}[n]
        layer = cls(kernel, strides=strides, padding=padding, depth_multiplier=mult, data_format=_CL,
                    dilation_rate=dil, use_bias=bias is not None, name=name,
                    depthwise_initializer="zeros", bias_initializer="zeros")
        kern = w.reshape((in_ch, mult) + tuple(kernel))
        kern = np.transpose(kern, tuple(range(2, 2 + n)) + (0, 1))
    else:
        cls = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}[n]
        layer = cls(out_ch, kernel, strides=strides, padding=padding, dilation_rate=dil,
                    data_format=_CL, groups=group, use_bias=bias is not None, name=name, **_ZERO_INIT)
        kern = np.transpose(w, tuple(range(2, 2 + n)) + (1, 0))
    out = layer(t)
    layer.set_weights([np.ascontiguousarray(kern)] + ([bias] if bias is not None else []))
    c.set_out(node, 0, out, _cl(r))


@_handles("ConvTranspose")
def _conv_transpose(c, node):
    at = c.attrs(node)
    x = c.as_data(c.inp(node, 0))
    w = c.const_value(c.inp(node, 1), "ConvTranspose weight").astype(np.float32)
    b = c.inp(node, 2)
    bias = None if b is None else c.const_value(b, "ConvTranspose bias").astype(np.float32)
    r = x.rank
    n = r - 2
    group = int(at.get("group", 1))
    if n not in (1, 2, 3) or group != 1:
        raise ConversionError(f"ConvTranspose with group={group}, {n} spatial dims (node "
                              f"'{node.name}') is not supported")
    kernel = list(w.shape[2:])
    strides = list(at.get("strides", [1] * n))
    dil = list(at.get("dilations", [1] * n))
    if any(d != 1 for d in dil):
        raise ConversionError(f"ConvTranspose with dilations (node '{node.name}') is not supported")
    s1 = c.shape_pair(node.input[0], x)[0]
    in_sizes = s1[2:]
    out_pad = list(at.get("output_padding", [0] * n))
    if "output_shape" in at or at.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ConversionError(f"ConvTranspose with output_shape/auto_pad (node '{node.name}') "
                              "is not supported")
    pads = list(at.get("pads", [0] * (2 * n)))
    L = c.layers
    cls = {1: L.Conv1DTranspose, 2: L.Conv2DTranspose, 3: L.Conv3DTranspose}[n]
    layer = cls(w.shape[1], kernel, strides=strides, padding="valid", data_format=_CL,
                use_bias=bias is not None,
                name=c.layer_name(node), **_ZERO_INIT)
    out = layer(c.view(x, _cl(r)))
    kern = np.transpose(w, tuple(range(2, 2 + n)) + (1, 0))
    layer.set_weights([np.ascontiguousarray(kern)] + ([bias] if bias is not None else []))
    # Keras 'valid' length: in*s + max(k - s, 0); ONNX: (in-1)*s + k + out_pad - pb - pe
    idx = [slice(None)]
    for i in range(n):
        keras_len = in_sizes[i] * strides[i] + max(kernel[i] - strides[i], 0)
        onnx_len = (in_sizes[i] - 1) * strides[i] + kernel[i] + out_pad[i] - pads[i] - pads[n + i]
        end = pads[i] + onnx_len
        if end > keras_len:
            raise ConversionError(f"ConvTranspose output_padding beyond the kernel (node "
                                  f"'{node.name}') is not supported")
        idx.append(slice(pads[i], end) if (pads[i] or end != keras_len) else slice(None))
    idx.append(slice(None))
    if any(s != slice(None) for s in idx):
        out = out[tuple(idx)]
    c.set_out(node, 0, out, _cl(r))


def _pool_geometry(c, node, x, n):
    at = c.attrs(node)
    kernel = list(at["kernel_shape"])
    strides = list(at.get("strides", [1] * n))
    dil = list(at.get("dilations", [1] * n))
    s1 = c.shape_pair(node.input[0], x)[0]
    pads = _spatial_pads(c, node, s1, kernel, strides, dil)
    sizes = list(s1[2:])
    extra = [0] * n
    if at.get("ceil_mode", 0):
        for i in range(n):
            eff = (kernel[i] - 1) * dil[i] + 1
            span = sizes[i] + pads[i] + pads[n + i] - eff
            out_f = span // strides[i] + 1
            out_c = -(-span // strides[i]) + 1
            if (out_c - 1) * strides[i] >= sizes[i] + pads[i]:
                out_c -= 1
            if out_c > out_f:
                extra[i] = (out_c - 1) * strides[i] + eff - (sizes[i] + pads[i] + pads[n + i])
    return kernel, strides, dil, pads, sizes, extra


@_handles("MaxPool")
def _maxpool(c, node):
    x = c.as_data(c.inp(node, 0))
    r = x.rank
    n = r - 2
    if len(node.output) > 1 and node.output[1]:
        raise ConversionError(f"MaxPool with an Indices output (node '{node.name}') is not supported")
    kernel, strides, dil, pads, sizes, extra = _pool_geometry(c, node, x, n)
    if any(d != 1 for d in dil) or n not in (1, 2, 3):
        raise ConversionError(f"MaxPool with dilations or {n} spatial dims (node '{node.name}') "
                              "is not supported")
    t = c.view(x, _cl(r))
    full = pads[:n] + [pads[n + i] + extra[i] for i in range(n)]
    if any(full):
        t = _pad_layer(c, node, t, full, n, value=_NEG_BIG)
    L = c.layers
    cls = {1: L.MaxPooling1D, 2: L.MaxPooling2D, 3: L.MaxPooling3D}[n]
    out = cls(kernel, strides=strides, padding="valid", data_format=_CL,
              name=c.layer_name(node))(t)
    c.set_out(node, 0, out, _cl(r))


@_handles("AveragePool")
def _avgpool(c, node):
    x = c.as_data(c.inp(node, 0))
    r = x.rank
    n = r - 2
    at = c.attrs(node)
    kernel, strides, dil, pads, sizes, extra = _pool_geometry(c, node, x, n)
    if any(d != 1 for d in dil) or n not in (1, 2, 3):
        raise ConversionError(f"AveragePool with dilations or {n} spatial dims (node "
                              f"'{node.name}') is not supported")
    t = c.view(x, _cl(r))
    full = pads[:n] + [pads[n + i] + extra[i] for i in range(n)]
    L = c.layers
    cls = {1: L.AveragePooling1D, 2: L.AveragePooling2D, 3: L.AveragePooling3D}[n]
    include = bool(at.get("count_include_pad", 0))
    if any(full):
        t = _pad_layer(c, node, t, full, n)
    out = cls(kernel, strides=strides, padding="valid", data_format=_CL,
              name=c.layer_name(node))(t)
    if any(full):
        # divisor per output position: cells of the window inside the input (or inside
        # input+explicit pads when count_include_pad), as onnxruntime counts them
        factors = []
        for i in range(n):
            out_len = (sizes[i] + full[i] + full[n + i] - kernel[i]) // strides[i] + 1
            lo, hi = (-pads[i], sizes[i] + pads[n + i]) if include else (0, sizes[i])
            counts = []
            for o in range(out_len):
                start = o * strides[i] - pads[i]
                counts.append(max(0, min(start + kernel[i], hi) - max(start, lo)))
            factors.append(np.array(counts, dtype=np.float64))
        count = factors[0]
        for f in factors[1:]:
            count = np.multiply.outer(count, f)
        scale = (np.prod(kernel) / np.maximum(count, 1)).astype(np.float32)
        if not np.allclose(scale, 1.0):
            out = c.ops.multiply(out, c.const_arg(scale.reshape((1,) + scale.shape + (1,))))
    c.set_out(node, 0, out, _cl(r))


@_handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c, node):
    x = c.as_data(c.inp(node, 0))
    axes = tuple(x.perm.index(a) for a in range(2, x.rank))
    fn = c.ops.mean if node.op_type == "GlobalAveragePool" else c.ops.max
    c.set_out(node, 0, fn(x.t, axis=axes, keepdims=True), x.perm)


# ---- normalisation
@_handles("BatchNormalization")
def _batchnorm(c, node):
    at = c.attrs(node)
    if at.get("training_mode", 0):
        raise ConversionError(f"BatchNormalization in training mode (node '{node.name}') is not supported")
    x = c.as_data(c.inp(node, 0))
    scale, bias, mean, var = (c.const_value(c.inp(node, k), "BatchNormalization parameter")
                              .astype(np.float32) for k in range(1, 5))
    axis = x.perm.index(1) if x.rank > 1 else 0
    t = x.t
    if x.rank == 4 and axis != 3:  # keep conv-like tensors channels-last
        t, axis, perm = c.view(x, _cl(4)), 3, _cl(4)
    else:
        perm = x.perm
    layer = c.layers.BatchNormalization(axis=axis, epsilon=float(at.get("epsilon", 1e-5)),
                                        momentum=float(at.get("momentum", 0.9)),
                                        name=c.layer_name(node))
    out = layer(t)
    layer.set_weights([scale, bias, mean, var])
    c.set_out(node, 0, out, perm)


@_handles("LayerNormalization")
def _layernorm(c, node):
    at = c.attrs(node)
    x = c.as_data(c.inp(node, 0))
    r = x.rank
    axis = int(at.get("axis", -1))
    axis = axis + r if axis < 0 else axis
    if any(o for o in node.output[1:]):
        raise ConversionError(f"LayerNormalization Mean/InvStdDev outputs (node '{node.name}') "
                              "are not supported")
    norm_axes = list(range(axis, r))
    norm_shape = tuple(c.shape_pair(node.input[0], x)[0][axis:])
    scale = np.broadcast_to(c.const_value(c.inp(node, 1), "LayerNormalization scale"),
                            norm_shape).astype(np.float32)
    b = c.inp(node, 2)
    bias = (np.zeros(norm_shape, np.float32) if b is None else
            np.broadcast_to(c.const_value(b, "LayerNormalization bias"), norm_shape).astype(np.float32))
    actual = sorted(x.perm.index(a) for a in norm_axes)
    order = [x.perm[k] - axis for k in actual]
    layer = c.layers.LayerNormalization(axis=actual if len(actual) > 1 else actual[0],
                                        epsilon=float(at.get("epsilon", 1e-5)),
                                        name=c.layer_name(node))
    out = layer(x.t)
    layer.set_weights([np.ascontiguousarray(np.transpose(scale, order)),
                       np.ascontiguousarray(np.transpose(bias, order))])
    c.set_out(node, 0, out, x.perm)


@_handles("InstanceNormalization", "GroupNormalization")
def _groupnorm(c, node):
    at = c.attrs(node)
    x = c.as_data(c.inp(node, 0))
    r = x.rank
    channels = c.shape_pair(node.input[0], x)[0][1]
    scale = c.const_value(c.inp(node, 1), f"{node.op_type} scale").astype(np.float32).reshape(-1)
    bias = c.const_value(c.inp(node, 2), f"{node.op_type} bias").astype(np.float32).reshape(-1)
    if node.op_type == "InstanceNormalization":
        groups = channels
    else:
        groups = int(at["num_groups"])
        if scale.size == groups and groups != channels:  # opset 18: per-group scale/bias
            scale = np.repeat(scale, channels // groups)
            bias = np.repeat(bias, channels // groups)
    t = c.view(x, _cl(r))
    layer = c.layers.GroupNormalization(groups=groups, axis=-1,
                                        epsilon=float(at.get("epsilon", 1e-5)),
                                        name=c.layer_name(node))
    out = layer(t)
    layer.set_weights([scale, bias])
    c.set_out(node, 0, out, _cl(r))


@_handles("Softmax", "LogSoftmax")
def _softmax(c, node):
    x = c.as_data(c.inp(node, 0))
    r = x.rank
    default = -1 if c.opset >= 13 else 1
    axis = int(c.attrs(node).get("axis", default))
    axis = axis + r if axis < 0 else axis
    fn = c.ops.softmax if node.op_type == "Softmax" else c.ops.log_softmax
    if c.opset >= 13 or axis == r - 1:
        c.set_out(node, 0, fn(x.t, axis=x.perm.index(axis)), x.perm)
        return
    s1, s2 = c.shape_pair(node.input[0], x)
    inner = int(np.prod(s1[axis:]))
    if int(np.prod(s2[axis:])) != inner:
        raise ConversionError(f"opset<13 {node.op_type} over the batch axis (node '{node.name}') "
                              "is not supported")
    t = c.ops.reshape(c.onnx_view(x), (-1, inner))
    t = fn(t, axis=-1)
    target = [(-1 if a != b else a) for a, b in zip(s1, s2)]
    c.set_out(node, 0, c.ops.reshape(t, target), _ident(r))


# ---- reductions
def _reduce_axes(c, node, rank):
    at = c.attrs(node)
    axes = at.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = c.const_value(c.inp(node, 1), f"{node.op_type} axes").reshape(-1).tolist()
    if not axes:
        if at.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    return sorted({a + rank if a < 0 else a for a in axes})


@_handles("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")
def _reduce(c, node):
    x = c.as_data(c.inp(node, 0))
    axes = _reduce_axes(c, node, x.rank)
    if axes is None:
        c.values[node.output[0]] = x
        return
    keep = bool(c.attrs(node).get("keepdims", 1))
    actual = tuple(x.perm.index(a) for a in axes)
    ops = c.ops
    t = x.t
    op = node.op_type
    if op == "ReduceMean":
        out = ops.mean(t, axis=actual, keepdims=keep)
    elif op == "ReduceSum":
        out = ops.sum(t, axis=actual, keepdims=keep)
    elif op == "ReduceMax":
        out = ops.max(t, axis=actual, keepdims=keep)
    elif op == "ReduceMin":
        out = ops.min(t, axis=actual, keepdims=keep)
    elif op == "ReduceProd":
        out = ops.prod(t, axis=actual, keepdims=keep)
    elif op == "ReduceL1":
        out = ops.sum(ops.absolute(t), axis=actual, keepdims=keep)
    elif op == "ReduceL2":
        out = ops.sqrt(ops.sum(ops.square(t), axis=actual, keepdims=keep))
    elif op == "ReduceSumSquare":
        out = ops.sum(ops.square(t), axis=actual, keepdims=keep)
    else:
        out = ops.logsumexp(t, axis=actual, keepdims=keep)
    c.set_out(node, 0, out, x.perm if keep else _squeeze_perm(x.perm, axes))


@_handles("ArgMax", "ArgMin")
def _argmax(c, node):
    x = c.as_data(c.inp(node, 0))
    at = c.attrs(node)
    if at.get("select_last_index", 0):
        raise ConversionError(f"{node.op_type} with select_last_index=1 (node '{node.name}') is "
                              "not supported")
    axis = int(at.get("axis", 0))
    axis = axis + x.rank if axis < 0 else axis
    keep = bool(at.get("keepdims", 1))
    fn = c.ops.argmax if node.op_type == "ArgMax" else c.ops.argmin
    out = c.ops.cast(fn(x.t, axis=x.perm.index(axis), keepdims=keep), "int64")
    c.set_out(node, 0, out, x.perm if keep else _squeeze_perm(x.perm, [axis]))


# ---- shape manipulation
def _same_order_reshape_ok(x: _Data, s1):
    """Reshaping the actual tensor equals reshaping the ONNX tensor (non-1 axes keep order)."""
    order = [p for p in x.perm if s1[p] != 1]
    return order == sorted(order)


def _reshape_to(c, node, x: _Data, out1, out2):
    unknown = [i for i, (a, b) in enumerate(zip(out1, out2)) if a != b]
    if len(unknown) > 1:
        raise ConversionError(f"Reshape to {tuple(out1)} with several batch-dependent dims "
                              f"(node '{node.name}') is not supported")
    target = [(-1 if i in unknown else int(d)) for i, d in enumerate(out1)]
    s1, s2 = c.shape_pair(node.input[0], x)
    if list(s1) == list(out1) and list(s2) == list(out2):
        return c.onnx_view(x)
    src = x.t if _same_order_reshape_ok(x, s1) else c.onnx_view(x)
    return c.ops.reshape(src, target)


@_handles("Reshape")
def _reshape(c, node):
    x = c.as_data(c.inp(node, 0))
    shp = c.inp(node, 1)
    if not isinstance(shp, _Const):
        raise ConversionError(f"Reshape to a shape computed from input values (node '{node.name}') "
                              "is not supported")
    s1, s2 = c.shape_pair(node.input[0], x)
    allowzero = c.attrs(node).get("allowzero", 0)
    outs = []
    for s, tgt in ((s1, shp.v1), (s2, shp.v2)):
        tgt = [int(v) for v in tgt.reshape(-1)]
        if not allowzero:
            tgt = [s[i] if v == 0 else v for i, v in enumerate(tgt)]
        if -1 in tgt:
            known = int(np.prod([v for v in tgt if v != -1]))
            tgt[tgt.index(-1)] = int(np.prod(s)) // max(known, 1)
        outs.append(tgt)
    c.set_out(node, 0, _reshape_to(c, node, x, *outs), _ident(len(outs[0])))


@_handles("Flatten")
def _flatten(c, node):
    x = c.as_data(c.inp(node, 0))
    axis = int(c.attrs(node).get("axis", 1))
    axis = axis + x.rank if axis < 0 else axis
    s1, s2 = c.shape_pair(node.input[0], x)
    outs = [[int(np.prod(s[:axis])), int(np.prod(s[axis:]))] for s in (s1, s2)]
    c.set_out(node, 0, _reshape_to(c, node, x, *outs), (0, 1))


@_handles("Transpose")
def _transpose(c, node):
    x = c.as_data(c.inp(node, 0))
    p = c.attrs(node).get("perm") or list(reversed(range(x.rank)))
    inv = [0] * len(p)
    for j, a in enumerate(p):
        inv[a] = j
    out = _Data(x.t, tuple(inv[a] for a in x.perm))
    s = c.shapes.get(node.output[0])
    if s:
        out.s1, out.s2 = s
    out.views = {}
    for perm, t in x.views.items():
        out.views[tuple(inv[a] for a in perm)] = t
    c._check(node, node.output[0], out)
    c.values[node.output[0]] = out


def _axes_input(c, node, k, attr="axes"):
    at = c.attrs(node)
    if attr in at:
        return list(at[attr])
    v = c.inp(node, k)
    return None if v is None else c.const_value(v, f"{node.op_type} axes").reshape(-1).tolist()


@_handles("Squeeze")
def _squeeze(c, node):
    x = c.as_data(c.inp(node, 0))
    axes = _axes_input(c, node, 1)
    s1 = c.shape_pair(node.input[0], x)[0]
    if axes is None:
        axes = [i for i, d in enumerate(s1) if d == 1]
    axes = sorted({a + x.rank if a < 0 else a for a in axes})
    if not axes:
        c.values[node.output[0]] = x
        return
    actual = tuple(x.perm.index(a) for a in axes)
    c.set_out(node, 0, c.ops.squeeze(x.t, axis=actual), _squeeze_perm(x.perm, axes))


@_handles("Unsqueeze")
def _unsqueeze(c, node):
    x = c.as_data(c.inp(node, 0))
    axes = _axes_input(c, node, 1)
    out_rank = x.rank + len(axes)
    axes = sorted({a + out_rank if a < 0 else a for a in axes})
    keep = [i for i in range(out_rank) if i not in axes]
    t = x.t
    if x.perm == _ident(x.rank):
        for a in axes:
            t = c.ops.expand_dims(t, a)
        c.set_out(node, 0, t, _ident(out_rank))
        return
    for _ in axes:
        t = c.ops.expand_dims(t, -1)
    c.set_out(node, 0, t, tuple(keep[p] for p in x.perm) + tuple(axes))


def _data_or_array(c, v, perm):
    if isinstance(v, _Data):
        return c.view(v, perm)
    arr = c.const_value(v, "constant operand")
    return c.const_arg(np.ascontiguousarray(np.transpose(arr, perm)))


@_handles("Concat")
def _concat(c, node):
    axis = int(c.attrs(node)["axis"])
    vals = [c.inp(node, k) for k in range(len(node.input))]
    vals = [c.as_data(v) if isinstance(v, _Const) and v.batch_dep else v for v in vals]
    vals = [v for v in vals if v is not None and not (isinstance(v, _Const) and v.v1.size == 0)]
    datas = [v for v in vals if isinstance(v, _Data)]
    rank = datas[0].rank
    axis = axis + rank if axis < 0 else axis
    perm = next((d.perm for d in datas if d.perm != _ident(rank)), _ident(rank))
    args = [_data_or_array(c, v, perm) for v in vals]
    out = args[0] if len(args) == 1 else c.ops.concatenate(args, axis=perm.index(axis))
    c.set_out(node, 0, out, perm)


@_handles("Split")
def _split(c, node):
    x = c.as_data(c.inp(node, 0))
    at = c.attrs(node)
    axis = int(at.get("axis", 0))
    axis = axis + x.rank if axis < 0 else axis
    dim = c.shape_pair(node.input[0], x)[0][axis]
    sizes = at.get("split")
    if sizes is None and len(node.input) > 1 and node.input[1]:
        sizes = c.const_value(c.inp(node, 1), "Split sizes").reshape(-1).tolist()
    nout = len(node.output)
    if sizes is None:
        num = int(at.get("num_outputs", nout))
        each = -(-dim // num)
        sizes = [min(each, dim - k * each) for k in range(num)]
    a = x.perm.index(axis)
    start = 0
    for k, size in enumerate(sizes):
        idx = [slice(None)] * x.rank
        idx[a] = slice(start, start + int(size))
        start += int(size)
        if k < nout and node.output[k]:
            c.set_out(node, k, x.t[tuple(idx)], x.perm)


_INT_MAX = 2 ** 62


@_handles("Slice")
def _slice(c, node):
    x = c.as_data(c.inp(node, 0))
    r = x.rank
    if c.opset < 10:
        at = c.attrs(node)
        starts, ends = list(at["starts"]), list(at["ends"])
        axes = list(at.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = c.const_value(c.inp(node, 1), "Slice starts").reshape(-1).tolist()
        ends = c.const_value(c.inp(node, 2), "Slice ends").reshape(-1).tolist()
        av, sv = c.inp(node, 3), c.inp(node, 4)
        axes = list(range(len(starts))) if av is None else c.const_value(av, "Slice axes").reshape(-1).tolist()
        steps = [1] * len(starts) if sv is None else c.const_value(sv, "Slice steps").reshape(-1).tolist()
    s1, s2 = c.shape_pair(node.input[0], x)
    idx = [slice(None)] * r
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = ax + r if ax < 0 else ax
        d1, d2 = s1[ax], s2[ax]
        if d1 != d2:
            if st == 0 and en >= _INT_MAX // 2 and sp == 1:
                continue
            raise ConversionError(f"Slice along the batch axis (node '{node.name}') is not supported")
        a0, a1, a2 = slice(st, en, sp).indices(d1)
        if a2 < 0 and a1 < 0:
            a1 = None
        if a0 == 0 and a2 == 1 and a1 == d1:
            continue
        idx[x.perm.index(ax)] = slice(a0, a1, a2)
    t = x.t if all(s == slice(None) for s in idx) else x.t[tuple(idx)]
    c.set_out(node, 0, t, x.perm)


@_handles("Gather")
def _gather(c, node):
    data, ind = c.inp(node, 0), c.inp(node, 1)
    axis = int(c.attrs(node).get("axis", 0))
    ops = c.ops
    if isinstance(data, _Const):
        table = c.const_value(data, "Gather table")
        idx = c.as_data(ind)
        if axis == 0 and table.ndim == 2 and table.dtype.kind == "f":
            layer = c.layers.Embedding(table.shape[0], table.shape[1], name=c.layer_name(node),
                                       embeddings_initializer="zeros")
            out = layer(c.onnx_view(idx))
            layer.set_weights([table.astype(np.float32)])
            c.set_out(node, 0, out, _ident(idx.rank + 1))
            return
        out = ops.take(c.const_arg(table), c.onnx_view(idx), axis=axis)
        c.set_out(node, 0, out, _ident(len(out.shape)))
        return
    x = c.as_data(data)
    axis = axis + x.rank if axis < 0 else axis
    dim = c.shape_pair(node.input[0], x)[0][axis]
    a = x.perm.index(axis)
    if isinstance(ind, _Const) and ind.batch_dep:
        _gather_batched(c, node, x, ind, axis)
        return
    if isinstance(ind, _Const) and not ind.batch_dep:
        idx = ind.v1.astype(np.int64)
        idx = np.where(idx < 0, idx + dim, idx)
        if idx.ndim == 0:
            sel = [slice(None)] * x.rank
            sel[a] = int(idx)
            c.set_out(node, 0, x.t[tuple(sel)], _squeeze_perm(x.perm, [axis]))
            return
        if idx.ndim == 1:
            if idx.size > 1 and np.all(np.diff(idx) == 1):
                sel = [slice(None)] * x.rank
                sel[a] = slice(int(idx[0]), int(idx[-1]) + 1)
                c.set_out(node, 0, x.t[tuple(sel)], x.perm)
            else:
                c.set_out(node, 0, ops.take(x.t, c.const_arg(idx), axis=a), x.perm)
            return
        t = ops.take(c.onnx_view(x), c.const_arg(idx), axis=axis)
        c.set_out(node, 0, t, _ident(len(t.shape)))
        return
    idx = c.onnx_view(c.as_data(ind))
    idx = ops.where(ops.less(idx, 0), ops.add(idx, dim), idx)
    t = ops.take(c.onnx_view(x), idx, axis=axis)
    c.set_out(node, 0, t, _ident(len(t.shape)))


@_handles("GatherND")
def _gather_nd(c, node):
    x, ind = c.inp(node, 0), c.inp(node, 1)
    if int(c.attrs(node).get("batch_dims", 0)) != 0 or not isinstance(x, _Data) \
            or not isinstance(ind, _Const) or ind.batch_dep:
        raise ConversionError(f"GatherND with batch_dims or input-dependent indices (node "
                              f"'{node.name}') is not supported")
    idx = ind.v1.astype(np.int64)
    k = idx.shape[-1]
    s1, s2 = c.shape_pair(node.input[0], x)
    if tuple(s1[:k]) != tuple(s2[:k]):
        raise ConversionError(f"GatherND over the batch axis (node '{node.name}') is not supported")
    dims = np.array(s1[:k], dtype=np.int64)
    idx = np.where(idx < 0, idx + dims, idx)
    ops = c.ops
    if k == 1 and idx.ndim == 2:
        c.set_out(node, 0, ops.take(x.t, c.const_arg(idx[:, 0]), axis=x.perm.index(0)), x.perm)
        return
    flat = np.ravel_multi_index(tuple(np.moveaxis(idx, -1, 0)), tuple(dims))
    t = c.onnx_view(x)
    if k > 1:
        rest = [(-1 if a != b else a) for a, b in zip(s1[k:], s2[k:])]
        t = ops.reshape(t, [int(np.prod(dims))] + rest)
    out = ops.take(t, c.const_arg(flat), axis=0)
    c.set_out(node, 0, out, _ident(len(out.shape)))


@_handles("GatherElements")
def _gather_elements(c, node):
    x = c.as_data(c.inp(node, 0))
    ind = c.inp(node, 1)
    axis = int(c.attrs(node).get("axis", 0))
    axis = axis + x.rank if axis < 0 else axis
    dim = c.shape_pair(node.input[0], x)[0][axis]
    if isinstance(ind, _Const) and not ind.batch_dep:
        idx = ind.v1.astype(np.int64)
        idx = c.const_arg(np.where(idx < 0, idx + dim, idx))
    else:
        idx = c.onnx_view(c.as_data(ind))
        idx = c.ops.where(c.ops.less(idx, 0), c.ops.add(idx, dim), idx)
    c.set_out(node, 0, c.ops.take_along_axis(c.onnx_view(x), idx, axis=axis), _ident(x.rank))


@_handles("Trilu")
def _trilu(c, node):
    x = c.as_data(c.inp(node, 0))
    kv = c.inp(node, 1)
    k = 0 if kv is None else int(c.const_value(kv, "Trilu k").reshape(-1)[0])
    fn = c.ops.triu if c.attrs(node).get("upper", 1) else c.ops.tril
    c.set_out(node, 0, fn(c.onnx_view(x), k=k), _ident(x.rank))


def _gather_batched(c, node, x, ind, axis):
    """Gather along a flattened batch axis with batch-dependent indices (torch as_strided/view).

    Supported when index[b, ...] == b * S + f[...] with f independent of the batch and the
    gathered axis of length batch * S: then it is a per-sample take (or just a reshape).
    """
    s1, s2 = c.shape_pair(node.input[0], x)
    i1, i2 = ind.v1.astype(np.int64), ind.v2.astype(np.int64)
    i1 = np.where(i1 < 0, i1 + s1[axis], i1)
    i2 = np.where(i2 < 0, i2 + s2[axis], i2)
    unsupported = ConversionError(f"Gather with batch-dependent indices (node '{node.name}') is "
                                  "not supported")
    if axis != 0 or i1.ndim < 1 or i1.shape[0] != _B1 or i2.shape[0] != _B2 \
            or i1.shape[1:] != i2.shape[1:] or s1[0] % _B1 or s2[0] != s1[0] // _B1 * _B2:
        raise unsupported
    step = s1[0] // _B1
    f = i1[0] - 0
    for idx, batch in ((i1, _B1), (i2, _B2)):
        offsets = (np.arange(batch) * step).reshape((batch,) + (1,) * (idx.ndim - 1))
        if not np.array_equal(idx, offsets + f[None]):
            raise unsupported
    rest = tuple(s1[1:])
    t = c.ops.reshape(c.onnx_view(x), (-1, step) + rest)
    if f.size == step and np.array_equal(f.reshape(-1), np.arange(step)):
        out = c.ops.reshape(t, (-1,) + f.shape + rest)
    else:
        out = c.ops.take(t, c.const_arg(f), axis=1)
    c.set_out(node, 0, out, _ident(len(out.shape)))


@_handles("Expand")
def _expand(c, node):
    x = c.as_data(c.inp(node, 0))
    shp = c.inp(node, 1)
    if not isinstance(shp, _Const):
        raise ConversionError(f"Expand to a shape computed from input values (node '{node.name}') "
                              "is not supported")
    s1, s2 = c.shape_pair(node.input[0], x)
    o1 = np.broadcast_shapes(tuple(s1), tuple(int(v) for v in shp.v1.reshape(-1)))
    o2 = np.broadcast_shapes(tuple(s2), tuple(int(v) for v in shp.v2.reshape(-1)))
    r = len(o1)
    t = c.onnx_view(x) if x.rank != r else x.t
    perm = x.perm if x.rank == r else _ident(r)
    src1 = (1,) * (r - x.rank) + tuple(s1)
    src2 = (1,) * (r - x.rank) + tuple(s2)
    for _ in range(r - x.rank):
        t = c.ops.expand_dims(t, 0)
    reps = [1] * r
    batch_axes = []
    for i in range(r):
        if o1[i] == src1[i] and o2[i] == src2[i]:
            continue
        if o1[i] == o2[i]:
            reps[perm.index(i)] = o1[i] // src1[i]
        else:
            batch_axes.append(i)
    if any(v != 1 for v in reps):
        t = c.ops.tile(t, reps)
    if batch_axes:
        if len(batch_axes) != 1 or o1[batch_axes[0]] != _B1:
            raise ConversionError(f"Expand over several batch-dependent axes (node '{node.name}') "
                                  "is not supported")
        a = perm.index(batch_axes[0])
        zeros = c.ops.reshape(c.batch_zeros(), [-1 if i == a else 1 for i in range(r)])
        dtype = str(t.dtype)
        if dtype == "bool":
            t = c.ops.cast(c.ops.add(c.ops.cast(t, "float32"), zeros), "bool")
        else:
            t = c.ops.add(t, zeros if dtype == "float32" else c.ops.cast(zeros, dtype))
    c.set_out(node, 0, t, perm)


@_handles("Tile")
def _tile(c, node):
    x = c.as_data(c.inp(node, 0))
    reps = c.const_value(c.inp(node, 1), "Tile repeats").reshape(-1).tolist()
    c.set_out(node, 0, c.ops.tile(x.t, [int(reps[p]) for p in x.perm]), x.perm)


@_handles("Pad")
def _pad(c, node):
    x = c.as_data(c.inp(node, 0))
    at = c.attrs(node)
    r = x.rank
    mode = at.get("mode", "constant")
    if c.opset < 11:
        pads = list(at["pads"])
        value = float(at.get("value", 0.0))
        axes = list(range(r))
    else:
        pads = c.const_value(c.inp(node, 1), "Pad pads").reshape(-1).tolist()
        v = c.inp(node, 2)
        value = 0.0 if v is None else c.const_value(v, "Pad value").reshape(-1)[0].item()
        av = c.inp(node, 3)
        axes = list(range(r)) if av is None else [a + r if a < 0 else a for a in
                                                 c.const_value(av, "Pad axes").reshape(-1).tolist()]
    n = len(axes)
    width = [[0, 0] for _ in range(r)]
    for k, ax in enumerate(axes):
        width[x.perm.index(ax)] = [int(pads[k]), int(pads[n + k])]
    if any(p < 0 for w in width for p in w):
        raise ConversionError(f"Pad with negative pads (node '{node.name}') is not supported")
    if mode == "constant":
        t = c.ops.pad(x.t, width, mode="constant", constant_values=value)
    elif mode == "reflect":
        t = c.ops.pad(x.t, width, mode="reflect")
    else:
        raise ConversionError(f"Pad mode '{mode}' (node '{node.name}') is not supported")
    c.set_out(node, 0, t, x.perm)


@_handles("Resize", "Upsample")
def _resize(c, node):
    x = c.as_data(c.inp(node, 0))
    at = c.attrs(node)
    r = x.rank
    s1 = c.shape_pair(node.input[0], x)[0]
    o = c.shapes.get(node.output[0])
    if o is None:
        raise ConversionError(f"{node.op_type} with an unknown output size (node '{node.name}') "
                              "is not supported")
    o1 = o[0]
    if r != 4 or tuple(o1[:2]) != tuple(s1[:2]):
        raise ConversionError(f"{node.op_type} other than spatial 2D (node '{node.name}') is not "
                              "supported")
    mode = at.get("mode", "nearest")
    coord = at.get("coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
    h, w = o1[2], o1[3]
    t = c.view(x, _cl(4))
    if mode == "nearest":
        sh, sw = h // s1[2], w // s1[3]
        nearest = at.get("nearest_mode", "round_prefer_floor")
        ok_int = h == sh * s1[2] and w == sw * s1[3] and (
            coord == "asymmetric" and nearest == "floor" or
            coord in ("half_pixel", "pytorch_half_pixel") and nearest in ("round_prefer_floor", "floor"))
        if not ok_int:
            raise ConversionError(f"Resize nearest with non-integer scale or mode {coord}/{nearest} "
                                  f"(node '{node.name}') is not supported")
        out = c.layers.UpSampling2D((sh, sw), interpolation="nearest", data_format=_CL,
                                        name=c.layer_name(node))(t)
    elif mode in ("linear", "bilinear"):
        if coord not in ("half_pixel", "pytorch_half_pixel") or at.get("antialias", 0):
            raise ConversionError(f"Resize linear with coordinate mode '{coord}' (node "
                                  f"'{node.name}') is not supported")
        out = c.layers.Resizing(h, w, interpolation="bilinear", data_format=_CL,
                                     name=c.layer_name(node))(t)
    else:
        raise ConversionError(f"Resize mode '{mode}' (node '{node.name}') is not supported")
    c.set_out(node, 0, out, _cl(4))


@_handles("DepthToSpace", "SpaceToDepth")
def _depth_space(c, node):
    x = c.as_data(c.inp(node, 0))
    at = c.attrs(node)
    bs = int(at["blocksize"])
    s1 = c.shape_pair(node.input[0], x)[0]
    _, ch, h, w = s1
    t = c.onnx_view(x)
    ops = c.ops
    if node.op_type == "DepthToSpace":
        oc = ch // (bs * bs)
        if at.get("mode", "DCR") == "DCR":
            t = ops.reshape(t, (-1, bs, bs, oc, h, w))
            t = ops.transpose(t, (0, 3, 4, 1, 5, 2))
        else:
            t = ops.reshape(t, (-1, oc, bs, bs, h, w))
            t = ops.transpose(t, (0, 1, 4, 2, 5, 3))
        t = ops.reshape(t, (-1, oc, h * bs, w * bs))
    else:
        t = ops.reshape(t, (-1, ch, h // bs, bs, w // bs, bs))
        t = ops.transpose(t, (0, 3, 5, 1, 2, 4))
        t = ops.reshape(t, (-1, ch * bs * bs, h // bs, w // bs))
    c.set_out(node, 0, t, _ident(4))


@_handles("CumSum")
def _cumsum(c, node):
    x = c.as_data(c.inp(node, 0))
    at = c.attrs(node)
    axis = int(c.const_value(c.inp(node, 1), "CumSum axis").reshape(-1)[0])
    axis = axis + x.rank if axis < 0 else axis
    a = x.perm.index(axis)
    t = x.t
    if at.get("reverse", 0):
        t = c.ops.flip(t, axis=a)
    out = c.ops.cumsum(t, axis=a)
    if at.get("exclusive", 0):
        out = c.ops.subtract(out, t)
    if at.get("reverse", 0):
        out = c.ops.flip(out, axis=a)
    c.set_out(node, 0, out, x.perm)


# ---- recurrent layers
def _rnn_common(c, node, gates):
    at = c.attrs(node)
    direction = at.get("direction", "forward")
    layout = int(at.get("layout", 0))
    hidden = int(at["hidden_size"])
    if at.get("clip") is not None or at.get("input_forget", 0):
        raise ConversionError(f"{node.op_type} with clip/input_forget (node '{node.name}') is not "
                              "supported")
    if len(node.input) > 4 and node.input[4]:
        raise ConversionError(f"{node.op_type} with sequence_lens (node '{node.name}') is not "
                              "supported (all sequences must have full length)")
    x = c.as_data(c.inp(node, 0))
    t = c.view(x, (1, 0, 2) if layout == 0 else (0, 1, 2))  # -> (batch, time, features)
    w = c.const_value(c.inp(node, 1), f"{node.op_type} W").astype(np.float32)
    rw = c.const_value(c.inp(node, 2), f"{node.op_type} R").astype(np.float32)
    bv = c.inp(node, 3)
    bias = (np.zeros((w.shape[0], 2 * gates * hidden), np.float32) if bv is None else
            c.const_value(bv, f"{node.op_type} B").astype(np.float32))
    dirs = 2 if direction == "bidirectional" else 1
    return at, direction, layout, hidden, t, w, rw, bias, dirs


def _initial_states(c, node, indices, dirs, layout):
    """Per direction: list of initial-state tensors (batch, hidden) or None when all zero."""
    states = []
    for k in indices:
        v = c.inp(node, k)
        if v is None or (isinstance(v, _Const) and not np.any(v.v1) and not np.any(v.v2)):
            states.append(None)
            continue
        d = c.as_data(v)
        view = c.view(d, (0, 1, 2) if layout == 0 else (1, 0, 2))  # (dirs, batch, hidden)
        states.append([view[j] for j in range(dirs)])
    return states


def _rnn_outputs(c, node, seqs, finals, layout):
    ops = c.ops
    if node.output[0]:
        y = ops.stack(seqs, axis=2) if len(seqs) > 1 else ops.expand_dims(seqs[0], 2)
        # actual (batch, time, dirs, hidden)
        c.set_out(node, 0, y, (2, 0, 1, 3) if layout == 0 else (0, 1, 2, 3))
    for k, parts in enumerate(finals, start=1):
        if k < len(node.output) and node.output[k]:
            s = ops.stack(parts, axis=1) if len(parts) > 1 else ops.expand_dims(parts[0], 1)
            c.set_out(node, k, s, (1, 0, 2) if layout == 0 else (0, 1, 2))


def _check_activations(node, at, expected):
    acts = [a.decode() if isinstance(a, bytes) else a for a in at.get("activations", [])]
    if acts and [a.lower() for a in acts] != [e.lower() for e in expected[:len(acts)]]:
        raise ConversionError(f"{node.op_type} with activations {acts} (node '{node.name}') is "
                              "not supported")


@_handles("LSTM")
def _lstm(c, node):
    at, direction, layout, hidden, t, w, rw, bias, dirs = _rnn_common(c, node, 4)
    _check_activations(node, at, ["Sigmoid", "Tanh", "Tanh"] * 2)
    if len(node.input) > 7 and node.input[7]:
        p = c.inp(node, 7)
        if not (isinstance(p, _Const) and not np.any(p.v1)):
            raise ConversionError(f"LSTM with peepholes (node '{node.name}') is not supported")
    h0, c0 = _initial_states(c, node, (5, 6), dirs, layout)
    order = np.concatenate([np.arange(g * hidden, (g + 1) * hidden) for g in (0, 2, 3, 1)])  # iofc->ifco
    seqs, hs, cs = [], [], []
    for d in range(dirs):
        backwards = direction == "reverse" or d == 1
        layer = c.layers.LSTM(hidden, return_sequences=True, return_state=True,
                              go_backwards=backwards, name=c.layer_name(node, f"_d{d}"),
                              **_ZERO_INIT, recurrent_initializer="zeros")
        init = None
        if h0 is not None or c0 is not None:
            zeros_h = None
            if h0 is None or c0 is None:
                zeros_h = c.ops.zeros_like((h0 or c0)[d])
            init = [h0[d] if h0 is not None else zeros_h, c0[d] if c0 is not None else zeros_h]
        seq, h, cell = layer(t, initial_state=init) if init is not None else layer(t)
        kernel = w[d][order].T
        rec = rw[d][order].T
        b = (bias[d][:4 * hidden] + bias[d][4 * hidden:])[order]
        layer.set_weights([np.ascontiguousarray(kernel), np.ascontiguousarray(rec), b])
        if backwards:
            seq = c.ops.flip(seq, axis=1)
        seqs.append(seq)
        hs.append(h)
        cs.append(cell)
    _rnn_outputs(c, node, seqs, [hs, cs], layout)


@_handles("GRU")
def _gru(c, node):
    at, direction, layout, hidden, t, w, rw, bias, dirs = _rnn_common(c, node, 3)
    _check_activations(node, at, ["Sigmoid", "Tanh"] * 2)
    reset_after = bool(at.get("linear_before_reset", 0))
    (h0,) = _initial_states(c, node, (5,), dirs, layout)
    seqs, hs = [], []
    for d in range(dirs):
        backwards = direction == "reverse" or d == 1
        layer = c.layers.GRU(hidden, return_sequences=True, return_state=True,
                             go_backwards=backwards, reset_after=reset_after,
                             name=c.layer_name(node, f"_d{d}"), **_ZERO_INIT,
                             recurrent_initializer="zeros")
        seq, h = layer(t, initial_state=[h0[d]]) if h0 is not None else layer(t)
        wb, rb = bias[d][:3 * hidden], bias[d][3 * hidden:]
        b = np.stack([wb, rb]) if reset_after else wb + rb
        layer.set_weights([np.ascontiguousarray(w[d].T), np.ascontiguousarray(rw[d].T), b])
        if backwards:
            seq = c.ops.flip(seq, axis=1)
        seqs.append(seq)
        hs.append(h)
    _rnn_outputs(c, node, seqs, [hs], layout)


@_handles("RNN")
def _rnn(c, node):
    at, direction, layout, hidden, t, w, rw, bias, dirs = _rnn_common(c, node, 1)
    _check_activations(node, at, ["Tanh"] * 2)
    (h0,) = _initial_states(c, node, (5,), dirs, layout)
    seqs, hs = [], []
    for d in range(dirs):
        backwards = direction == "reverse" or d == 1
        layer = c.layers.SimpleRNN(hidden, return_sequences=True, return_state=True,
                                   go_backwards=backwards, name=c.layer_name(node, f"_d{d}"),
                              **_ZERO_INIT, recurrent_initializer="zeros")
        seq, h = layer(t, initial_state=[h0[d]]) if h0 is not None else layer(t)
        layer.set_weights([np.ascontiguousarray(w[d].T), np.ascontiguousarray(rw[d].T),
                           bias[d][:hidden] + bias[d][hidden:]])
        if backwards:
            seq = c.ops.flip(seq, axis=1)
        seqs.append(seq)
        hs.append(h)
    _rnn_outputs(c, node, seqs, [hs], layout)


# ----------------------------------------------------------------------------- constant folding
def _fe_unsqueeze(c, node, a):
    axes = c.attrs(node).get("axes")
    if axes is None:
        axes = a[1].reshape(-1).tolist()
    x = a[0]
    r = x.ndim + len(axes)
    for ax in sorted(v + r if v < 0 else v for v in axes):
        x = np.expand_dims(x, ax)
    return [x]


def _fe_squeeze(c, node, a):
    axes = c.attrs(node).get("axes")
    if axes is None and len(a) > 1 and a[1] is not None:
        axes = a[1].reshape(-1).tolist()
    x = a[0]
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(v + x.ndim if v < 0 else v for v in axes))]


def _fe_gather(c, node, a):
    x, idx = a[0], a[1]
    axis = int(c.attrs(node).get("axis", 0))
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return [np.take(x, idx, axis=axis)]


def _fe_slice(c, node, a):
    if c.opset < 10:
        return None
    x = a[0]
    starts, ends = a[1].reshape(-1).tolist(), a[2].reshape(-1).tolist()
    axes = list(range(len(starts))) if len(a) < 4 or a[3] is None else a[3].reshape(-1).tolist()
    steps = [1] * len(starts) if len(a) < 5 or a[4] is None else a[4].reshape(-1).tolist()
    idx = [slice(None)] * x.ndim
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = ax + x.ndim if ax < 0 else ax
        a0, a1, a2 = slice(st, en, sp).indices(x.shape[ax])
        idx[ax] = slice(a0, None if (a2 < 0 and a1 < 0) else a1, a2)
    return [x[tuple(idx)]]


def _fe_concat(c, node, a):
    return [np.concatenate([v for v in a if v is not None], axis=int(c.attrs(node)["axis"]))]


def _fe_cast(c, node, a):
    dtype = _ONNX_DTYPES.get(c.attrs(node)["to"])
    if dtype is None or dtype == "bfloat16" or a[0].dtype.kind not in "biuf":
        return None
    return [a[0].astype(dtype)]


def _fe_binary(fn):
    def inner(c, node, a):
        if any(v.dtype.kind not in "biuf" for v in a) or a[0].dtype != a[1].dtype:
            return None
        return [np.asarray(fn(a[0], a[1])).astype(a[0].dtype if fn is not np.equal else bool)]
    return inner


def _fe_reshape(c, node, a):
    x, shape = a[0], [int(v) for v in a[1].reshape(-1)]
    if not c.attrs(node).get("allowzero", 0):
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return [x.reshape(shape)]


def _fe_constant(c, node, a):
    attr = node.attribute[0]
    value = c.onnx.helper.get_attribute_value(attr)
    if attr.name == "value":
        return [c.onnx.numpy_helper.to_array(value)]
    kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
             "value_ints": np.int64}
    return [np.array(value, dtype=kinds[attr.name])] if attr.name in kinds else None


_FAST_EVAL = {
    "Constant": _fe_constant,
    "Unsqueeze": _fe_unsqueeze,
    "Squeeze": _fe_squeeze,
    "Gather": _fe_gather,
    "Slice": _fe_slice,
    "Concat": _fe_concat,
    "Cast": _fe_cast,
    "Add": _fe_binary(np.add),
    "Sub": _fe_binary(np.subtract),
    "Mul": _fe_binary(np.multiply),
    "Equal": _fe_binary(np.equal),
    "Reshape": _fe_reshape,
    "Transpose": lambda c, n, a: [np.transpose(a[0], c.attrs(n).get("perm"))],
    "Where": lambda c, n, a: [np.where(a[0], a[1], a[2])],
}


SUPPORTED_OPS = tuple(sorted(set(_HANDLERS) | {"Constant", "Shape", "Size"}))


# ----------------------------------------------------------------------------- public API
def convert_onnx_to_keras(model_proto, *, layout: str = "keep",
                          progress: Callable[[str], None] | None = None,
                          input_shapes: dict | None = None):
    """Convert an ONNX ModelProto into a Keras 3 functional model (see module docstring).

    `progress` is called with one-line status messages. `input_shapes` maps input names to shapes
    (None for the batch) to fix dynamic non-batch dimensions. Raises ConversionError (one line,
    naming the op) for anything it cannot map.
    """
    conv = _Converter(model_proto, layout, progress, input_shapes)
    return conv.convert()


def _check_keras3(model):
    keras = lazy.require("keras")
    if not isinstance(model, keras.Model):
        raise ConversionError(f"expected a Keras 3 model, got {type(model).__module__}."
                              f"{type(model).__name__}")


def save_keras(model, path) -> str:
    """Write `model` as a Keras v3 `.keras` archive (loads with plain keras.saving.load_model)."""
    _check_keras3(model)
    keras = lazy.require("keras")
    path = str(path)
    if not path.endswith(".keras"):
        raise ConversionError(f"a Keras v3 archive must end in .keras: {path}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    keras.saving.save_model(model, path)
    return path


def save_h5(model, path) -> str:
    """Write `model` as a legacy HDF5 `.h5` file that plain Keras 3 `load_model` reads.

    Keras 3's own `model.save("x.h5")` writes the legacy (Keras 2) layer config, and its H5
    loader then resolves every class among the *layers* only: the `keras.ops` nodes of a
    functional model fail with "Unknown layer: 'Transpose'". This writer keeps the H5 layout
    Keras reads (`model_config`, `keras_version`, `backend` attributes and a `model_weights`
    group written by Keras' own legacy weight writer) but stores the Keras 3 config, whose
    per-layer `module` key makes Keras 3's functional loader deserialise each layer and op with
    the same code as for `.keras` files (safe mode, no custom objects).
    """
    _check_keras3(model)
    keras = lazy.require("keras")
    h5py = lazy.require("h5py", "write .h5 files")
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.saving import serialization_lib

    path = str(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    config = serialization_lib.serialize_keras_object(model)
    text = json.dumps(config, default=_json_default)
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["keras_version"] = str(keras.__version__)
        f.attrs["backend"] = keras.backend.backend()
        f.attrs["model_config"] = text.encode("utf8")
        legacy_h5_format.save_weights_to_hdf5_group(f.create_group("model_weights"), model)
    return path


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "as_list"):
        return obj.as_list()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
