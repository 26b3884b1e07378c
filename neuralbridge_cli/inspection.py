"""`inspect`: describe a model file without converting it (ONNX needs neither torch nor TF)."""
from __future__ import annotations

from pathlib import Path

from . import formats
from .backends import backend
from .options import Options
from .pipeline import load_source


def inspect_model(source: str, options: Options | None = None) -> dict:
    """Format, framework, inputs/outputs, parameter count, size; opset/producer/ops for ONNX."""
    options = options or Options()
    fmt = formats.detect(source, options.source_format)
    handle = load_source(source, options)
    module = backend(handle.framework)
    info = {
        "path": source,
        "format": fmt.name,
        "format_description": fmt.description,
        "framework": fmt.framework,
        "size": _size(source),
    }
    info.update(module.describe(handle))
    inputs = module.input_specs(handle) if handle.framework != "torch" else _torch_inputs(handle)
    info["inputs"] = [s.as_dict() for s in inputs or []]
    info["outputs"] = [s.as_dict() for s in handle.outputs or []]
    info["notes"] = handle.notes
    return info


def _torch_inputs(handle):
    try:
        return backend("torch").input_specs(handle)
    except Exception:  # inspect reports what it can; a model without a known first layer is fine
        return None


def _size(source: str) -> int | None:
    path = Path(source)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None
