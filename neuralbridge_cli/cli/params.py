"""Shared option declarations for the commands, and turning them into pipeline Options."""

import json
from enum import Enum
from typing import Annotated, List, Optional

import typer

from ..errors import UsageError
from ..options import DEFAULT_ATOL, DEFAULT_RTOL, Options, load_config
from ..specs import normalize_dtype, parse_dtypes, specs_from_flags
from .completion import complete_dtypes, complete_formats


class TargetName(str, Enum):
    onnx = "onnx"
    torch = "torch"
    torchscript = "torchscript"
    tf = "tf"
    keras = "keras"
    h5 = "h5"
    tflite = "tflite"


class Framework(str, Enum):
    torch = "torch"
    tf = "tf"
    onnx = "onnx"


class Layout(str, Enum):
    keep = "keep"
    nhwc = "nhwc"


SourceArg = Annotated[str, typer.Argument(
    metavar="SOURCE", help="Model file, SavedModel folder, import path like "
    "torchvision.models:resnet18, or a folder of models (batch).",
    show_default=False)]
InputShapeOpt = Annotated[Optional[List[str]], typer.Option(
    "--input-shape", "-s", help="Input shape, e.g. 1,3,224,224 or name:1,3,224,224 (repeat per "
    "input; ? for a dynamic dim).", show_default=False)]
DtypeOpt = Annotated[Optional[List[str]], typer.Option(
    "--dtype", help="Input dtype, e.g. int64 or name:int64 (default float32).", show_default=False,
    autocompletion=complete_dtypes)]
ModelClassOpt = Annotated[Optional[str], typer.Option(
    "--model-class", help="Import path of the model class/factory for a state dict.",
    show_default=False)]
ModelArgsOpt = Annotated[Optional[str], typer.Option(
    "--model-args", help='JSON keyword arguments for the model class, e.g. \'{"num_classes": 10}\'.',
    show_default=False)]
FromOpt = Annotated[Optional[str], typer.Option(
    "--from", help="Source format, when detection by extension and content is not enough.",
    show_default=False, autocompletion=complete_formats)]
ConfigOpt = Annotated[Optional[str], typer.Option(
    "--config", "-c", help="TOML/YAML/JSON file with input shapes and other settings.",
    show_default=False)]
TrustPickleOpt = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow loading pickled Python objects (can run arbitrary code).")]
UnsafeKerasOpt = Annotated[bool, typer.Option(
    "--unsafe-keras", help="Allow Keras Lambda layers (runs code stored in the file).")]
OpsetOpt = Annotated[Optional[int], typer.Option("--opset", help="ONNX opset for export.",
                                                 show_default=False)]
StaticOpt = Annotated[bool, typer.Option("--static", help="Fix the batch dimension (at the "
                                   "--input-shape batch, else 1) instead of keeping it dynamic.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]
AtolOpt = Annotated[Optional[float], typer.Option(
    "--atol", help=f"Absolute tolerance of validation [default: {DEFAULT_ATOL:g}].",
    show_default=False)]
RtolOpt = Annotated[Optional[float], typer.Option(
    "--rtol", help=f"Tolerance relative to the output's scale [default: {DEFAULT_RTOL:g}].",
    show_default=False)]


def build_options(*, config: str | None = None, input_shape=None, dtype=None, model_class=None,
                  model_args=None, source_format=None, settings: dict | None = None,
                  **fields) -> Options:
    """Merge a config file, then `settings` (a batch model's neuralbridge.toml), then flags
    (flags win) into pipeline Options."""
    settings = {**(load_config(config) if config else {}), **(settings or {})}
    shapes = input_shape or _as_list(settings.get("input_shape") or settings.get("input_shapes"))
    dtypes = dtype or _as_list(settings.get("dtype") or settings.get("dtypes"))
    for name in dtypes or ():
        normalize_dtype(name.rpartition(":")[2])
    specs = specs_from_flags(shapes, dtypes)
    args = _parse_model_args(model_args) if model_args else settings.get("model_args") or {}
    options = Options(
        source_format=source_format or settings.get("from"),
        model_class=model_class or settings.get("model_class"),
        model_args=args,
        input_specs=specs,
        input_dtypes=parse_dtypes(dtypes) if specs is None else {},
    )
    for key in ("atol", "rtol", "opset", "layout", "static", "validate", "trust_pickle",
                "unsafe_keras"):
        if key in settings:
            setattr(options, key, settings[key])
    for key, value in fields.items():  # flags left at None/False do not override the config
        if value is not None and value is not False:
            setattr(options, key, value)
    return options.check()


def _as_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, dict):  # {name = "1,3,224,224"}
        return [f"{k}:{v if isinstance(v, str) else ','.join(map(str, v))}" for k, v in value.items()]
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):  # [1, 3, 224, 224]
        return [",".join(map(str, value))]
    return [v if isinstance(v, str) else ",".join(map(str, v)) for v in value]


def _parse_model_args(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--model-args is not valid JSON: {exc}",
                         hint='write it like \'{"num_classes": 10}\'') from exc
    if not isinstance(value, dict):
        raise UsageError("--model-args must be a JSON object", hint='e.g. \'{"num_classes": 10}\'')
    return value

