"""Source format detection by table: extension first, then content. No heavy imports."""
from __future__ import annotations

import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceNotFoundError, UnknownFormatError


@dataclass(frozen=True)
class Format:
    """A source format: its name, the framework that loads it, and a description."""

    name: str
    framework: str  # torch | tf | onnx
    description: str


FORMATS = {f.name: f for f in (
    Format("onnx", "onnx", "ONNX model"),
    Format("torch-import", "torch", "PyTorch import path (package.module:Factory)"),
    Format("torch-state-dict", "torch", "PyTorch state dict (.pt/.pth/.bin, needs --model-class)"),
    Format("safetensors", "torch", "safetensors state dict (needs --model-class)"),
    Format("torchscript", "torch", "TorchScript archive"),
    Format("torch-exported", "torch", "torch.export ExportedProgram (.pt2)"),
    Format("torch-pickle", "torch", "pickled PyTorch module (needs --trust-pickle)"),
    Format("savedmodel", "tf", "TensorFlow SavedModel folder"),
    Format("keras", "tf", "Keras v3 archive (.keras)"),
    Format("h5", "tf", "Keras HDF5 model (.h5)"),
    Format("tflite", "tf", "TensorFlow Lite flatbuffer"),
)}

# extension -> format name; ambiguous torch files are refined by content
EXTENSIONS = {
    ".onnx": "onnx",
    ".pt2": "torch-exported",
    ".pt": "torch-state-dict",
    ".pth": "torch-state-dict",
    ".bin": "torch-state-dict",
    ".ckpt": "torch-state-dict",
    ".safetensors": "safetensors",
    ".torchscript": "torchscript",
    ".keras": "keras",
    ".h5": "h5",
    ".hdf5": "h5",
    ".tflite": "tflite",
}

# content signatures, tried in order on files with no or an unknown extension
_IMPORT_PATH_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_import_path(text: str) -> bool:
    return bool(_IMPORT_PATH_RE.match(text)) and not Path(text).exists()


def detect(source: str, override: str | None = None) -> Format:
    """Return the Format of `source` (a path or an import path)."""
    if override:
        return _by_name(override)
    if is_import_path(source):
        return FORMATS["torch-import"]
    path = Path(source)
    if not path.exists():
        raise SourceNotFoundError(
            f"no such file or folder: {source}",
            hint="check the path, or give an import path like torchvision.models:resnet18",
        )
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            return FORMATS["savedmodel"]
        raise UnknownFormatError(
            f"{source} is a folder without saved_model.pb",
            hint="point at a SavedModel folder or a model file",
        )
    if path.stat().st_size == 0:
        raise UnknownFormatError(f"{source} is an empty file", hint="re-export the model")
    name = EXTENSIONS.get(path.suffix.lower())
    if name and name.startswith("torch") and name != "torch-exported":
        return FORMATS[_refine_torch(path)]
    if name == "keras" or (name is None and zipfile.is_zipfile(path)):
        sniffed = _sniff_zip(path)
        if sniffed:
            return FORMATS[sniffed]
    if name:
        return FORMATS[name]
    sniffed = _sniff_bytes(path)
    if sniffed:
        return FORMATS[sniffed]
    raise UnknownFormatError(
        f"cannot tell the format of {source}",
        hint=f"give it a known extension or pass --from ({', '.join(FORMATS)})",
    )


def _by_name(name: str) -> Format:
    aliases = {"torch": "torch-state-dict", "pytorch": "torch-state-dict", "tf": "savedmodel",
               "saved_model": "savedmodel", "pt2": "torch-exported", "exported": "torch-exported"}
    key = aliases.get(name, name)
    if key not in FORMATS:
        raise UnknownFormatError(f"unknown --from format {name!r}",
                                 hint=f"use one of: {', '.join(FORMATS)}")
    return FORMATS[key]


# what reading a damaged zip can raise besides BadZipFile (found by `make fuzz`:
# "zip file version 11.9" is a NotImplementedError; an encrypted entry a RuntimeError)
ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError,
              RuntimeError, struct.error, zlib.error)


def _sniff_zip(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except ZIP_ERRORS:
        return None
    if "config.json" in names and any(n.endswith(".weights.h5") for n in names) or "metadata.json" in names and "config.json" in names:
        return "keras"
    if any(n.endswith("/constants.pkl") or n.endswith("constants/") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("serialized_exported_program.json") or "/models/" in n and n.endswith(".json") for n in names):
        return "torch-exported"
    if any(n.endswith("data.pkl") for n in names):
        return "torch-state-dict"
    return None


def _refine_torch(path: Path) -> str:
    """A .pt may be a state dict, a TorchScript archive, an ExportedProgram or a pickle."""
    if path.suffix.lower() == ".safetensors":
        return "safetensors"
    if zipfile.is_zipfile(path):
        return _sniff_zip(path) or "torch-state-dict"
    return "torch-state-dict"  # legacy (non-zip) torch.save format


def _sniff_bytes(path: Path) -> str | None:
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head[4:8] == b"TFL3":
        return "tflite"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "h5"
    if head[:1] == b"\x08" and len(head) > 2:  # protobuf field 1 varint: ONNX ir_version
        return "onnx"
    return None
