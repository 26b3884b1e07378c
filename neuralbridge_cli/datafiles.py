"""Reading input data files: .npz (named arrays), .npy (one array), PNG/JPEG images."""
from __future__ import annotations

from pathlib import Path

from .errors import InputSpecError, SourceNotFoundError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def read_data(path: str | Path) -> dict:
    """Name -> numpy array, in file order. A .npy or an image gives one array named after
    the file's stem; an image is its raw (H, W, C) uint8 pixels (no resizing, no scaling)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise SourceNotFoundError(f"no such data file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        if suffix == ".npy":
            return {path.stem: np.load(path, allow_pickle=False)}
        if suffix in IMAGE_SUFFIXES:
            return {path.stem: read_image(path)}
    except (ValueError, OSError) as exc:
        raise InputSpecError(f"cannot read {path}: {str(exc).splitlines()[0]}",
                             hint="write arrays with numpy.savez / numpy.save") from exc
    raise UsageError(f"unknown data file type {path.suffix!r}",
                     hint="use .npz, .npy or an image (.png, .jpg)")


def read_image(path: Path):
    """An image file as an (H, W, C) uint8 array (grey images keep one channel)."""
    import numpy as np

    from . import lazy

    image_mod = lazy.require("PIL.Image", "read image files")
    with image_mod.open(path) as img:
        if img.mode not in ("L", "RGB", "RGBA"):
            img = img.convert("RGB")
        array = np.asarray(img)
    return array[..., None] if array.ndim == 2 else array


def arrays_for(specs, data: dict) -> list:
    """The arrays in the specs' order: by name when every input is named in `data`, else by
    position. Raises InputSpecError when the count does not fit (check-input explains more)."""
    names = [s.name for s in specs]
    if all(n in data for n in names):
        return [data[n] for n in names]
    if len(data) != len(specs):
        raise InputSpecError(
            f"the model takes {len(specs)} input(s) ({', '.join(names)}) but the data file "
            f"holds {len(data)} ({', '.join(data)})",
            hint="run `neuralbridge check-input MODEL DATA` for a diagnosis")
    return list(data.values())
