"""Write outputs so that a failure never leaves half a model where a finished one is expected.

The artifact is written to a temporary sibling (same folder, so the final rename
is atomic on one filesystem) and moved into place only when complete.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputExistsError, UsageError


def check_output(path: str | Path, force: bool) -> Path:
    """Fail early (before any work) if `path` exists without --force or cannot be written."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists", hint="pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"the output folder {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"the output folder {parent} is not writable")
    return path


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: str | Path, force: bool = False):
    """Yield a temporary path; on success move it to `path` (replacing it only with force)."""
    path = Path(path)
    check_output(path, force)
    # same folder (atomic rename) and same suffix (savers check it: .keras, .pt2, .h5)
    tmp = path.with_name(f".nbtmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        if path.exists() and not force:  # appeared while we were writing
            raise OutputExistsError(f"{path} appeared during the conversion; not replacing it",
                                    hint="pass --force to overwrite it")
        _replace(tmp, path)
    finally:
        remove(tmp)
        for side in path.parent.glob(f"{tmp.name}*"):  # side files, e.g. external data
            remove(side)


def _replace(tmp: Path, path: Path) -> None:
    if path.exists() and (path.is_dir() or tmp.is_dir()):
        backup = path.with_name(f".nbold-{uuid.uuid4().hex[:8]}-{path.name}")
        os.replace(path, backup)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(backup, path)
            raise
        remove(backup)
    else:
        os.replace(tmp, path)
