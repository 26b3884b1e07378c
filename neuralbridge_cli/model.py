"""The framework-neutral handle that flows between pipeline steps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .specs import TensorSpec


@dataclass
class ModelHandle:
    """A loaded model in one framework, with what we know of its inputs and outputs.

    `obj` is the live object: a torch.nn.Module (or loaded program), a Keras
    model / tf.Module / SavedModel callable, an onnx.ModelProto, or a TFLite path.
    `input_perms` maps an input index to the axis permutation that turns the
    *source* array into what this model takes (set by `--layout nhwc`).
    """

    framework: str  # "torch" | "tf" | "onnx"
    obj: Any
    format: str  # a formats.FORMATS name, or "live"
    name: str
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    source: str | None = None
    input_perms: dict[int, tuple[int, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    saved_object: Any = None  # a loaded SavedModel's root object (tf backend)
    call_names: list[str] = field(default_factory=list)  # forward()'s positional parameters

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs or []]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs or []]
