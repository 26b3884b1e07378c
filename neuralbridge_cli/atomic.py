"""Write outputs so that a failure never leaves half a model where a finished one is expected.

The artifact is written to a temporary sibling (same folder, so the final rename
is atomic on one filesystem) and moved into place only when complete. Side files written
next to it (`<tmp name>.data`, ONNX external weights) move along to `<name>.data`.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from . import interrupts
from .errors import ConversionError, OutputExistsError, UsageError

TMP_PREFIX = ".nbtmp-"
# .nbtmp-<random>-p<pid>-<name>: the pid lets a later run remove what a killed one left
_TMP_RE = re.compile(r"^\.nbtmp-[0-9a-f]{8}-(?:p(\d+)-)?")
_OLD_RE = re.compile(r"^\.nbold-[0-9a-f]{8}-p(\d+)-")


def check_output(path: str | Path, force: bool) -> Path:
    """Fail early (before any work) if `path` exists without --force or cannot be written."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink() and not _replaceable_folder(path):
        # never replace a user's folder (".", a project folder, photos.savedmodel/) with a
        # model, not even with --force: only a SavedModel (or an empty folder) is replaced
        what = ("is a folder that holds no SavedModel" if path.suffix == ".savedmodel"
                else "is a folder, not a model path")
        raise UsageError(f"the output {path} {what}; not replacing it, even with --force",
                         hint="give a new name, e.g. -o folder/model.onnx")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists", hint="pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise UsageError(f"the output folder {parent} {what}", hint="create it first"
                         if not parent.exists() else "choose another -o")
    _probe_writable(parent)
    return path


def _replaceable_folder(path: Path) -> bool:
    """A SavedModel (saved_model.pb/.pbtxt at its top) or an empty folder."""
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
        return True
    return next(path.iterdir(), None) is None


def _probe_writable(folder: Path) -> None:
    """os.access says yes to root on read-only mounts: create and remove a real file."""
    probe = folder / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-probe"
    try:
        probe.touch()
    except OSError as exc:
        raise UsageError(f"the output folder {folder} is not writable ({exc.strerror})",
                         hint="choose another -o") from exc
    probe.unlink(missing_ok=True)


def ensure_space(path: str | Path, needed: int) -> None:
    """Refuse before writing when the disk cannot hold the artifact: some writers (torch's
    .pt2 archive writer) abort the whole process on a full disk instead of raising."""
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    wanted = int(needed * 1.2) + 2**20  # archive overhead, metadata
    if needed and free < wanted:
        raise ConversionError(f"not enough disk space to write {path}: about "
                              f"{_human(wanted)} needed, {_human(free)} free",
                              hint="free some disk space or choose another -o")


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def final_name(tmp: str | Path) -> str:
    """The name a temporary path will be renamed to (`.nbtmp-1a2b3c4d-m.onnx` -> `m.onnx`)."""
    return _TMP_RE.sub("", Path(tmp).name)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def discard_output(path: str | Path) -> None:
    """Remove an output this run wrote (and its `.data` external-weights file)."""
    path = Path(path)
    remove(path)
    remove(path.with_name(path.name + ".data"))


@contextmanager
def atomic_output(path: str | Path, force: bool = False):
    """Yield a temporary path; on success move it to `path` (replacing it only with force)."""
    path = Path(path)
    check_output(path, force)
    # same folder (atomic rename) and same suffix (savers check it: .keras, .pt2, .h5)
    remove_stale_temporaries(path)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-p{os.getpid()}-{path.name}")
    interrupts.track(tmp)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise ConversionError(f"no space left to write {path} ({exc.strerror})",
                                      hint="free some disk space or choose another -o") from exc
            raise
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        if path.exists() and not force:  # appeared while we were writing
            raise OutputExistsError(f"{path} appeared during the conversion; not replacing it",
                                    hint="pass --force to overwrite it")
        for side in _side_files(tmp):  # external data first: the model never points at nothing
            os.replace(side, path.with_name(path.name + side.name[len(tmp.name):]))
        _replace(tmp, path)
    finally:
        remove(tmp)
        for side in _side_files(tmp):
            remove(side)
        interrupts.untrack(tmp)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries that a killed run (SIGKILL, a lost machine) left for `path`:
    those whose writing process no longer exists. A live writer's files are left alone."""
    removed = []
    folder = path.parent if str(path.parent) else Path(".")
    for pattern, regex in ((f"{TMP_PREFIX}*-{path.name}*", _TMP_RE),
                           (f".nbold-*-{path.name}", _OLD_RE)):
        for leftover in folder.glob(pattern):
            match = regex.match(leftover.name)
            if match and match.group(1) and not _alive(int(match.group(1))) \
                    and final_name_of(leftover, regex).startswith(path.name):
                remove(leftover)
                removed.append(leftover)
    return removed


def final_name_of(leftover: Path, regex: re.Pattern) -> str:
    return regex.sub("", leftover.name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _side_files(tmp: Path) -> list[Path]:
    return [p for p in tmp.parent.glob(f"{tmp.name}*") if p != tmp]


def _replace(tmp: Path, path: Path) -> None:
    if path.exists() and (path.is_dir() or tmp.is_dir()):
        backup = path.with_name(f".nbold-{uuid.uuid4().hex[:8]}-p{os.getpid()}-{path.name}")
        os.replace(path, backup)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(backup, path)
            raise
        remove(backup)
    else:
        os.replace(tmp, path)
