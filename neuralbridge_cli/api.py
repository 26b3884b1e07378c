"""The Python API: the same pipeline as the CLI, for live models and files."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .options import DEFAULT_ATOL, DEFAULT_RTOL, Options
from .specs import TensorSpec, normalize_dtype, specs_from_flags


def _input_specs(input_shape, dtype) -> list[TensorSpec] | None:
    """Accept (1,3,224,224), [(1,3,224,224), (1,16)], {"x": (1,3,224,224)} or "1,3,224,224"."""
    if input_shape is None:
        return None
    if isinstance(input_shape, dict):
        texts = [f"{name}:{_dims(shape)}" for name, shape in input_shape.items()]
    elif isinstance(input_shape, str):
        texts = [input_shape]
    elif input_shape and all(isinstance(d, int) or d is None for d in input_shape):
        texts = [_dims(input_shape)]
    else:
        texts = [s if isinstance(s, str) else _dims(s) for s in input_shape]
    dtypes = None
    if isinstance(dtype, dict):
        dtypes = [f"{k}:{normalize_dtype(v)}" for k, v in dtype.items()]
    elif dtype:
        dtypes = [normalize_dtype(dtype)]
    return specs_from_flags(texts, dtypes)


def _dims(shape) -> str:
    return ",".join("?" if d is None or d == -1 else str(d) for d in shape)


def _options(input_shape=None, dtype=None, save_onnx=None, weights_only=False, validate=True,
             atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL, progress: Callable[[str], None] | None = None,
             **rest) -> Options:
    options = Options(input_specs=_input_specs(input_shape, dtype), save_onnx=_str(save_onnx),
                      weights_only=weights_only, validate=validate, atol=atol, rtol=rtol, **rest)
    if progress is not None:
        options.progress = progress
    return options.check()


def _str(path) -> str | None:
    return str(path) if path is not None else None


def convert_model(model: Any, to: str | None = None, *, save: str | Path | None = None,
                  **options) -> Any:
    """Convert a model to another framework and return it, validated.

    `model` is a torch.nn.Module, a Keras model / tf.Module, an onnx.ModelProto, or a
    path / import path. With no `to`, PyTorch becomes TensorFlow and TensorFlow/Keras
    becomes PyTorch; `to` is one of onnx, torch, torchscript, tf, keras, h5, tflite.
    The result is callable in its framework with the same positional inputs and returns
    one tensor for one output (a tuple for several); an ONNX target returns a ModelProto.
    keras/h5/tflite targets are file formats: the returned object is the TF model they were
    written from (pass `save=`; `load_as_tf(path)` runs the written .tflite itself).

    Options: input_shape, dtype, save (path), save_onnx (path), weights_only, validate
    (default True), atol, rtol, layout ("keep"/"nhwc"), opset, static, force,
    model_class, model_args, progress (a callable taking a message).
    Raises NeuralBridgeError subclasses; ValidationMismatch when outputs differ.
    """
    from .pipeline import convert

    result = convert(model, to, _str(save), _options(**options))
    return result.target.obj


def export_onnx(model: Any, path: str | Path | None = None, **options):
    """Export a PyTorch/TensorFlow model (live or a path) to ONNX; returns the onnx.ModelProto."""
    from .pipeline import convert

    result = convert(model, "onnx", _str(path), _options(**options))
    return result.target.obj


def load_as(path: str | Path, framework: str, **options) -> Any:
    """Load any supported model file into `framework` ("torch", "tf" or "onnx").

    Without conversion when the file is already in that framework; otherwise it is
    converted (and validated) in memory.
    """
    from .errors import UsageError
    from .loading import NATIVE_TARGET, load_into

    if framework not in NATIVE_TARGET:
        raise UsageError(f"unknown framework {framework!r}", hint="use torch, tf or onnx")
    opts = _options(**options)
    from .pipeline import load_source

    handle = load_source(str(path), opts)
    if handle.framework == framework:
        return handle.obj
    return load_into(handle, framework, None, opts).target.obj


def load_as_torch(path: str | Path, **options):
    """Load a model file as a callable torch module."""
    return load_as(path, "torch", **options)


def load_as_tf(path: str | Path, **options):
    """Load a model file as a TensorFlow callable (Keras model, SavedModel, converted module)."""
    return load_as(path, "tf", **options)


def load_as_onnx(path: str | Path, **options):
    """Load a model file as an onnx.ModelProto (exported when it is not ONNX already)."""
    return load_as(path, "onnx", **options)


def check_input(model: Any, data: Any, *, expect_range: str = "0-1", **options) -> list:
    """Check input data against a model's inputs; returns a list of Finding (empty: it fits).

    `model` is anything convert_model takes; `data` a path (.npz, .npy, PNG/JPEG), a dict of
    arrays, one array, or a list of arrays. Each Finding has kind, input, message, fix and
    fixable. Options: input_shape, dtype, model_class, model_args.
    """
    from .input_check import check_model_input

    _, result = check_model_input(model, data, _options(**options), expect_range=expect_range)
    return result.findings
