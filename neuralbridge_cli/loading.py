"""`load`: bring any supported model into one framework, run it once, describe it."""
from __future__ import annotations

from .backends import backend
from .options import Options
from .pipeline import TARGETS, ConversionResult, convert, target_from_suffix

# the native target of each framework when --save does not say
NATIVE_TARGET = {"torch": "torch", "tf": "tf", "onnx": "onnx"}


def load_into(source, framework: str, save: str | None, options: Options) -> ConversionResult:
    """Load `source` into `framework` (converting when needed) and optionally save it."""
    target = NATIVE_TARGET[framework]
    if save:
        by_suffix = target_from_suffix(save)
        if by_suffix and TARGETS[by_suffix].framework == framework:
            target = by_suffix
    return convert(source, target, save, options)


def load_report(source, framework: str, save: str | None, options: Options) -> dict:
    result = load_into(source, framework, save, options)
    handle = result.target
    info = backend(handle.framework).describe(handle)
    outputs = result.report and result.report.outputs
    return {
        "name": result.source.name,
        "framework": framework,
        "class": info.get("class"),
        "parameters": info.get("parameters", 0),
        "route": result.route if len(result.route) > 1 else [],
        "inputs": [s.as_dict() for s in result.source.inputs or []],
        "outputs": [{"name": o.name, "shape": list(o.shape), "dtype": "float32"}
                    for o in outputs or []] or [s.as_dict() for s in handle.outputs or []],
        "validation": result.report.as_dict() if result.report else None,
        "saved": result.output,
        "saved_format": result.saved_format,
    }
