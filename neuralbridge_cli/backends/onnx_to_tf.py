"""ONNX -> TensorFlow through onnx2tf, saved without Keras.

Public interface::

    convert_onnx_to_tf(model_proto, *, layout="keep", workdir=None, progress=None) -> TFConverted
    save_saved_model(tf_module, path)          SavedModel with a `serving_default` signature
    save_tflite(tf_module, path)               float32 .tflite, dynamic batch
    run_tflite(path, inputs) -> list[np.ndarray]

How it works
------------
1. onnx2tf builds a tf_keras Functional model from the graph, in-process, with
   `disable_model_save=True` (it writes nothing: no SavedModel, no TFLite), no onnxsim
   subprocess (we run onnxsim in-process when a strategy wants it), stdout captured, C++ logs
   silenced, and its test-image download (`download_test_image_data`, an HTTP GET made when
   every input is a 3-channel NHWC image with a fixed batch <= 20) served from local seeded data.
2. The model is wrapped in `TFConverted`, a `tf.Module` whose `serve` is a `tf.function` with a
   fixed input signature (batch dimension `None`). The wrapper restores the ONNX layout of the
   outputs (onnx2tf may return 3D/4D/5D outputs channels-last) and the ONNX dtypes. onnx2tf keeps
   the weights as constants captured by the traced graph; they are lifted into tf.Variables
   (`model_variables`), so `variables` counts the parameters and a SavedModel stores them in
   its variables/ folder.
3. The result is checked against onnxruntime on seeded inputs (batch 2). That check also decides,
   per output, whether a channels-last output must be transposed back. If a strategy fails or its
   numbers differ (max abs error > 1e-3 x max |reference|), the next strategy is tried (see
   `_strategies`); when all fail, ConversionError names the ONNX node of the last failure.
4. `save_saved_model` saves a bare `tf.Module` holding the variables and the traced functions,
   never the Keras model: that skips Keras' layer-metadata serialisation (most of onnx2tf's own
   run time), and the SavedModel loads with plain TensorFlow.

Layouts
-------
``layout="keep"``: every input and output has exactly the ONNX shape and layout (NCHW stays NCHW).
``layout="nhwc"``: float inputs of rank 3/4/5 that feed convolution-like ops (images, NCW audio,
volumes) are taken channels-last (NWC/NHWC/NDHWC); other inputs and all outputs keep the ONNX
layout. Non-image inputs (token ids, [batch, seq, features]) are never transposed in either mode
(onnx2tf's `keep_shape_absolutely_input_names`).

Batch
-----
A dynamic ONNX batch stays dynamic (`None` in the signature). A graph with a fixed batch of 1,
or one that onnx2tf only converts with a fixed batch (vit_b_16 from the dynamo exporter,
convnext_tiny, bidirectional LSTMs), is converted at batch 1 and mapped over the batch with
`tf.map_fn`: the signature still has batch `None`, at the cost of a per-sample loop. A fixed
batch > 1 is kept as it is.

Side effects contained here: importing onnx2tf sets TF_USE_LEGACY_KERAS=1 (undone right after
the import, so tf.keras stays Keras 3), each conversion sets CUDA_VISIBLE_DEVICES=-1 and reseeds
`random` / `numpy.random` (all restored after the call).
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import lazy
from ..errors import ConversionError

__all__ = ["convert_onnx_to_tf", "save_saved_model", "save_tflite", "run_tflite", "TFConverted"]

# A conversion whose outputs differ from onnxruntime by more than this (max abs error relative to
# max |reference|) is treated as failed and the next strategy is tried.
ACCEPT_REL_ERROR = 1e-3
CHECK_BATCH = 2
CHECK_SEED = 0

# ONNX ops that make a float input of rank 3-5 an image-like (channels-first) tensor.
_SPATIAL_OPS = {
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "BatchNormalization",
    "InstanceNormalization", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth",
    "MaxUnpool", "RoiAlign", "GridSample", "DeformConv", "LRN",
}
# ops an image usually passes through before its first convolution (normalisation, casts...)
_PASSTHROUGH_OPS = {
    "Cast", "Identity", "Add", "Sub", "Mul", "Div", "Clip", "Relu", "Neg", "Abs", "Pad",
    "Sigmoid", "Tanh", "Sqrt", "Pow", "Max", "Min", "Floor", "Round", "Ceil", "Dropout",
}

# ONNX TensorProto element type -> numpy dtype
_ONNX_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
            7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
            13: np.uint64}


# --------------------------------------------------------------------------- graph facts
@dataclass
class _IOInfo:
    name: str               # ONNX name
    key: str                # sanitised name, valid as a TF op name and signature key
    dtype: Any              # numpy dtype of the ONNX tensor
    shape: list             # ints, or str (dim_param) / None for dynamic dims
    image: bool = False     # a channels-first image-like input

    @property
    def rank(self) -> int:
        return len(self.shape)


def _sanitize(name: str, taken: set) -> str:
    key = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "t"
    if not key[0].isalpha():
        key = "t_" + key
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


def _value_info(value, taken) -> _IOInfo:
    ttype = value.type.tensor_type
    dims = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return _IOInfo(value.name, _sanitize(value.name, taken),
                   np.dtype(_ONNX_NP.get(ttype.elem_type, np.float32)), dims)


def _graph_io(proto) -> tuple[list[_IOInfo], list[_IOInfo]]:
    inits = {t.name for t in proto.graph.initializer}
    taken: set = set()
    inputs = [_value_info(v, taken) for v in proto.graph.input if v.name not in inits]
    taken = set()
    outputs = [_value_info(v, taken) for v in proto.graph.output]
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for info in inputs:
        if info.rank in (3, 4, 5) and np.issubdtype(info.dtype, np.floating):
            info.image = _feeds_spatial_op(info.name, consumers)
    return inputs, outputs


def _feeds_spatial_op(name: str, consumers: dict, depth: int = 6) -> bool:
    """True when `name` reaches a convolution-like op through elementwise ops only."""
    frontier, seen = [name], set()
    for _ in range(depth):
        nxt = []
        for tensor in frontier:
            for node in consumers.get(tensor, ()):
                if node.op_type in _SPATIAL_OPS and node.input and node.input[0] == tensor:
                    return True
                if node.op_type in _PASSTHROUGH_OPS:
                    for out in node.output:
                        if out not in seen:
                            seen.add(out)
                            nxt.append(out)
        frontier = nxt
    return False


def _gather_vocab(proto, name: str) -> int | None:
    """Smallest table size of the Gather nodes that take `name` as indices (embedding lookups)."""
    sizes = {t.name: list(t.dims) for t in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = sizes.get(node.input[0])
            if dims and len(dims) > axis:
                found.append(int(dims[axis]))
    return min(found) if found else None


def _check_inputs(proto, inputs: list[_IOInfo], batch: int) -> list[np.ndarray]:
    """Seeded inputs in ONNX layout: batch `batch`, dynamic dims filled in, ids within vocab."""
    rng = np.random.default_rng(CHECK_SEED)
    params: dict[str, int] = {}
    arrays = []
    for info in inputs:
        shape = []
        for i, d in enumerate(info.shape):
            if isinstance(d, int):
                shape.append(d)
                continue
            if i == 0:
                value = batch
            elif isinstance(d, str) and d in params:
                value = params[d]
            else:
                value = 32 if info.rank >= 4 and i >= 2 else 8  # spatial dims / sequence
            if isinstance(d, str):
                params.setdefault(d, value)
            shape.append(value)
        dtype = info.dtype
        if np.issubdtype(dtype, np.floating):
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            arr = rng.random(shape) > 0.5
        elif "mask" in info.name.lower():
            arr = np.ones(shape, dtype)
        else:
            high = _gather_vocab(proto, info.name) or 10
            arr = rng.integers(0, max(1, high), size=shape).astype(dtype)
        arrays.append(arr)
    return arrays


def _rel_error(actual: np.ndarray, reference: np.ndarray) -> float:
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        return float("inf")
    if r.size == 0:
        return 0.0
    diff = float(np.max(np.abs(a - r)))
    scale = float(np.max(np.abs(r)))
    if not np.isfinite(diff):
        return float("inf")
    return diff / scale if scale > 0 else diff


def _ort_outputs(proto, arrays, inputs, workdir) -> list[np.ndarray] | None:
    """Reference outputs from onnxruntime, or None when onnxruntime cannot run the graph."""
    try:
        ort = lazy.require("onnxruntime")
    except Exception:
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        from .onnx_backend import byte_size, save_external

        if byte_size(proto) < 2_000_000_000:
            src = proto.SerializeToString()
        else:  # save_external works on a copy: onnx.save would strip the weights from proto
            src = os.path.join(workdir, "reference.onnx")
            save_external(proto, src)
        sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        return sess.run(None, {i.name: a for i, a in zip(inputs, arrays)})
    except Exception:
        return None


# --------------------------------------------------------------------------- the TF module
_TFCONVERTED = None


def _tfconverted_class():
    """TFConverted is a tf.Module subclass, built on first use so importing this file is cheap."""
    global _TFCONVERTED
    if _TFCONVERTED is not None:
        return _TFCONVERTED
    tf = lazy.tensorflow()

    class TFConverted(tf.Module):
        """A converted model: `serve` (tf.function, dynamic batch), callable as `m(x1, x2, ...)`.

        Attributes: input_names / output_names (ONNX names), input_keys / output_keys
        (sanitised names used in signatures), input_signature (tf.TensorSpec list),
        layout ("keep" or "nhwc"), input_layouts (per input: "onnx" or "nhwc"),
        strategy (the onnx2tf strategy that worked), max_rel_error (check against
        onnxruntime, None if it could not run), notes (reasons of strategies that failed).
        """

        def __init__(self, keras_model, inputs, outputs, output_perms, *, layout, map_batch,
                     strategy, name="neuralbridge_tf"):
            super().__init__(name=name)
            # The variables are tracked; the Keras model is only captured by the function closure
            # so it never enters the object graph of a SavedModel.
            self.model_variables = list(keras_model.variables)
            self.input_names = tuple(i.name for i in inputs)
            self.output_names = tuple(o.name for o in outputs)
            self.input_keys = tuple(i.key for i in inputs)
            self.output_keys = tuple(o.key for o in outputs)
            self.layout = layout
            self.input_layouts = tuple(
                "nhwc" if (layout == "nhwc" and i.image) else "onnx" for i in inputs)
            self.strategy = strategy
            self.max_rel_error = None
            self.notes = ()
            self.input_signature = [
                tf.TensorSpec(_tf_shape(i, layout, map_batch), tf.as_dtype(i.dtype), name=i.key)
                for i in inputs]
            forward = _make_forward(tf, keras_model, inputs, outputs, output_perms, map_batch)
            # kept (untracked: a plain function) to retrace at a fixed batch for TFLite
            self._forward = forward
            self.serve = tf.function(forward, input_signature=self.input_signature,
                                     autograph=False)
            # onnx2tf keeps nearly all weights as constants captured by the traced graph (and
            # creates a few Keras layers inside Lambda functions, whose variables
            # keras_model.variables misses). Lift the captured weights into tracked variables:
            # the SavedModel then stores them in variables/ like any TF model (no 2 GB graph
            # limit) and `variables` counts the parameters.
            concrete = self.serve.get_concrete_function()
            try:
                serve, variables = _lift_captures(tf, concrete, self.input_signature)
            except Exception:  # keep the captured constants; the graph still works
                serve, variables = None, list(concrete.variables)
            if serve is not None:
                self.serve = serve
            # Keras variables wrap a tf.Variable, which is what the traced graph captures:
            # compare the underlying ones, or each weight is saved twice
            known = {id(_tf_variable(v)) for v in self.model_variables}
            self.model_variables.extend(v for v in variables
                                        if id(_tf_variable(v)) not in known)

        def __call__(self, *args):
            if len(args) != len(self.input_signature):
                raise TypeError(f"expected {len(self.input_signature)} inputs "
                                f"({', '.join(self.input_names)}), got {len(args)}")
            tensors = [a if isinstance(a, tf.Tensor) and a.dtype == s.dtype
                       else tf.convert_to_tensor(np.asarray(a, dtype=s.dtype.as_numpy_dtype))
                       for a, s in zip(args, self.input_signature)]
            return self.serve(*tensors)

        def numpy_outputs(self, *args) -> list[np.ndarray]:
            """Run the model; always a list of numpy arrays in ONNX output order."""
            outs = self(*args)
            outs = outs if isinstance(outs, tuple) else (outs,)
            return [o.numpy() for o in outs]

    _TFCONVERTED = TFConverted
    return TFConverted


def _tf_variable(variable):
    """The tf.Variable behind a Keras 3 variable (itself for a plain tf.Variable)."""
    inner = getattr(variable, "_value", None)
    return inner if inner is not None and hasattr(inner, "handle") else variable


def _lift_captures(tf, concrete, signature):
    """Rebuild `concrete` with its captured float constants turned into tf.Variables.

    Returns (tf.function with `signature`, variables it reads). The traced graph is imported
    unchanged; only its capture placeholders are fed from variables instead of constants."""
    graph = concrete.graph
    captures = list(graph.captures)
    if not captures:
        return None, []
    by_handle = {id(v.handle): v for v in concrete.variables}
    feeds = []  # (placeholder name in the traced graph, kind, source)
    variables = []
    for external, internal in captures:
        if external.dtype == tf.resource:
            var = by_handle.get(id(external))
            if var is None:
                raise ValueError("a captured resource that is not a variable")
            feeds.append((internal.name, "handle", var))
            variables.append(var)
        elif external.dtype.is_floating and external.shape.rank:  # weights; scalars stay
            var = tf.Variable(external, trainable=False, name=f"w{len(variables)}")
            feeds.append((internal.name, "value", var))
            variables.append(var)
        else:
            feeds.append((internal.name, "constant", external.numpy()))
    fed = {name for name, _, _ in feeds}
    arg_names = [t.name for t in graph.inputs if t.name not in fed]
    if len(arg_names) != len(signature):
        raise ValueError("unexpected inputs of the traced graph")
    graph_def = graph.as_graph_def()
    out_names = [t.name for t in concrete.outputs]
    several = isinstance(concrete.structured_outputs, (tuple, list))

    def imported(*args):
        input_map = dict(zip(arg_names, args))
        for name, kind, src in feeds:
            input_map[name] = (tf.identity(src.handle) if kind == "handle" else
                               src.read_value() if kind == "value" else tf.constant(src))
        return tf.graph_util.import_graph_def(graph_def, input_map=input_map,
                                              return_elements=out_names, name="m")

    wrapped = tf.compat.v1.wrap_function(imported, signature)

    def serve(*args):
        outs = wrapped(*args)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        return tuple(outs) if several else outs[0]

    fn = tf.function(serve, input_signature=signature, autograph=False)
    fn.get_concrete_function()
    return fn, variables


def __getattr__(name):  # PEP 562: `from ...onnx_to_tf import TFConverted` builds it lazily
    if name == "TFConverted":
        return _tfconverted_class()
    raise AttributeError(name)


def _tf_shape(info: _IOInfo, layout: str, map_batch: bool) -> list:
    dims = [d if isinstance(d, int) else None for d in info.shape]
    if dims and (map_batch or not isinstance(info.shape[0], int)):
        dims[0] = None
    if layout == "nhwc" and info.image:
        dims = [dims[0]] + dims[2:] + [dims[1]]
    return dims


def _make_forward(tf, keras_model, inputs, outputs, output_perms, map_batch):
    keras_dtypes = [tf.as_dtype(t.dtype) for t in keras_model.inputs]
    order = _keras_input_order(keras_model, inputs)

    def call_keras(args):
        feed = [None] * len(args)
        for src, dst in enumerate(order):
            x = args[src]
            if x.dtype != keras_dtypes[dst]:
                x = tf.cast(x, keras_dtypes[dst])
            feed[dst] = x
        outs = keras_model(feed if len(feed) > 1 else feed[0], training=False)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        result = []
        for y, info, perm in zip(outs, outputs, output_perms):
            if perm is not None:
                y = tf.transpose(y, perm)
            want = tf.as_dtype(info.dtype)
            if y.dtype != want:
                y = tf.cast(y, want)
            result.append(y)
        return result

    if not map_batch:
        def forward(*args):
            outs = call_keras(list(args))
            return outs[0] if len(outs) == 1 else tuple(outs)
        return forward

    out_specs = [tf.TensorSpec(None, tf.as_dtype(o.dtype)) for o in outputs]

    def forward(*args):
        def one(sample):
            outs = call_keras([tf.expand_dims(s, 0) for s in sample])
            return [tf.squeeze(y, 0) for y in outs]
        outs = tf.map_fn(one, list(args), fn_output_signature=out_specs)
        return outs[0] if len(outs) == 1 else tuple(outs)
    return forward


def _keras_input_order(keras_model, inputs) -> list[int]:
    """Position in keras_model.inputs of each ONNX input (by name, else by order)."""
    names = [getattr(t, "name", "").split(":")[0] for t in keras_model.inputs]
    layer_names = list(getattr(keras_model, "input_names", []) or [])
    order = []
    for pos, info in enumerate(inputs):
        cands = {info.name, info.name.replace(":", "__")}
        idx = next((k for k, n in enumerate(layer_names) if n in cands), None)
        if idx is None:
            idx = next((k for k, n in enumerate(names) if n in cands), pos)
        order.append(idx)
    if sorted(order) != list(range(len(inputs))):
        order = list(range(len(inputs)))
    return order


# --------------------------------------------------------------------------- onnx2tf driving
@dataclass
class _Strategy:
    name: str
    simplify: bool = False
    fixed_batch: bool = False
    kwargs: dict = field(default_factory=dict)
    validation: bool = True  # onnx2tf's per-op checks against onnxruntime values


def _strategies(proto, inputs) -> list[_Strategy]:
    """Cheapest first; every result is checked against onnxruntime before it is accepted.

    onnx2tf's strict mode (its default) validates ambiguous layouts op by op, re-running the
    partial Keras model eagerly each time: about 100 s on convnext_tiny at batch 1 (minutes
    with a dynamic batch), where non-strict takes 3 s. Even non-strict, ops such as MatMul
    probe their layout against onnxruntime values of every intermediate tensor (50 of 87 s on
    vit_b_16); the fast strategies skip that data. Our own check against onnxruntime catches
    what they get wrong, so the slower modes are only later lines. onnxsim folds the shape
    arithmetic that onnx2tf mishandles with a dynamic batch; a batch fixed at 1 lets it fold
    the rest (the TF model is then mapped over the batch). Strict mode with a dynamic batch
    comes last: it never succeeded where batch 1 failed on our test models and costs most."""
    fast = {"disable_strict_mode": True}
    return [
        _Strategy("onnx2tf", kwargs=dict(fast), validation=False),
        _Strategy("onnxsim + onnx2tf", simplify=True, kwargs=dict(fast), validation=False),
        _Strategy("batch 1 + onnxsim + onnx2tf", simplify=True, fixed_batch=True,
                  kwargs=dict(fast), validation=False),
        _Strategy("onnxsim + onnx2tf with per-op probes", simplify=True, kwargs=dict(fast)),
        _Strategy("batch 1 + onnxsim + onnx2tf strict", simplify=True, fixed_batch=True),
        _Strategy("onnxsim + onnx2tf strict", simplify=True),
        _Strategy("batch 1 + onnxsim + onnx2tf strict, unrolled RNN", simplify=True,
                  fixed_batch=True, kwargs={"enable_rnn_unroll": True}),
    ]


def _import_onnx2tf():
    """Import onnx2tf without letting it switch tf.keras to legacy Keras for the whole process."""
    import sys
    if "onnx2tf" in sys.modules:
        return sys.modules["onnx2tf"]
    lazy.tensorflow()
    saved = os.environ.get("TF_USE_LEGACY_KERAS")
    rng_states = (random.getstate(), np.random.get_state())  # it seeds both on import
    try:
        return lazy.require("onnx2tf", "convert ONNX to TensorFlow")
    finally:
        random.setstate(rng_states[0])
        np.random.set_state(rng_states[1])
        if saved is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = saved


def _offline_test_images() -> np.ndarray:
    """Stand-in for onnx2tf's download_test_image_data (an HTTP GET of 20 sample images)."""
    rng = np.random.default_rng(CHECK_SEED)
    return rng.random((20, 128, 128, 3), dtype=np.float32)


def _skip_onnx_validation(*args, **kwargs):
    raise RuntimeError("per-op validation data skipped (fast strategy)")


@contextlib.contextmanager
def _onnx2tf_sandbox(onnx2tf_pkg, validation: bool = True):
    """Quiet, offline onnx2tf: stdout captured, test-image download replaced, sys.exit caught.

    validation=False makes onnx2tf skip its dummy onnxruntime run of every intermediate
    tensor (it then logs "shape estimation is skipped" and carries on): without those values
    its ops skip their per-op accuracy probes, which re-run the partial Keras model eagerly
    (50 of 87 s on vit_b_16 even with strict mode off)."""
    import importlib
    mod = importlib.import_module("onnx2tf.onnx2tf")
    common = importlib.import_module("onnx2tf.utils.common_functions")
    saved = (getattr(mod, "download_test_image_data", None),
             getattr(common, "download_test_image_data", None))
    saved_dummy = mod.dummy_onnx_inference
    if not validation:
        mod.dummy_onnx_inference = _skip_onnx_validation
    saved_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    buf = io.StringIO()
    rng_states = (random.getstate(), np.random.get_state())  # onnx2tf's op modules reseed both
    mod.download_test_image_data = _offline_test_images
    common.download_test_image_data = _offline_test_images
    undo = _patch_lstm_empty_state()
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    finally:
        mod.download_test_image_data, common.download_test_image_data = saved
        mod.dummy_onnx_inference = saved_dummy
        undo()
        random.setstate(rng_states[0])
        np.random.set_state(rng_states[1])
        if saved_env is None:  # onnx2tf sets CUDA_VISIBLE_DEVICES=-1 for the whole process
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved_env


def _patch_lstm_empty_state():
    """onnx2tf 1.28 passes `initial_state=[]` to its Keras LSTM when the ONNX LSTM has no
    initial_h/initial_c (optional inputs, dropped by onnxsim when they are zeros), and Keras
    rejects it. An empty list means "zeros", which is what None gives. Returns an undo."""
    try:
        import importlib
        lstm = importlib.import_module("onnx2tf.ops.LSTM")
        cls = lstm.CustomLSTM
    except Exception:
        return lambda: None
    original = cls.call

    def call(self, inputs, initial_state=None):
        if initial_state is not None and len(initial_state) == 0:
            initial_state = None
        return original(self, inputs, initial_state=initial_state)

    cls.call = call

    def undo():
        cls.call = original
    return undo


def _name_nodes(proto) -> dict:
    """Give every node a unique name valid as a TF scope (onnx2tf names TF ops and Keras layers
    after them; a leading '/' as in '/layer1/Conv' breaks SavedModel export). Returns
    {new name: original name} for error messages."""
    taken, original = set(), {}
    for i, node in enumerate(proto.graph.node):
        name = re.sub(r"[^A-Za-z0-9_.\\/>-]", "_", node.name or f"{node.op_type}_{i}")
        name = name.lstrip("/_.>-") or f"{node.op_type}_{i}"
        if not name[0].isalnum():
            name = "n" + name
        if name in taken:
            name = f"{name}_{i}"
        taken.add(name)
        original[name] = node.name or name
        node.name = name
    return original


def _defuse_gelu(proto) -> int:
    """Rewrite the exact-GELU pattern's `Div(x, sqrt(2)) -> Erf` as `Mul(x, 1/sqrt(2)) -> Erf`.

    onnx2tf 1.28 fuses Div(x, 1.4142135) -> Erf -> Add -> Mul -> Mul into tf.nn.gelu, and the
    fusion breaks when the pattern's final Mul takes its operands in the other order (torch's
    TorchScript export of nn.GELU in convnext_tiny): "Output tensors of a Functional model must
    be the output of a TensorFlow Layer ... Found: 1.4142135". With Mul the pattern is not
    matched and the ops convert one by one (same value within float32 rounding)."""
    from onnx import numpy_helper
    consts = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = a.t
    erf_inputs = {n.input[0] for n in proto.graph.node if n.op_type == "Erf" and n.input}
    changed = 0
    for k, node in enumerate(proto.graph.node):
        if node.op_type != "Div" or len(node.input) != 2 or node.output[0] not in erf_inputs:
            continue
        tensor = consts.get(node.input[1])
        if tensor is None:
            continue
        value = numpy_helper.to_array(tensor)
        if value.size != 1 or not np.issubdtype(value.dtype, np.floating) \
                or abs(float(value.reshape(-1)[0]) - 1.4142135) > 1e-5:
            continue
        name = f"{node.name or 'div'}_{k}_inv_sqrt2"
        proto.graph.initializer.append(numpy_helper.from_array(
            np.array(1.0 / value.astype(np.float64), dtype=value.dtype), name))
        node.op_type = "Mul"
        node.input[1] = name
        changed += 1
    if changed:  # drop the sqrt(2) constants nothing reads any more
        used = ({i for n in proto.graph.node for i in n.input}
                | {v.name for v in (*proto.graph.output, *proto.graph.input)})
        keep = [t for t in proto.graph.initializer if t.name in used]
        if len(keep) != len(proto.graph.initializer):
            del proto.graph.initializer[:]
            proto.graph.initializer.extend(keep)
    return changed


def _split_batch_shape(proto) -> int:
    """Rewrite `Shape(x, start=0, end=1)` (the batch size, as torch's dynamo exporter writes
    it) as `Gather(Shape(x), [0])`. onnx2tf 1.28 converts `end` like an axis of the
    channels-last tensor (end=1 becomes 3) and slices three dims instead of one."""
    lazy.onnx()
    from onnx import helper, numpy_helper
    nodes, changed, index_name = [], 0, None
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Shape" and attrs.get("end") == 1 and attrs.get("start", 0) == 0:
            if index_name is None:
                index_name = f"nb_batch_index_{len(proto.graph.initializer)}"
                proto.graph.initializer.append(
                    numpy_helper.from_array(np.array([0], np.int64), index_name))
            full = f"{node.output[0]}_nb_full_shape"
            nodes.append(helper.make_node("Shape", [node.input[0]], [full], name=node.name))
            nodes.append(helper.make_node("Gather", [full, index_name], [node.output[0]],
                                          name=f"{node.name}_batch", axis=0))
            changed += 1
        else:
            nodes.append(node)
    if changed:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return changed


def _resize_sizes_to_scales(proto) -> int:
    """Give Resize constant `scales` where its `sizes` are the input's own batch and channels
    and static spatial sizes (torch's `F.interpolate(size=...)` exports as
    Resize(x, sizes=Concat(Shape(x)[:2], [h, w]))).

    onnx2tf 1.28 turns such a computed `sizes` into tf.image.resize's size from a tensor of
    the wrong rank ("'size' must be a 1-D int32 Tensor") whenever the batch is dynamic (the
    segmentation head of lraspp, an FPN's top-down path). Where each spatial output size is
    exactly floor(input size x scale) in float32, the two forms give the same result (with
    `sizes`, ONNX resizes with scale = output / input)."""
    from onnx import numpy_helper

    from .onnx_shapes import dims_of, remove_dead, shape_values, value_types

    def plain(node):  # `axes` reorders what sizes mean; a kept aspect ratio needs sizes
        attrs = {a.name: a for a in node.attribute}
        policy = attrs["keep_aspect_ratio_policy"].s if "keep_aspect_ratio_policy" in attrs else b"stretch"
        return "axes" not in attrs and policy == b"stretch"

    resizes = [n for n in proto.graph.node if n.op_type == "Resize" and len(n.input) > 3
               and n.input[3] and plain(n)]
    if not resizes:
        return 0
    types = value_types(proto, True)
    values = shape_values(proto, types)
    shape_of = {}  # Shape node index -> the tensor it reads
    for index, node in enumerate(proto.graph.node):
        if node.op_type == "Shape":
            shape_of[index] = node.input[0]
    changed = 0
    for node in resizes:
        tensor_type = types.get(node.input[0])
        sizes = values.get(node.input[3])
        if tensor_type is None or sizes is None or not tensor_type.HasField("shape"):
            continue
        scales = _exact_scales(node.input[0], dims_of(tensor_type), sizes[1], shape_of)
        if scales is None:
            continue
        name = f"{node.name or 'resize'}_nb_scales_{changed}"
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(scales, np.float32), name))
        node.input[2] = name
        del node.input[3:]  # an empty `sizes` name is a KeyError in onnx2tf
        changed += 1
    if changed:  # onnx2tf converts the unused sizes arithmetic too, and can fail on it
        remove_dead(proto)
    return changed


def _exact_scales(source: str, dims: list, sizes: list, shape_of: dict) -> list | None:
    """Per-dim scales equivalent to `sizes` for a tensor `source` of shape `dims`, or None."""
    from .onnx_shapes import keeps_dim

    if len(sizes) != len(dims) or len(dims) < 3:
        return None
    scales = []
    for axis, (dim, size) in enumerate(zip(dims, sizes)):
        if keeps_dim(size, axis, source, dims, shape_of.get):
            scales.append(1.0)
        elif axis >= 2 and isinstance(size, int) and size > 0 and dim:
            scale = np.float32(size / dim)
            if int(np.floor(np.float32(dim) * scale)) != size:
                return None
            scales.append(float(scale))
        else:
            return None
    return scales


def _add_lstm_zero_states(proto, batch: int = 1) -> None:
    """Give bidirectional LSTMs without initial_h/initial_c explicit zero states (for graphs
    with a fixed batch): onnx2tf 1.28 indexes initial_h[1] for the backward direction even
    when it is absent."""
    onnx = lazy.onnx()
    from onnx import numpy_helper
    for k, node in enumerate(proto.graph.node):
        if node.op_type != "LSTM":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction != "bidirectional":
            continue
        ins = list(node.input) + [""] * (7 - len(node.input))
        if ins[5] and ins[6]:
            continue
        hidden = int(attrs["hidden_size"])
        shape = [batch, 2, hidden] if attrs.get("layout", 0) == 1 else [2, batch, hidden]
        for slot, what in ((5, "h"), (6, "c")):
            if not ins[slot]:
                name = f"{node.name or 'lstm'}_{k}_zero_initial_{what}"
                proto.graph.initializer.append(
                    numpy_helper.from_array(np.zeros(shape, np.float32), name))
                ins[slot] = name
        del node.input[:]
        node.input.extend(ins)


def _simplify(proto):
    onnxsim = lazy.require("onnxsim", "simplify the ONNX graph")
    model, ok = onnxsim.simplify(copy.deepcopy(proto))
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified graph")
    return model


def _fix_batch_one(proto, inputs):
    """Copy of `proto` with dim 0 of every input set to 1 (for the batch-mapped fallback)."""
    proto = copy.deepcopy(proto)
    names = {i.name for i in inputs}
    for value in proto.graph.input:
        if value.name in names and value.type.tensor_type.shape.dim:
            dim = value.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_value = 1
    del proto.graph.value_info[:]  # stale symbolic shapes; onnxsim infers them again
    return proto


def _run_onnx2tf(onnx2tf_pkg, proto, inputs, layout, outdir, kwargs, validation=True):
    keep_nchw = [i.name for i in inputs if i.image and layout == "keep"]
    keep_abs = [i.name for i in inputs if i.rank >= 1 and not i.image]
    args = dict(
        onnx_graph=proto,
        output_folder_path=outdir,
        disable_model_save=True,           # we save without Keras: no SavedModel/TFLite here
        not_use_onnxsim=True,              # onnxsim (if wanted) runs in-process before this
        not_use_opname_auto_generate=True, # nodes are named by _name_nodes
        non_verbose=True,
        verbosity="error",
        keep_ncw_or_nchw_or_ncdhw_input_names=keep_nchw or None,
        keep_shape_absolutely_input_names=keep_abs or None,
        # Erf has no TFLite builtin; onnx2tf's polynomial stand-in is within 1.5e-7 of erf.
        replace_to_pseudo_operators=["erf"],
        # Grouped convolutions as split + conv + concat: onnx2tf's default builds a Keras
        # Conv layer whose grouped kernel runs as an XLA-compiled tf.function, which tf2onnx
        # cannot convert back (SavedModel -> ONNX) and which TFLite handles less well.
        disable_group_convolution=True,
    )
    args.update(kwargs)
    with _onnx2tf_sandbox(onnx2tf_pkg, validation) as log, lazy.quiet_stderr():
        try:
            return onnx2tf_pkg.convert(**args), log.getvalue()
        except SystemExit as exc:  # onnx2tf calls sys.exit(1) on some errors
            raise RuntimeError(_last_error_line(log.getvalue())
                               or f"onnx2tf exited with status {exc.code}") from None
        except BaseException as exc:
            exc.onnx2tf_log = log.getvalue()
            raise


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _last_error_line(log: str) -> str:
    lines = [_ANSI.sub("", ln).strip() for ln in log.splitlines()]
    errs = [ln for ln in lines if ln.startswith("ERROR:") and "trace log" not in ln
            and "Read this" not in ln and "Alternatively" not in ln and "If the input OP" not in ln
            and "Also, for models" not in ln]
    return errs[-1][len("ERROR:"):].strip() if errs else ""


def _describe_failure(exc: BaseException, proto, original_names: dict | None = None) -> str:
    """One line: the ONNX node (name and op type) where onnx2tf stopped, and the error."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Keras wraps the real error: "Exception encountered when calling layer ..." + the cause
    useful = [ln for ln in lines if not ln.startswith(("Exception encountered", "Call arguments",
                                                       "•", "Graph execution error", "Detected at"))]
    msg = (useful or lines or [text])[0]
    if isinstance(exc, ModuleNotFoundError) and "onnx2tf.ops." in msg:
        msg = "onnx2tf has no converter for this op"
    msg = re.sub(r"\s+", " ", msg)[:300]
    op_name = getattr(exc, "onnx_op_name", None)
    if not op_name:
        log = getattr(exc, "onnx2tf_log", "")
        found = re.findall(r"onnx_op_name: (\S+)", _ANSI.sub("", log))
        op_name = found[-1] if found else None
    if op_name:
        op_type = next((n.op_type for n in proto.graph.node if n.name == op_name), None)
        op_name = (original_names or {}).get(op_name, op_name)
        where = f"{op_type} node '{op_name}'" if op_type else f"node '{op_name}'"
        return f"{where}: {type(exc).__name__}: {msg}"
    return f"{type(exc).__name__}: {msg}"


def _pick_output_perms(tf_outs, refs, outputs):
    """Per output: None or the perm that turns onnx2tf's layout back into the ONNX one."""
    perms, errors = [], []
    for y, ref, info in zip(tf_outs, refs, outputs):
        y = np.asarray(y)
        cands = [None]
        r = y.ndim
        if r in (3, 4, 5):
            cands.append([0, r - 1] + list(range(1, r - 1)))
        best, best_err = None, float("inf")
        for perm in cands:
            z = y if perm is None else np.transpose(y, perm)
            if ref is not None:
                err = _rel_error(z, ref)
            else:  # no reference: trust the declared ONNX shape
                err = 0.0 if _shape_fits(z.shape, info.shape) else float("inf")
            if err < best_err:
                best, best_err = perm, err
        perms.append(best)
        errors.append(best_err)
    return perms, errors


def _shape_fits(shape, declared) -> bool:
    if len(shape) != len(declared):
        return False
    return all(not isinstance(d, int) or d == s for s, d in zip(shape, declared))


def _to_tf_layout(arrays, inputs, layout):
    out = []
    for a, info in zip(arrays, inputs):
        if layout == "nhwc" and info.image:
            a = np.transpose(a, [0] + list(range(2, a.ndim)) + [1])
        out.append(a)
    return out


def convert_onnx_to_tf(model_proto, *, layout: str = "keep", workdir: str | None = None,
                       progress: Callable[[str], None] | None = None, static: bool = False):
    """Convert an onnx.ModelProto into a TFConverted (tf.Module with a `serve` tf.function).

    layout="keep": same input/output arrays as the ONNX model. layout="nhwc": image-like
    inputs are taken channels-last; outputs keep the ONNX layout. static=True (--static):
    a graph whose batch is fixed keeps it (by default batch 1 is mapped over any batch).
    Raises ConversionError naming the failing ONNX node when every strategy fails.
    """
    if layout not in ("keep", "nhwc"):
        raise ValueError(f"layout must be 'keep' or 'nhwc', not {layout!r}")
    say = progress or (lambda msg: None)
    inputs, outputs = _graph_io(model_proto)
    if not outputs:
        raise ConversionError("the ONNX graph has no outputs")

    tf = lazy.tensorflow()
    onnx2tf_pkg = _import_onnx2tf()
    cls = _tfconverted_class()

    own_dir = workdir is None
    workdir = tempfile.mkdtemp(prefix="nb-onnx2tf-") if own_dir else workdir
    os.makedirs(workdir, exist_ok=True)
    try:
        # A graph with batch fixed at 1 is converted at batch 1 and mapped over the batch.
        fixed_one = (not static and bool(inputs)
                     and all(i.rank >= 1 and i.shape[0] == 1 for i in inputs)
                     and all(o.rank >= 1 and o.shape[0] in (1, None) or
                             (o.rank >= 1 and isinstance(o.shape[0], str)) for o in outputs))
        check_arrays = _check_inputs(model_proto, inputs, CHECK_BATCH)
        say("running onnxruntime for reference outputs")
        if fixed_one:
            check_arrays = [np.concatenate([a, a[::-1] * 0.5 if a.dtype.kind == "f" else a], 0)
                            for a in check_arrays]
            parts = [_ort_outputs(model_proto, [a[k:k + 1] for a in check_arrays], inputs, workdir)
                     for k in range(2)]
            refs = None
            if all(p is not None for p in parts):
                refs = [np.concatenate([p[j] for p in parts], 0) for j in range(len(outputs))]
        else:
            refs = _ort_outputs(model_proto, check_arrays, inputs, workdir)
        if refs is None:
            say("onnxruntime could not run the graph: outputs checked by shape only")

        base = copy.deepcopy(model_proto)
        original_names = _name_nodes(base)
        _defuse_gelu(base)
        graphs: dict = {}  # (simplify, fixed_batch) -> prepared graph, built once

        def prepared(strat):
            key = (strat.simplify, strat.fixed_batch)
            if key not in graphs:
                graph = base
                if key[1]:  # batch 1 first, so onnxsim folds the shape arithmetic of the batch
                    graph = _fix_batch_one(graph, inputs)
                elif not fixed_one:
                    graph = copy.deepcopy(base)
                    _split_batch_shape(graph)
                    _resize_sizes_to_scales(graph)
                if key[0]:
                    try:
                        graph = _simplify(graph)
                    except Exception as exc:  # convert the graph as it is
                        say(f"onnxsim failed, graph left as is: {_one_line(exc)}")
                if key[1] or fixed_one:
                    if graph is base:
                        graph = copy.deepcopy(base)
                    _add_lstm_zero_states(graph)
                if graph is not base:
                    original_names.update((k, v) for k, v in _name_nodes(graph).items()
                                          if k not in original_names)
                graphs[key] = graph
            return graphs[key]

        failures: list[str] = []
        best = None
        dynamic_batch = bool(inputs) and all(i.rank >= 1 and not isinstance(i.shape[0], int)
                                             for i in inputs)
        for strat in _strategies(base, inputs):
            if strat.fixed_batch and not dynamic_batch:
                continue  # the graph's batch is fixed already
            t0 = time.perf_counter()
            say(f"converting with {strat.name}")
            graph = base
            try:
                graph = prepared(strat)
                map_batch = fixed_one or strat.fixed_batch
                outdir = os.path.join(workdir, "onnx2tf")
                keras_model, _ = _run_onnx2tf(onnx2tf_pkg, graph, inputs, layout, outdir,
                                              strat.kwargs, validation=strat.validation)
            except Exception as exc:
                reason = _describe_failure(exc, graph, original_names)
                failures.append(f"{strat.name}: {reason}")
                say(f"{strat.name} failed: {reason}")
                continue
            try:
                module = _wrap_and_check(cls, tf, keras_model, inputs, outputs, layout, map_batch,
                                         strat.name, check_arrays, refs)
            except Exception as exc:
                reason = ("the converted graph does not run: "
                          f"{_describe_failure(exc, graph, original_names)}")
                failures.append(f"{strat.name}: {reason}")
                say(f"{strat.name} failed: {reason}")
                continue
            err = module.max_rel_error
            say(f"{strat.name}: {time.perf_counter() - t0:.1f} s, max rel error "
                f"{'n/a' if err is None else f'{err:.2e}'}")
            if err is None or err <= ACCEPT_REL_ERROR:
                module.notes = tuple(failures)
                return module
            failures.append(f"{strat.name}: outputs differ from onnxruntime (max rel error {err:.2e})")
            if best is None or err < best.max_rel_error:
                best = module
        if best is not None:
            say(f"no strategy matched onnxruntime within {ACCEPT_REL_ERROR:g}; "
                f"keeping {best.strategy} (max rel error {best.max_rel_error:.2e})")
            best.notes = tuple(failures)
            return best
        last = failures[-1].split(": ", 1)[-1] if failures else "unknown error"
        first = failures[0].split(": ", 1)[-1] if failures else last
        hint = f"{len(failures)} onnx2tf strategies tried"
        if first != last:
            hint += f"; the first failed at {first}"
        raise ConversionError(f"onnx2tf could not convert the graph: {last}", hint=hint)
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            shutil.rmtree(os.path.join(workdir, "onnx2tf"), ignore_errors=True)


def _wrap_and_check(cls, tf, keras_model, inputs, outputs, layout, map_batch, strategy,
                    check_arrays, refs):
    tf_arrays = _to_tf_layout(check_arrays, inputs, layout)
    perms = _static_output_perms(keras_model, outputs)
    if perms is None:  # ambiguous from shapes: one eager run of the Keras model decides
        order = _keras_input_order(keras_model, inputs)
        feed = [None] * len(tf_arrays)
        for src, dst in enumerate(order):
            a = tf_arrays[src][:1] if map_batch else tf_arrays[src]
            feed[dst] = tf.convert_to_tensor(a, dtype=keras_model.inputs[dst].dtype)
        raw = keras_model(feed if len(feed) > 1 else feed[0], training=False)
        raw = [np.asarray(r) for r in (raw if isinstance(raw, (list, tuple)) else [raw])]
        ref_part = [r[:1] for r in refs] if (refs is not None and map_batch) else refs
        perms, _ = _pick_output_perms(raw, ref_part or [None] * len(outputs), outputs)
    module = cls(keras_model, inputs, outputs, perms, layout=layout, map_batch=map_batch,
                 strategy=strategy)
    got = module.numpy_outputs(*tf_arrays)
    if refs is not None:
        module.max_rel_error = float(max(_rel_error(g, r) for g, r in zip(got, refs)))
    else:
        bad = [o.name for g, o in zip(got, outputs) if not _shape_fits(g.shape, o.shape)]
        if bad:
            raise RuntimeError(f"output {bad[0]} has shape that does not fit the ONNX graph")
    return module


def _static_output_perms(keras_model, outputs):
    """Output perms decided from static shapes, or None when a shape leaves it ambiguous."""
    perms = []
    for t, info in zip(keras_model.outputs, outputs):
        shape = t.shape
        if shape.rank is None or shape.rank != info.rank:
            return None
        dims = [d if isinstance(d, int) else None for d in shape.as_list()]
        r = len(dims)
        cands = [None] + ([[0, r - 1] + list(range(1, r - 1))] if r in (3, 4, 5) else [])
        if any(d is None for d in dims[1:]) or any(not isinstance(b, int) for b in info.shape[1:]):
            return None  # dynamic dims: cannot tell from shapes
        fits = [perm for perm in cands
                if [dims[p] for p in (perm or range(r))][1:] == list(info.shape[1:])]
        if len(fits) != 1:
            return None
        perms.append(fits[0])
    return perms


# --------------------------------------------------------------------------- saving
def _export_module(tf, tf_module):
    """A bare tf.Module with the variables and the serving functions (no Keras objects)."""
    export = tf.Module(name="neuralbridge_export")
    export.model_variables = list(tf_module.model_variables)
    serve = tf_module.serve
    keys = list(tf_module.output_keys)

    def signature_fn(*args):
        outs = serve(*args)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        return {k: tf.identity(v, name=k) for k, v in zip(keys, outs)}

    export.serve = serve
    export.__call__ = serve
    export.signature = tf.function(signature_fn, input_signature=tf_module.input_signature,
                                   autograph=False)
    return export


def save_saved_model(tf_module, path: str) -> str:
    """Write a SavedModel folder: `serving_default` (outputs keyed by sanitised ONNX output
    names), plus `serve` and `__call__` (outputs as a tensor or a tuple, ONNX order).
    Loading it needs plain TensorFlow only."""
    tf = lazy.tensorflow()
    export = _export_module(tf, tf_module)
    try:
        tf.saved_model.save(
            export, str(path),
            signatures={"serving_default": export.signature.get_concrete_function()},
            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    except Exception as exc:
        raise ConversionError(f"could not write the SavedModel: {_one_line(exc)}") from exc
    return str(path)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return re.sub(r"\s+", " ", text.splitlines()[0])[:300]


def save_tflite(tf_module, path: str, configure=None) -> str:
    """Write a float32 .tflite of the model with a dynamic batch (run_tflite resizes it).

    Its `serving_default` signature takes the inputs and returns the outputs by name. TFLite
    lists signature names sorted, so when the ONNX order is not alphabetical the names get an
    index prefix (`i0_image`, `i1_vec`, `o0_fmap`...); run_tflite relies on that order.

    Tries, in order: the model as traced; the model traced at batch 1 and mapped over the
    batch (needed when a While loop holds per-batch state, e.g. onnx2tf's LSTM: TFLite lowers
    tensor lists only with static element shapes); then both with TF Select ops. A file with
    Select ops needs the Flex delegate: run_tflite then uses tf.lite.Interpreter of full
    TensorFlow; ai_edge_litert alone cannot run it.
    `configure(converter, concrete_function)` may set reduced-precision options
    (precision.py)."""
    tf = lazy.tensorflow()
    builtins = [tf.lite.OpsSet.TFLITE_BUILTINS]
    select = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    variants = [("dynamic batch", False)]
    if getattr(tf_module, "_forward", None) is not None:
        variants.append(("batch 1 mapped over the batch", True))
    errors = []
    for ops, ops_name in ((builtins, "builtins"), (select, "builtins + TF Select")):
        for variant, mapped in variants:
            try:
                concrete = _tflite_function(tf, tf_module, mapped)
                converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf_module)
                converter.target_spec.supported_ops = ops
                if configure is not None:
                    configure(converter, concrete)
                with lazy.quiet_stderr():
                    blob = converter.convert()
            except Exception as exc:
                errors.append(f"{variant}, {ops_name}: {_tflite_error(exc)}")
                continue
            with open(path, "wb") as fh:
                fh.write(blob)
            return str(path)
    raise ConversionError(f"TFLite conversion failed: {errors[0]}",
                          hint=f"{len(errors)} attempts; last: {errors[-1]}")


def _ordered_names(keys, prefix: str) -> list[str]:
    """`keys` if they sort in their own order, else the same names with an index prefix."""
    keys = list(keys)
    if sorted(keys) == keys:
        return keys
    width = len(str(len(keys) - 1))
    return [f"{prefix}{k:0{width}d}_{key}" for k, key in enumerate(keys)]


def _tflite_function(tf, tf_module, batch_mapped: bool):
    """The concrete function to convert: named inputs, outputs as a dict in sortable names."""
    in_names = _ordered_names([s.name for s in tf_module.input_signature], "i")
    out_names = _ordered_names(tf_module.output_keys, "o")
    signature = [tf.TensorSpec(s.shape, s.dtype, name=n)
                 for s, n in zip(tf_module.input_signature, in_names)]
    if batch_mapped:
        fixed = [tf.TensorSpec([1] + list(s.shape[1:]), s.dtype, name=s.name)
                 for s in tf_module.input_signature]
        inner = tf.function(tf_module._forward, input_signature=fixed, autograph=False)
        out_struct = inner.get_concrete_function().structured_outputs
        flat = list(out_struct) if isinstance(out_struct, (tuple, list)) else [out_struct]
        specs = [tf.TensorSpec(o.shape[1:], o.dtype) for o in flat]

        def run(*args):
            def one(sample):
                outs = inner(*[tf.expand_dims(x, 0) for x in sample])
                outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
                return [o[0] for o in outs]
            return tf.map_fn(one, list(args), fn_output_signature=specs)
    else:
        def run(*args):
            outs = tf_module.serve(*args)
            return list(outs) if isinstance(outs, (tuple, list)) else [outs]

    def named(*args):
        return {n: tf.identity(o, name=n) for n, o in zip(out_names, run(*args))}

    return tf.function(named, input_signature=signature, autograph=False).get_concrete_function()


def _tflite_error(exc: BaseException) -> str:
    """The converter's own error line (its message starts with MLIR locations)."""
    text = str(exc)
    found = re.findall(r"error: ([^\n]+)", text)
    found = [f for f in found if not f.startswith("failed while converting")]
    return re.sub(r"\s+", " ", found[0])[:300] if found else _one_line(exc)


def _tflite_interpreter(path: str, mode: str = "default"):
    """mode: "default" (ai_edge_litert, XNNPACK), "plain" (no default delegates), "flex"
    (tf.lite.Interpreter of full TensorFlow, which links the Flex delegate)."""
    if mode != "flex":
        try:
            from ai_edge_litert import interpreter as litert
        except ImportError:
            litert = None
        if litert is not None:
            if mode == "plain":
                return litert.Interpreter(
                    model_path=str(path),
                    experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            return litert.Interpreter(model_path=str(path))
    tf = lazy.tensorflow()
    if mode == "plain":
        return tf.lite.Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return tf.lite.Interpreter(model_path=str(path))


def run_tflite(path: str, inputs: list) -> list[np.ndarray]:
    """Run a .tflite on `inputs` (model input order), any batch; outputs in model order.

    With a signature (save_tflite writes one), inputs and outputs are matched to its names in
    sorted order, which save_tflite makes the ONNX order. Falls back to the interpreter without
    XNNPACK (whose reshape fails on some dynamic-batch graphs) and to the Flex-enabled
    interpreter of full TensorFlow for files with TF Select ops."""
    errors = []
    for mode in ("default", "plain", "flex"):
        try:
            # TFLite logs "Created TensorFlow Lite XNNPACK delegate" on fd 2: -v shows it
            with lazy.quiet_stderr():
                return _run_tflite(_tflite_interpreter(path, mode), inputs)
        except (RuntimeError, ValueError) as exc:
            errors.append(exc)
            text = str(exc)
            if mode == "default" and "xnnpack" in text.lower():  # LiteRT writes XNNPACK
                continue
            if "Flex" in text or "Select TensorFlow op" in text:
                continue
            raise
    raise errors[-1]


def _run_tflite(interp, inputs) -> list[np.ndarray]:
    inputs = [np.asarray(x) for x in inputs]
    signatures = interp.get_signature_list()
    if len(signatures) == 1:
        runner = interp.get_signature_runner(next(iter(signatures)))
        in_details = runner.get_input_details()
        names = sorted(in_details)
        if len(names) != len(inputs):
            raise ValueError(f"the TFLite model takes {len(names)} inputs, got {len(inputs)}")
        feed = {n: x.astype(in_details[n]["dtype"], copy=False) for n, x in zip(names, inputs)}
        outs = runner(**feed)
        return [np.array(outs[k]) for k in sorted(outs)]
    details = interp.get_input_details()
    if len(details) != len(inputs):
        raise ValueError(f"the TFLite model takes {len(details)} inputs, got {len(inputs)}")
    for d, x in zip(details, inputs):
        if list(d["shape"]) != list(x.shape):
            interp.resize_tensor_input(d["index"], list(x.shape), strict=False)
    interp.allocate_tensors()
    for d, x in zip(interp.get_input_details(), inputs):
        interp.set_tensor(d["index"], x.astype(d["dtype"], copy=False))
    interp.invoke()
    return [np.array(interp.get_tensor(d["index"])) for d in interp.get_output_details()]


def wrap_keras_model(keras_model, model_proto, *, layout: str = "keep", strategy: str = "keras3"):
    """Wrap a Keras 3 model that already takes and returns the ONNX arrays (onnx_to_keras
    builds such models) as a TFConverted, so it saves and runs like an onnx2tf result."""
    inputs, outputs = _graph_io(model_proto)
    cls = _tfconverted_class()
    return cls(keras_model, inputs, outputs, [None] * len(outputs), layout=layout,
               map_batch=False, strategy=strategy)
