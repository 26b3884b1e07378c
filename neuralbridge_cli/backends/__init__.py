"""One module per framework with the same small interface.

Each backend module provides:
  load(source, fmt, options) -> ModelHandle       load a file / import path
  wrap(obj) -> ModelHandle | None                 adopt a live object of its framework
  input_specs(handle) -> list[TensorSpec] | None  what the model says about its inputs
  run(handle, arrays) -> list[np.ndarray]         one inference, outputs in order
  to_onnx(handle, specs, options) -> iterator of (strategy, onnx.ModelProto)
  from_onnx(proto, specs, options, target) -> ModelHandle   ONNX graph -> this framework
  save(handle, path, target, options) -> str      write a native artifact, returns its format
  saves_directly(handle, target) -> bool          save() can write this object as `target`
                                                  (else the pipeline goes through ONNX)
  describe(handle) -> dict                        class, parameter count...
The table below maps a framework name to its module; modules are imported on first use.
"""
from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = {
    "torch": "neuralbridge_cli.backends.torch_backend",
    "tf": "neuralbridge_cli.backends.tf_backend",
    "onnx": "neuralbridge_cli.backends.onnx_backend",
}


def backend(framework: str) -> ModuleType:
    """The backend module for `framework` (torch, tf or onnx)."""
    return importlib.import_module(BACKENDS[framework])
