"""Source hashes recorded next to each output, so `--skip-existing` can resume a batch.

For an output `out/a.onnx` the record is the hidden file `out/.a.onnx.neuralbridge.json`,
written (atomically) only after the output itself was renamed into place. An output
without a matching record is treated as missing and converted again.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

RECORD_SUFFIX = ".neuralbridge.json"
_CHUNK = 1 << 20


def source_hash(path: Path) -> str:
    """sha256 of a model file, or of a SavedModel folder's files (relative names + contents)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def settings_key(target: str | None, settings: dict) -> str:
    """A short fingerprint of what steers a conversion (target and effective settings):
    changing them invalidates a recorded output just like changing the source."""
    text = json.dumps({"to": target, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(output: Path) -> Path:
    return output.with_name(f".{output.name}{RECORD_SUFFIX}")


def write_record(output: Path, data: dict) -> None:
    """Write the record for `output` (tmp + rename: never half a record)."""
    path = record_path(output)
    tmp = path.with_name(f".nbtmp-{uuid.uuid4().hex[:8]}-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_record(output: Path) -> dict | None:
    try:
        return json.loads(record_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_up_to_date(output: Path, digest: str, key: str) -> dict | None:
    """The record when `output` was converted from this exact source with these settings."""
    record = read_record(output)
    if not record or record.get("source_sha256") != digest or record.get("settings") != key:
        return None
    written = output.parent / Path(record.get("output") or output.name).name
    return record if written.exists() else None
