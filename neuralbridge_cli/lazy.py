"""Lazy, ordered imports of the heavy frameworks.

Nothing here imports torch, TensorFlow or onnx at module import time, so that
`--help` and `inspect model.onnx` stay fast. Every backend gets its framework
through these functions, which (1) turn a missing package into a one-line
MissingDependencyError naming the pip extra, (2) quiet TensorFlow's start-up
noise, and (3) import triton before TensorFlow: with the CUDA build of torch,
loading triton *after* TensorFlow segfaults (shared/ENVIRONMENT.md, trap 1).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import warnings
from types import ModuleType

from .errors import MissingDependencyError

# module name -> pip extra that provides it
EXTRA_FOR_MODULE = {
    "torch": "torch",
    "torchvision": "torch",
    "onnx2torch": "torch",
    "onnxscript": "torch",
    "tensorflow": "tensorflow",
    "keras": "tensorflow",
    "tf_keras": "tensorflow",
    "tf2onnx": "tensorflow",
    "onnx2tf": "tensorflow",
    "onnx": "all",  # core dependencies: a reinstall with any extra brings them back
    "onnxruntime": "all",
    "safetensors": "torch",
    "onnxconverter_common": "trust",
    "matplotlib": "trust",
    "PIL": "trust",
}


def is_installed(name: str) -> bool:
    """True when `name` can be imported; imports nothing."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require(name: str, purpose: str | None = None) -> ModuleType:
    """Import `name` or raise MissingDependencyError with the install hint."""
    if name.split(".")[0] in ("torch", "torchvision", "onnx2torch"):
        # also when the caller imported torch itself: what matters is that TensorFlow is
        # loaded and triton is not, whatever the order the user's code imported them in
        _guard_triton_after_tensorflow()
    if name in sys.modules:
        return sys.modules[name]
    tf_family = name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "onnx2tf", "tf2onnx")
    if tf_family:
        _prepare_tensorflow_import()
    try:
        if tf_family and "tensorflow" not in sys.modules and not _verbose():
            with silenced_stderr():  # C++ start-up lines that no env variable silences
                module = importlib.import_module(name)
                # device discovery prints CUDA-stub lines on first use: do it here, silenced
                sys.modules["tensorflow"].config.list_physical_devices()
                return module
        return importlib.import_module(name)
    except ImportError as exc:
        if is_installed(name):  # installed but broken: keep the real reason
            raise MissingDependencyError(
                f"{name} is installed but failed to import: {exc}",
                hint="run `neuralbridge doctor` or reinstall with the constraints file",
            ) from exc
        extra = EXTRA_FOR_MODULE.get(name.split(".")[0], "all")
        what = f" (needed to {purpose})" if purpose else ""
        raise MissingDependencyError(
            f"{name} is not installed{what}",
            hint=f"pip install 'neuralbridge-cli[{extra}]'",
        ) from exc


def _verbose() -> bool:
    return os.environ.get("NEURALBRIDGE_VERBOSE") == "1"


@contextlib.contextmanager
def silenced_stderr():
    """Send file descriptor 2 to /dev/null (C/C++ libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_stderr():
    """silenced_stderr() unless --verbose: for native libraries' chatter on fd 2."""
    return contextlib.nullcontext() if _verbose() else silenced_stderr()


def torch() -> ModuleType:
    return require("torch")


def onnx() -> ModuleType:
    return require("onnx")


def tensorflow() -> ModuleType:
    return require("tensorflow")


_TF_PREPARED = False


def _guard_triton_after_tensorflow() -> None:
    """TensorFlow already loaded (the user imported it first) and triton not yet: loading
    triton now would segfault, so mark it unavailable; torch then runs without it (CPU)."""
    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None  # `import triton` now raises ImportError


def _prepare_tensorflow_import() -> None:
    global _TF_PREPARED
    if _TF_PREPARED:
        return
    _TF_PREPARED = True
    if "tensorflow" not in sys.modules and is_installed("triton"):
        try:  # must precede TensorFlow, see module docstring
            importlib.import_module("triton")
        except Exception:  # a broken triton only matters if it is used later
            pass
    if not _verbose():
        quiet_tensorflow()


def quiet_tensorflow() -> None:
    """Silence TF/absl/oneDNN start-up chatter (shown again with --verbose)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("tensorflow", "absl", "tf2onnx", "h5py", "onnx2tf"):
        logging.getLogger(name).setLevel(logging.ERROR)
