"""TensorFlow / Keras backend: SavedModel, .keras, .h5 and .tflite; export through tf2onnx."""
from __future__ import annotations

import io
import math
import re
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

from .. import lazy
from ..errors import first_line, ConversionError, LoadError, UsageError
from ..model import ModelHandle
from ..specs import TensorSpec

DEFAULT_ONNX_OPSET = 17


def _tf():
    return lazy.tensorflow()


# ---------------------------------------------------------------- loading
def load(source: str, fmt, options) -> ModelHandle:
    path = Path(source)
    loaders = {"keras": _load_keras, "h5": _load_h5, "savedmodel": _load_saved_model,
               "tflite": _load_tflite}
    return loaders[fmt.name](path, options)


REEXPORT = "re-export it; the file may be truncated or corrupt"
UNSAFE_KERAS_HINT = ("if you trust its author, pass --unsafe-keras (Keras safe mode refuses "
                     "Lambda layers because loading them runs code stored in the file)")


def _load_keras(path: Path, options) -> ModelHandle:
    import zipfile

    from ..formats import ZIP_ERRORS

    keras = lazy.require("keras", "load Keras models")
    try:  # Keras says "File not found" for any unreadable archive: look first
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            archive.testzip()
    except ZIP_ERRORS as exc:
        raise LoadError(f"{path} is not a Keras archive (.keras is a zip file): "
                        f"{first_line(exc)}", hint=REEXPORT) from exc
    if "config.json" not in names:
        raise LoadError(f"{path} is not a Keras archive: it has no config.json",
                        hint="save the model with model.save('model.keras')")
    try:
        model = keras.saving.load_model(str(path), compile=False,
                                        safe_mode=not options.unsafe_keras)
    except Exception as exc:
        _raise_if_unsafe(path, exc)
        raise LoadError(f"cannot load Keras model {path}: {first_line(exc)}",
                        hint=REEXPORT) from exc
    return keras_handle(model, "keras", str(path))


def _raise_if_unsafe(path: Path, exc: Exception) -> None:
    text = str(exc)
    if "safe_mode" in text or "Lambda" in text:
        raise LoadError(f"{path} contains Python code (a Lambda layer); refusing to run it",
                        hint=UNSAFE_KERAS_HINT) from exc


def _load_h5(path: Path, options) -> ModelHandle:
    keras = lazy.require("keras", "load Keras models")
    with open(path, "rb") as handle:
        if handle.read(8) != b"\x89HDF\r\n\x1a\n":
            raise LoadError(f"{path} is not a readable HDF5 file (no HDF5 signature)",
                            hint=REEXPORT)
    try:
        model = keras.saving.load_model(str(path), compile=False,
                                        safe_mode=not options.unsafe_keras)
    except Exception as first:
        _raise_if_unsafe(path, first)  # never fall back to a loader without safe mode
        try:  # models written by Keras 2 (tf_keras) with layers Keras 3 cannot read
            tf_keras = lazy.require("tf_keras")
            with lazy.silenced_stderr():
                model = tf_keras.models.load_model(str(path), compile=False)
        except Exception:
            raise LoadError(f"cannot load HDF5 model {path}: {first_line(first)}",
                            hint="a weights-only or corrupt .h5 cannot be loaded; save the "
                                 "whole model again") from first
    return keras_handle(model, "h5", str(path))


def keras_handle(model, fmt: str, source: str | None) -> ModelHandle:
    inputs = [_keras_tensor_spec(t, getattr(t, "name", f"input_{i}"))
              for i, t in enumerate(model.inputs)]
    names = list(getattr(model, "output_names", None) or [])
    outputs = [_keras_tensor_spec(t, names[i] if i < len(names) else f"output_{i}")
               for i, t in enumerate(model.outputs)]
    name = Path(source).stem if source else model.name
    return ModelHandle("tf", model, fmt, name, inputs=inputs, outputs=outputs, source=source)


def _keras_tensor_spec(tensor, name: str) -> TensorSpec:
    shape = tuple(None if d is None else int(d) for d in tensor.shape)
    dtype = tensor.dtype if isinstance(tensor.dtype, str) else tensor.dtype.name
    return TensorSpec(_clean_name(name), shape, dtype)


def _clean_name(name: str) -> str:
    return name.split(":")[0]


def _load_saved_model(path: Path, options) -> ModelHandle:
    tf = _tf()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise LoadError(f"cannot load SavedModel {path}: {first_line(exc)}",
                        hint=REEXPORT) from exc
    return saved_model_handle(loaded, str(path))


def saved_model_handle(loaded, source: str | None) -> ModelHandle:
    signature = _serving_signature(loaded)
    if signature is None:
        raise LoadError(f"SavedModel {source} has no serving signature",
                        hint="save it with a signature (tf.saved_model.save(..., signatures=...))")
    specs_by_name = signature.structured_input_signature[1]
    out_struct = signature.structured_outputs
    out_names = _output_order(loaded, out_struct)
    outputs = [_tf_spec(out_struct[n], n) for n in out_names]
    name = Path(source).name if source else "SavedModel"
    serve = getattr(loaded, "serve", None)
    positional = list(getattr(serve, "input_signature", None) or [])
    if positional and len(positional) == len(specs_by_name):
        # a positional `serve` (ours, Keras exports) keeps the model's input order, which
        # signature keyword arguments (sorted by name) lose
        inputs = [_tf_spec(s, s.name or f"input_{i}") for i, s in enumerate(positional)]
        runner = serve
    else:
        arg_names = list(getattr(signature, "_arg_keywords", None) or []) or sorted(specs_by_name)
        inputs = [_tf_spec(specs_by_name[n], n) for n in arg_names]
        runner = SavedModelRunner(signature, arg_names, out_names)
    handle = ModelHandle("tf", runner, "savedmodel", name, inputs=inputs, outputs=outputs,
                         source=source)
    handle.saved_object = loaded
    try:  # the function alone does not keep the restored variables alive (load_as_tf)
        runner._nb_saved_model = loaded
    except AttributeError:
        pass
    return handle


def _serving_signature(loaded):
    signatures = getattr(loaded, "signatures", {}) or {}
    if "serving_default" in signatures:
        return signatures["serving_default"]
    return next(iter(signatures.values()), None)


def _output_order(loaded, out_struct) -> list[str]:
    """Signature outputs are a dict; ours record their order in `output_order`."""
    order = getattr(loaded, "output_order", None)
    if order is not None:
        try:
            names = [n.decode() for n in order.numpy().tolist()]
            if sorted(names) == sorted(out_struct):
                return names
        except Exception:
            pass
    return sorted(out_struct)


class SavedModelRunner:
    """Calls a SavedModel signature positionally and returns outputs in a fixed order."""

    def __init__(self, signature, arg_names, out_names):
        self.signature = signature
        self.arg_names = arg_names
        self.out_names = out_names

    def __call__(self, *args):
        result = self.signature(**dict(zip(self.arg_names, args)))
        outs = tuple(result[n] for n in self.out_names)
        return outs[0] if len(outs) == 1 else outs


def _tf_spec(spec, name: str) -> TensorSpec:
    shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else ()
    return TensorSpec(_clean_name(name), shape, spec.dtype.name)


def _load_tflite(path: Path, options) -> ModelHandle:
    inputs, outputs = _tflite_specs(str(path))
    return ModelHandle("tf", TFLiteRunner(str(path)), "tflite", path.stem,
                       inputs=inputs, outputs=outputs, source=str(path))


def _tflite_specs(path: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs/outputs in the order run_tflite uses: a signature's sorted names, else tensors."""
    from .onnx_to_tf import _tflite_interpreter

    from .tflite_check import Malformed, check_file

    try:
        check_file(path)  # the runtime trusts the file: a damaged one can crash the process
    except (Malformed, OSError) as exc:
        raise LoadError(f"{path} is not a readable TFLite model: {exc}", hint=REEXPORT) from exc
    try:
        # a signature runner allocates, and TFLite logs "Created ... XNNPACK delegate" on fd 2
        with lazy.quiet_stderr():
            return _interpreter_specs(_tflite_interpreter(path))
    except Exception as exc:
        # a damaged flatbuffer can open and then fail on reading its tensors (names that
        # are not UTF-8, bad indices): the same "not readable" error as failing to open
        raise LoadError(f"{path} is not a readable TFLite model: {first_line(exc)}",
                        hint=REEXPORT) from exc


def _interpreter_specs(interpreter) -> tuple[list[TensorSpec], list[TensorSpec]]:
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        ins, outs = runner.get_input_details(), runner.get_output_details()
        return ([_tflite_spec(n, ins[n]) for n in sorted(ins)],
                [_tflite_spec(n, outs[n]) for n in sorted(outs)])
    return ([_tflite_spec(d["name"], d) for d in interpreter.get_input_details()],
            [_tflite_spec(d["name"], d) for d in interpreter.get_output_details()])


def _tflite_spec(name: str, detail) -> TensorSpec:
    import numpy as np

    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    return TensorSpec(_tflite_name(name), shape, np.dtype(detail["dtype"]).name)


def _tflite_name(name: str) -> str:
    """`serving_default_x:0` -> `x`; `i0_image` -> `image` (save_tflite's order prefixes)."""
    name = name.split(":")[0]
    if name.startswith("serving_default_"):
        name = name[len("serving_default_"):]
    return re.sub(r"^[io]\d+_", "", name)


class TFLiteRunner:
    """Runs a .tflite file on positional inputs, any batch size."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, *arrays):
        from .onnx_to_tf import run_tflite

        outs = run_tflite(self.path, list(arrays))
        return outs[0] if len(outs) == 1 else tuple(outs)


def wrap(obj, name=None, source=None, fmt="live"):
    keras = sys.modules.get("keras")
    tf = sys.modules.get("tensorflow")
    if keras is not None and isinstance(obj, keras.Model):
        handle = keras_handle(obj, fmt, source)
        handle.name = name or type(obj).__name__
        return handle
    tf_keras = sys.modules.get("tf_keras")
    if tf_keras is not None and isinstance(obj, tf_keras.Model):
        handle = keras_handle(obj, fmt, source)
        handle.name = name or type(obj).__name__
        return handle
    if tf is None:
        return None
    owner = getattr(obj, "_nb_saved_model", None)  # the `serve` that load_as_tf returned
    if owner is not None:
        return saved_model_handle(owner, source)
    if isinstance(obj, tf.Module) or hasattr(obj, "signatures"):  # also tf.saved_model.load()
        if _serving_signature(obj) is not None:
            return saved_model_handle(obj, source)
        specs = _module_call_specs(obj)
        if specs is not None:
            return ModelHandle("tf", obj, fmt, name or type(obj).__name__, inputs=specs,
                               source=source)
    signature = getattr(obj, "input_signature", None)
    if signature and callable(obj):  # a tf.function (e.g. a loaded SavedModel's `serve`)
        specs = [_tf_spec(s, s.name or f"input_{i}") for i, s in enumerate(signature)]
        return ModelHandle("tf", obj, fmt, name or getattr(obj, "__name__", "function"),
                           inputs=specs, source=source)
    return None


def _module_call_specs(module):
    """Input specs of a tf.Module whose `serve` or `__call__` is a tf.function with a signature."""
    for attr in ("serve", "__call__"):
        signature = getattr(getattr(module, attr, None), "input_signature", None)
        if signature:
            return [_tf_spec(s, s.name or f"input_{i}") for i, s in enumerate(signature)]
    return None


def input_specs(handle: ModelHandle):
    return handle.inputs


# ---------------------------------------------------------------- running
def run(handle: ModelHandle, arrays: list) -> list:
    tf = _tf()
    obj = handle.obj
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(obj, keras.Model):
        result = obj(list(arrays) if len(arrays) > 1 else arrays[0], training=False)
    elif isinstance(obj, TFLiteRunner):
        result = obj(*arrays)
    else:
        result = obj(*[tf.convert_to_tensor(a) for a in arrays])
    return flatten_outputs(result, handle.output_names)


def flatten_outputs(result, names=None) -> list:
    import numpy as np

    if isinstance(result, dict):
        keys = [n for n in names or [] if n in result] or list(result)
        return [np.asarray(result[k]) for k in keys]
    if isinstance(result, (list, tuple)):
        out = []
        for item in result:
            out.extend(flatten_outputs(item))
        return out
    return [np.asarray(result)]


# ---------------------------------------------------------------- to ONNX
def to_onnx(handle: ModelHandle, specs: list[TensorSpec], options):
    """Yield (strategy, ModelProto) candidates from tf2onnx.

    A Keras model is traced as a tf.function; a SavedModel or tf.Module is frozen first
    (variables inlined as constants), because tf2onnx leaves the variables of restored,
    nested functions as extra graph inputs.
    """
    tf2onnx = lazy.require("tf2onnx", "convert TensorFlow models to ONNX")
    opset = options.opset or DEFAULT_ONNX_OPSET
    keras = sys.modules.get("keras")
    if isinstance(handle.obj, TFLiteRunner):
        strategies = ("tflite",)
    elif keras is not None and isinstance(handle.obj, keras.Model):
        strategies = ("function", "frozen-graph")
    elif handle.format == "live" and isinstance(handle.obj, _tf().Module):
        # a live tf.Module (one of ours, returned by convert_model, included): its variables
        # do not freeze in place, but do once written and loaded back as a SavedModel
        strategies = ("saved-model", "frozen-graph", "function")
    else:
        strategies = ("frozen-graph", "function")
    errors = []
    large = _weight_bytes(handle) > _LARGE_WEIGHT_BYTES
    for strategy in strategies:
        options.progress(f"converting to ONNX with tf2onnx ({strategy}, opset {opset})")
        try:
            with redirect_stdout(io.StringIO()), _tf2onnx_collecting_garbage(large):
                proto = _TF2ONNX_STRATEGIES[strategy](tf2onnx, handle, specs, opset)
            _check_graph_inputs(proto, specs)
        except Exception as exc:
            errors.append(f"{strategy}: {first_line(exc)}")
            continue
        _rename_graph_io(proto, [s.name for s in specs], handle.output_names)
        _replace_erfc(proto)
        yield f"tf2onnx-{strategy}", proto
    if errors:
        raise ConversionError("tf2onnx failed: " + " | ".join(errors))


#: above this much weight data, tf2onnx's dropped graph copies are collected after each pass
_LARGE_WEIGHT_BYTES = 200 << 20


def _weight_bytes(handle: ModelHandle) -> int:
    """The model's weight bytes: its variables, else the size of its files on disk."""
    import numpy as np

    try:
        variables = list(getattr(handle.obj, "variables", None) or [])
        if variables:  # Keras 3 names dtypes by string, tf.Variable by tf.DType
            return sum(math.prod(int(d) for d in v.shape)
                       * np.dtype(getattr(v.dtype, "as_numpy_dtype", v.dtype)).itemsize
                       for v in variables)
    except Exception:  # an object without readable variables: measure its files
        pass
    path = Path(handle.source) if handle.source else None
    if path is None or not path.exists():
        return 0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


@contextmanager
def _tf2onnx_collecting_garbage(enabled: bool = True):
    """Free tf2onnx's discarded graph copies after every optimizer pass.

    tf2onnx deep-copies the whole graph, weights included, before each of its optimizer passes
    (a dozen per round, several rounds). The copies it drops hold reference cycles, which only
    Python's cyclic collector frees, and large arrays do not trigger a collection: Keras VGG16
    (138M parameters) grew past 21 GB and was OOM-killed; collecting before each pass keeps
    its peak at about 9.5 GB. A full collection costs about 0.2 s with the frameworks loaded,
    some 6 s per conversion, so only large models (`enabled`) pay it."""
    import gc
    from collections import OrderedDict

    from tf2onnx import optimizer

    original = getattr(optimizer, "_optimizers", None)
    if not enabled or not isinstance(original, dict):
        yield
        return

    def collecting(factory):
        def make():
            gc.collect()
            return factory()
        return make

    optimizer._optimizers = OrderedDict((name, collecting(factory))
                                        for name, factory in original.items())
    try:
        yield
    finally:
        optimizer._optimizers = original
        gc.collect()


def _tf2onnx_function(tf2onnx, handle, specs, opset):
    function, signature = _as_tf_function(handle, specs)
    return tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)[0]


def _tf2onnx_frozen(tf2onnx, handle, specs, opset):
    tf = _tf()
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    function, signature = _as_tf_function(handle, specs)
    concrete = function.get_concrete_function(*signature)
    frozen = convert_variables_to_constants_v2(concrete, aggressive_inlining=True)
    inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
    outputs = [t.name for t in frozen.outputs]
    return tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=inputs,
                                          output_names=outputs, opset=opset)[0]


def _tf2onnx_tflite(tf2onnx, handle, specs, opset):
    return tf2onnx.convert.from_tflite(handle.obj.path, opset=opset)[0]


def _tf2onnx_saved_model(tf2onnx, handle, specs, opset):
    """A live tf.Module through a temporary SavedModel, then frozen like a SavedModel file."""
    import tempfile

    tf = _tf()
    with tempfile.TemporaryDirectory(prefix="nb-tf-module-") as folder:
        path = str(Path(folder) / "model")
        if hasattr(handle.obj, "output_keys"):  # our converted modules: named signature
            from .onnx_to_tf import save_saved_model

            save_saved_model(handle.obj, path)
        else:
            tf.saved_model.save(handle.obj, path)
        reloaded = saved_model_handle(tf.saved_model.load(path), path)
        return _tf2onnx_frozen(tf2onnx, reloaded, specs, opset)


_TF2ONNX_STRATEGIES = {"function": _tf2onnx_function, "frozen-graph": _tf2onnx_frozen,
                       "tflite": _tf2onnx_tflite, "saved-model": _tf2onnx_saved_model}


def _check_graph_inputs(proto, specs) -> None:
    initializers = {init.name for init in proto.graph.initializer}
    count = sum(1 for i in proto.graph.input if i.name not in initializers)
    if count != len(specs):
        raise ConversionError(f"tf2onnx produced {count} inputs for a model with {len(specs)} "
                              "(variables left as inputs)")


def _as_tf_function(handle: ModelHandle, specs):
    tf = _tf()
    signature = [tf.TensorSpec([d if isinstance(d, int) else None for d in s.shape],
                               tf.as_dtype(s.dtype), name=s.name) for s in specs]
    obj = handle.obj
    keras = sys.modules.get("keras")
    is_keras = keras is not None and isinstance(obj, keras.Model)
    serve = getattr(obj, "serve", None)
    if getattr(serve, "input_signature", None):  # our own converted modules: trace it directly
        return serve, list(serve.input_signature)

    @tf.function(input_signature=signature)
    def call(*args):
        if is_keras:
            with _keras_convs_without_xla():  # the body runs when tf2onnx traces it
                return obj(list(args) if len(args) > 1 else args[0], training=False)
        return obj(*args)

    return call, signature


@contextmanager
def _keras_convs_without_xla():
    """Trace Keras 3 convolutions as plain TF ops.

    Keras' TensorFlow backend wraps grouped convolutions (ConvNeXt's depthwise Conv2D with
    `groups`) in a nested `tf.function(jit_compile=True)` because TF's CPU kernel lacks
    them; tf2onnx cannot look into that call and leaves its variables as graph inputs. ONNX
    Conv has groups, so the traced graph only needs the Conv2D op itself."""
    module = sys.modules.get("keras.src.backend.tensorflow.nn")
    original = getattr(module, "conv", None)
    to_tf_format = getattr(module, "_convert_data_format", None)
    if original is None or to_tf_format is None:
        yield
        return
    from keras.src.backend import standardize_data_format

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        data_format = standardize_data_format(data_format)
        return _tf().nn.convolution(inputs, kernel, strides, padding.upper(),
                                    data_format=to_tf_format(data_format, len(inputs.shape)),
                                    dilations=dilation_rate)

    module.conv = conv
    try:
        yield
    finally:
        module.conv = original


def _replace_erfc(proto) -> None:
    """tf2onnx passes TF's Erfc through as is (tf.nn.gelu uses it), but ONNX has no Erfc:
    rewrite erfc(x) as 1 - erf(x)."""
    from onnx import helper, numpy_helper
    import numpy as np

    nodes = list(proto.graph.node)
    if not any(n.op_type == "Erfc" for n in nodes):
        return
    one = "nb_erfc_one"
    proto.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
    rewritten = []
    for node in nodes:
        if node.op_type != "Erfc":
            rewritten.append(node)
            continue
        erf = f"{node.output[0]}_nb_erf"
        rewritten += [helper.make_node("Erf", [node.input[0]], [erf], name=f"{node.name}_erf"),
                      helper.make_node("Sub", [one, erf], [node.output[0]], name=f"{node.name}_sub")]
    del proto.graph.node[:]
    proto.graph.node.extend(rewritten)


def _rename_graph_io(proto, input_names, output_names) -> None:
    """Give graph inputs/outputs the model's own names (not `Identity:0`), in the model's order.

    Names are matched after cleaning (`serving_default_a:0` -> `a`), else by position.
    """
    renames = {}
    for values, names in ((proto.graph.input, input_names), (proto.graph.output, output_names)):
        names = [n for n in names or [] if n]
        current = [v.name for v in values]
        cleaned = [_tflite_name(n) for n in current]
        if sorted(cleaned) == sorted(names):
            renames.update(zip(current, cleaned))
        else:
            renames.update((c, n) for c, n in zip(current, names) if c != n)
        if sorted(cleaned) == sorted(names) and cleaned != names:  # reorder to the model's order
            by_name = {_tflite_name(v.name): v for v in values}
            ordered = [type(values[0])() for _ in names]
            for slot, name in zip(ordered, names):
                slot.CopyFrom(by_name[name])
            del values[:]
            values.extend(ordered)
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]


# ---------------------------------------------------------------- from ONNX / save
def from_onnx(proto, specs, options, target: str = "tf") -> ModelHandle:
    """ONNX -> a Keras 3 model for keras/h5 targets, else a tf.Module through onnx2tf."""
    if target in ("keras", "h5"):
        from . import onnx_to_keras

        model = onnx_to_keras.convert_onnx_to_keras(proto, layout=options.layout,
                                                    progress=options.progress)
        handle = keras_handle(model, "live", None)
        handle.name = type(model).__name__
    else:
        from . import onnx_to_tf

        # TFLite: onnx2tf's graphs stay within TFLite builtin ops (the Keras one may not)
        module = (_via_keras_builder(proto, specs, options) if target == "tf" else None) or \
            onnx_to_tf.convert_onnx_to_tf(proto, layout=options.layout, progress=options.progress,
                                          static=options.static)
        handle = ModelHandle("tf", module, "live", type(module).__name__, inputs=list(specs))
    handle.input_perms = _layout_perms(specs, handle.inputs, options.layout)
    layouts = getattr(handle.obj, "input_layouts", None)  # onnx_to_tf says it explicitly
    if layouts is not None:
        handle.input_perms = {i: (0,) + tuple(range(2, specs[i].rank)) + (1,)
                              for i, layout in enumerate(layouts) if layout == "nhwc"}
    return handle


# the Keras builder's result is kept when it matches onnxruntime this closely
KERAS_BUILDER_REL_ERROR = 1e-5


def _via_keras_builder(proto, specs, options):
    """ONNX -> TF through our own Keras 3 builder, checked against onnxruntime.

    Tried before onnx2tf: it keeps a dynamic batch without per-sample loops (which
    tf2onnx would turn into ONNX Loop ops on the way back) and is several times faster.
    Returns None, to fall back to onnx2tf, when it cannot build or does not match.
    """
    from . import onnx_backend, onnx_to_keras, onnx_to_tf
    from ..specs import dummy_inputs
    from ..validate import compare_outputs

    if _has_grouped_conv(proto):  # Keras compiles these with XLA; tf2onnx cannot read it back
        return None
    options.progress("building the TF graph (Keras 3 layers)")
    try:
        model = onnx_to_keras.convert_onnx_to_keras(proto, layout=options.layout,
                                                    progress=options.progress)
        module = onnx_to_tf.wrap_keras_model(model, proto, layout=options.layout,
                                             strategy="keras3-builder")
        arrays = dummy_inputs(specs, seed=1)
        layouts = getattr(module, "input_layouts", ())
        feed = [a.transpose((0,) + tuple(range(2, a.ndim)) + (1,)) if i < len(layouts)
                and layouts[i] == "nhwc" else a for i, a in enumerate(arrays)]
        got = module.numpy_outputs(*feed)
        want = onnx_backend.run(onnx_backend.wrap(proto), arrays)
        report = compare_outputs(want, got, atol=0.0, rtol=KERAS_BUILDER_REL_ERROR)
    except Exception as exc:  # any failure: onnx2tf gets its turn
        options.progress(f"Keras 3 builder: {first_line(exc)}; trying onnx2tf")
        return None
    if not report.passed:
        options.progress(f"Keras 3 builder differs from onnxruntime "
                         f"({report.max_rel_error:.2g}); trying onnx2tf")
        return None
    return module


def _has_grouped_conv(proto) -> bool:
    """A Conv with 1 < group < channels (depthwise convolutions are fine)."""
    shapes = {init.name: list(init.dims) for init in proto.graph.initializer}
    for node in proto.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:
            weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
            if weight is None or weight[1] != 1:  # depthwise weights have 1 input channel
                return True
    return False


def _layout_perms(source_specs, target_specs, layout: str) -> dict[int, tuple[int, ...]]:
    """Which inputs the target takes channels-last (only with --layout nhwc)."""
    if layout != "nhwc" or not target_specs:
        return {}
    perms = {}
    for i, (src, dst) in enumerate(zip(source_specs, target_specs)):
        if src.rank >= 3 and src.rank == dst.rank and src.shape[1:] != dst.shape[1:]:
            perms[i] = (0,) + tuple(range(2, src.rank)) + (1,)
    return perms



def saves_directly(handle: ModelHandle, target: str) -> bool:
    """A Keras model saves in every TF format; a SavedModel or tf.Module as SavedModel and
    TFLite; a TFLite file in none (its graph can only be read back through ONNX)."""
    if isinstance(handle.obj, TFLiteRunner):
        return False
    keras = sys.modules.get("keras")
    return target not in ("keras", "h5") or (keras is not None and isinstance(handle.obj, keras.Model))

def save(handle: ModelHandle, path: str, target: str, options) -> str:
    obj = handle.obj
    keras = sys.modules.get("keras")
    is_keras3 = keras is not None and isinstance(obj, keras.Model)
    if target == "tflite":
        return _save_tflite(handle, path)
    if target in ("keras", "h5"):
        if not is_keras3:
            raise UsageError(f"cannot write {target} from a {type(obj).__name__}",
                             hint="convert from the ONNX or source model with --to keras")
        if options.weights_only:
            obj.save_weights(path if path.endswith(".weights.h5") else path)
            return "weights"
        from . import onnx_to_keras

        (onnx_to_keras.save_h5 if target == "h5" else onnx_to_keras.save_keras)(obj, path)
        return target
    return _save_saved_model(handle, path, is_keras3)


def _save_saved_model(handle: ModelHandle, path: str, is_keras3: bool) -> str:
    obj = handle.obj
    if is_keras3:
        with redirect_stdout(io.StringIO()):
            obj.export(path, format="tf_saved_model", verbose=False)
        return "savedmodel"
    if handle.saved_object is not None:
        tf = _tf()
        saved = handle.saved_object
        # a restored SavedModel keeps its serving signature only when it is passed again
        signatures = dict(getattr(saved, "signatures", {}) or {}) or None
        tf.saved_model.save(saved, path, signatures=signatures)
        return "savedmodel"
    from . import onnx_to_tf

    onnx_to_tf.save_saved_model(obj, path)
    return "savedmodel"


def _save_tflite(handle: ModelHandle, path: str, configure=None) -> str:
    """Every TF model goes through onnx_to_tf.save_tflite (named, ordered signature);
    `configure` sets reduced-precision converter options (precision.py)."""
    from . import onnx_to_tf

    obj = handle.obj
    if getattr(obj, "serve", None) is None or not hasattr(obj, "output_keys"):
        obj = _tflite_source(handle)
    onnx_to_tf.save_tflite(obj, path, configure)
    return "tflite"


def _tflite_source(handle: ModelHandle):
    """Adapt a Keras model / SavedModel to what save_tflite takes: a trackable with `serve`,
    `input_signature` and `output_keys`."""
    tf = _tf()
    function, signature = _as_tf_function(handle, handle.inputs)
    source = tf.Module()
    saved = handle.saved_object
    if saved is not None:
        source.model = saved  # keeps its variables tracked, so the converter freezes them
    else:  # Keras 3 variables wrap tf.Variables, which the converter needs to see
        source.model_variables = [getattr(v, "value", v) for v in handle.obj.variables]
    source.serve = function
    source.input_signature = list(signature)
    source.output_keys = handle.output_names or ["output"]
    return source


def describe(handle: ModelHandle) -> dict:
    obj = handle.obj
    if handle.format == "savedmodel" and handle.source:
        count = _checkpoint_parameters(handle.source)
        return {"class": "SavedModel (serving_default signature)",
                # None: the weights are graph constants, not checkpoint variables
                "parameters": count or None}
    if isinstance(obj, TFLiteRunner):  # inspect counts its constant tensors itself
        return {"class": "TFLite flatbuffer (run with ai_edge_litert / tf.lite)",
                "parameters": 0}
    params = 0
    variables = getattr(obj, "weights", None) or getattr(obj, "variables", None)
    if variables is None and handle.saved_object is not None:
        variables = getattr(handle.saved_object, "variables", None)
    if variables:
        import numpy as np

        params = int(sum(np.prod(v.shape) for v in variables))
    return {"class": f"{type(obj).__module__}.{type(obj).__name__}", "parameters": params}



def _checkpoint_parameters(folder: str) -> int:
    """Count the values in a SavedModel's variables checkpoint without loading the graph."""
    tf = _tf()
    prefix = Path(folder) / "variables" / "variables"
    try:
        entries = tf.train.list_variables(str(prefix))
    except Exception:
        return 0
    total = 0
    for name, shape in entries:
        if name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH") or "save_counter" in name:
            continue
        size = 1
        for d in shape:
            size *= d
        total += size
    return total
