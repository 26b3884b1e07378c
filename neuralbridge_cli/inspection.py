"""`inspect`: describe a model file without converting it (ONNX needs neither torch nor TF)."""
from __future__ import annotations

from pathlib import Path

from . import formats
from .backends import backend
from .options import Options
from .pipeline import load_source
from .specs import TensorSpec

STATE_DICT_FORMATS = ("torch-state-dict", "safetensors")
LISTED_TENSORS = 20  # a state dict's tensors listed by `inspect`; the rest are counted


def inspect_model(source: str, options: Options | None = None) -> dict:
    """Format, framework, inputs/outputs, parameter count, size; opset/producer/ops for ONNX.

    A state dict without --model-class is described by its tensors (names, shapes, dtypes)."""
    options = options or Options()
    fmt = formats.detect(source, options.source_format)
    info = {
        "path": source,
        "format": fmt.name,
        "format_description": fmt.description,
        "framework": fmt.framework,
        "size": _size(source),
    }
    if fmt.name in STATE_DICT_FORMATS and not options.model_class:
        info.update(_state_dict_info(source, fmt.name, options))
        return info
    handle = load_source(source, options)
    module = backend(handle.framework)
    info.update(module.describe(handle))
    inputs = module.input_specs(handle) if handle.framework != "torch" else _torch_inputs(handle)
    info["inputs"] = [s.as_dict() for s in inputs or []]
    outputs = handle.outputs or (_torch_outputs(handle, inputs) if inputs else None)
    info["outputs"] = [s.as_dict() for s in outputs or []]
    if fmt.name == "tflite":
        info["parameters"] = _tflite_parameters(source)
    info["notes"] = list(handle.notes)
    if fmt.name == "torchscript":
        info["notes"].append("TorchScript stores input names but no shapes ([?]: rank unknown); "
                             "pass --input-shape to convert it")
    return info


def _torch_inputs(handle):
    if handle.format == "torchscript":
        return _torchscript_inputs(handle.obj)
    try:
        return backend("torch").input_specs(handle)
    except Exception:  # inspect reports what it can; a model without a known first layer is fine
        return None


def _torch_outputs(handle, inputs) -> list[TensorSpec] | None:
    """A PyTorch module records no output specs: run it once on seeded inputs (batch 2) and
    report what came out, the batch dimension shown as dynamic when it followed the input's."""
    from .pipeline import _default_output_names, run_model
    from .specs import DEFAULT_BATCH, dummy_inputs

    if handle.framework != "torch" or any(None in s.shape[1:] for s in inputs):
        return None
    try:
        results = run_model(handle, dummy_inputs(inputs, DEFAULT_BATCH))
    except Exception:  # inspect reports what it can
        return None
    specs = []
    for name, value in zip(_default_output_names(len(results)), results):
        shape = tuple(getattr(value, "shape", ()))
        batch_follows = shape and shape[0] == DEFAULT_BATCH and inputs[0].shape[:1] == (None,)
        specs.append(TensorSpec(name, ((None,) + shape[1:]) if batch_follows else shape,
                                str(getattr(value, "dtype", "object"))))
    return specs


def _torchscript_inputs(module) -> list[TensorSpec]:
    """Names (and tensor ranks where typed) from the scripted forward's schema; TorchScript
    keeps no example shapes, so every dim shows as dynamic."""
    try:
        arguments = module.forward.schema.arguments[1:]  # [0] is self
    except Exception:  # a module without a scripted forward
        return []
    return [TensorSpec(arg.name, ()) if "Tensor" not in str(arg.type)
            else TensorSpec(arg.name, (None,)) for arg in arguments]


def _state_dict_info(source: str, fmt_name: str, options: Options) -> dict:
    """Tensors of a state dict: count, parameters, dtypes, the first LISTED_TENSORS entries."""
    from .backends import torch_backend

    obj = (torch_backend.load_safetensors(source) if fmt_name == "safetensors"
           else torch_backend.load_weights_only(source, options))
    state = torch_backend.state_dict_tensors(obj)
    if state is None:
        from .errors import LoadError

        raise LoadError(f"{source} holds neither a module nor a state dict of tensors")
    dtypes: dict[str, int] = {}
    for tensor in state.values():
        name = str(tensor.dtype).replace("torch.", "")
        dtypes[name] = dtypes.get(name, 0) + 1
    return {
        "class": "state dict (weights only; convert it with --model-class)",
        "parameters": int(sum(t.numel() for t in state.values())),
        "tensors": len(state),
        "dtypes": dtypes,
        "weights": [{"name": k, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
                    for k, t in list(state.items())[:LISTED_TENSORS]],
        "inputs": [],
        "outputs": [],
        "notes": [f"{len(state) - LISTED_TENSORS} more tensors not listed"]
        if len(state) > LISTED_TENSORS else [],
    }


def _tflite_parameters(path: str) -> int:
    """Elements of the constant tensors (weights): tensors that ops read but no op writes and
    that are not model inputs."""
    import numpy as np

    from .backends.onnx_to_tf import _tflite_interpreter

    from . import lazy

    with lazy.quiet_stderr():  # TFLite logs its XNNPACK delegate on fd 2
        interpreter = _tflite_interpreter(path)
    if not hasattr(interpreter, "_get_ops_details"):  # no public API lists op inputs/outputs
        return 0
    try:
        ops = interpreter._get_ops_details()
        graph_inputs = {d["index"] for d in interpreter.get_input_details()}
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
    except Exception as exc:  # a damaged file whose signatures read but whose tensors do not
        from .backends.tf_backend import REEXPORT
        from .errors import LoadError, first_line

        raise LoadError(f"{path} is not a readable TFLite model: {first_line(exc)}",
                        hint=REEXPORT) from exc
    produced = {t for op in ops for t in op["outputs"]}
    consumed = {t for op in ops for t in op["inputs"] if t >= 0}
    constants = consumed - produced - graph_inputs
    return int(sum(np.prod(details[t]["shape"]) for t in constants if t in details))


def _size(source: str) -> int | None:
    path = Path(source)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None
