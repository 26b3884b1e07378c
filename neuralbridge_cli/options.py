"""Options shared by the API and the CLI, plus config-file loading."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UsageError
from .specs import TensorSpec

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
LAYOUTS = ("keep", "nhwc")
PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZATIONS = ("auto", "static", "dynamic")


def _no_progress(message: str) -> None:
    return None


@dataclass
class Options:
    """Everything that steers loading, conversion, saving and validation."""

    source_format: str | None = None  # --from
    model_class: str | None = None
    model_args: dict = field(default_factory=dict)
    trust_pickle: bool = False
    unsafe_keras: bool = False
    input_specs: list[TensorSpec] | None = None  # from --input-shape / config
    input_dtypes: dict = field(default_factory=dict)  # --dtype without --input-shape
    opset: int | None = None
    layout: str = "keep"
    static: bool = False
    validate: bool = True
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    force: bool = False
    weights_only: bool = False
    save_onnx: str | None = None
    precision: str = "fp32"  # --precision for onnx/tflite targets (precision.py)
    calibration: str | None = None  # .npz/.npy of representative inputs for int8
    quantization: str = "auto"  # int8 ONNX: static (calibrated), dynamic, or auto
    progress: Callable[[str], None] = _no_progress

    def check(self) -> "Options":
        try:  # config files can hold any type
            self.atol, self.rtol = float(self.atol), float(self.rtol)
            self.opset = None if self.opset is None else int(self.opset)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"bad setting: {exc}", hint="atol/rtol are numbers, opset an integer")
        if not (self.atol == self.atol and self.rtol == self.rtol):  # NaN
            raise UsageError("--atol and --rtol must be numbers, not NaN")
        for flag in ("static", "validate", "trust_pickle", "unsafe_keras"):
            if not isinstance(getattr(self, flag), bool):
                raise UsageError(f"setting {flag} must be true or false")
        if self.layout not in LAYOUTS:
            raise UsageError(f"unknown layout {self.layout!r}", hint="use keep or nhwc")
        if self.precision not in PRECISIONS or self.quantization not in QUANTIZATIONS:
            raise UsageError(f"unknown precision {self.precision!r} / quantization "
                             f"{self.quantization!r}", hint="precision: fp32, fp16 or int8; "
                             "quantization: auto, static or dynamic")
        if self.atol < 0 or self.rtol < 0:
            raise UsageError("--atol and --rtol must be >= 0")
        if self.opset is not None and not 7 <= self.opset <= 23:
            raise UsageError(f"unsupported --opset {self.opset}", hint="use an opset from 7 to 23")
        return self


# keys accepted in a config file, with the Options field or special handling they map to
CONFIG_KEYS = {
    "input_shape", "input_shapes", "dtype", "dtypes", "model_class", "model_args", "atol", "rtol",
    "opset", "layout", "static", "validate", "from", "trust_pickle", "unsafe_keras",
}


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into a dict of known keys (dashes allowed)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".toml", ".tml"):
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise UsageError(f"unknown config file type {path.suffix!r}",
                             hint="use .toml, .yaml or .json")
    except UsageError:
        raise
    except Exception as exc:  # each parser has its own error type
        raise UsageError(f"cannot parse config file {path}: {exc}".splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a table of settings")
    data = data.get("neuralbridge", data)  # allow a [neuralbridge] table
    return check_config_keys(data, str(path))


def check_config_keys(data: dict, where: str) -> dict[str, Any]:
    """Keys with dashes as underscores; a UsageError naming `where` for unknown keys."""
    normalized = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(normalized) - CONFIG_KEYS)
    if unknown:
        raise UsageError(f"unknown key(s) in {where}: {', '.join(unknown)}",
                         hint=f"known keys: {', '.join(sorted(CONFIG_KEYS))}")
    return normalized

