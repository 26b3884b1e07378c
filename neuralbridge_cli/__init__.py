"""NeuralBridge: convert models between PyTorch, ONNX and TensorFlow/Keras, validated.

    from neuralbridge_cli import convert_model, load_as_torch
    tf_model = convert_model(torch_model)          # PyTorch -> TensorFlow
    torch_model = load_as_torch("model.keras")     # any file -> PyTorch

Heavy frameworks are imported only when a function needs them.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["convert_model", "export_onnx", "load_as", "load_as_torch", "load_as_tf",
           "load_as_onnx", "check_input", "NeuralBridgeError", "ValidationMismatch", "__version__"]


def __getattr__(name: str):
    if name in ("convert_model", "export_onnx", "load_as", "load_as_torch", "load_as_tf",
                "load_as_onnx", "check_input"):
        from . import api

        return getattr(api, name)
    if name in ("NeuralBridgeError", "ValidationMismatch"):
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'neuralbridge_cli' has no attribute {name!r}")
