"""Find the models under a folder, with their per-model settings from `neuralbridge.toml` files.

A model is a file with a known model extension (formats.EXTENSIONS) or a SavedModel folder
(which is one model, not a folder to walk into). Hidden entries (.nbtmp-* partial outputs,
.git, ...) are skipped.

Settings: a `neuralbridge.toml` in the batch root or any folder below applies to the models in
that folder and its subfolders, nearer files winning. Top-level keys are the config keys of
`--config`; a table named after a file (or a glob, relative to the toml's folder) applies to
the matching models only:

    input_shape = "1,3,32,32"          # every model here and below
    ["resnet18.pt"]                     # only this one
    model_class = "torchvision.models:resnet18"
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import formats
from ..errors import NeuralBridgeError, UsageError, first_line
from ..options import CONFIG_KEYS, check_config_keys

CONFIG_NAME = "neuralbridge.toml"


@dataclass
class Model:
    """One model found in the batch folder."""

    path: Path  # as found (root / relative)
    relative: str  # POSIX path relative to the batch root: the model's identity
    format: str | None = None  # formats.FORMATS key; None when detection failed
    framework: str | None = None
    size: int = 0  # bytes (a SavedModel: all its files)
    settings: dict = field(default_factory=dict)  # merged neuralbridge.toml settings
    error: str | None = None  # why it cannot be converted, known before any work


def is_savedmodel_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "saved_model.pb").exists()
                              or (path / "saved_model.pbtxt").exists())


# what a SavedModel folder holds besides saved_model.pb: with one of these but no .pb, the
# folder is a broken SavedModel (reported as such), not a folder of models
SAVEDMODEL_PARTS = ("variables", "assets", "fingerprint.pb", "keras_metadata.pb")


def is_batch_source(source: str) -> bool:
    """True when `source` is a folder of models (not a SavedModel, whole or broken)."""
    path = Path(source)
    if not path.is_dir() or is_savedmodel_dir(path):
        return False
    return not any((path / part).exists() for part in SAVEDMODEL_PARTS)


def discover(root: str | Path, include: list[str] | None = None,
             exclude: list[str] | None = None, skip: list[Path] | None = None) -> list[Model]:
    """All models under `root` matching the globs, sorted by relative path.

    `include`/`exclude` globs match the relative path or the file name (`*.onnx`, `old/*`).
    Folders in `skip` (e.g. the output folder when it lies inside root) are not walked.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    skipped = {p.resolve() for p in skip or []}
    configs = _ConfigTree(root)
    models = []
    for path in _walk(root, skipped):
        relative = path.relative_to(root).as_posix()
        if not _selected(relative, include, exclude):
            continue
        model = Model(path, relative, size=_size(path))
        model.settings = configs.settings_for(path)
        try:
            fmt = formats.detect(str(path), model.settings.get("from"))
            model.format, model.framework = fmt.name, fmt.framework
        except NeuralBridgeError as exc:
            model.error = str(exc)
        models.append(model)
    return sorted(models, key=lambda m: m.relative)


def _walk(root: Path, skipped: set[Path]):
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            sub = here / name
            if name.startswith(".") or sub.resolve() in skipped:
                continue
            if is_savedmodel_dir(sub):
                yield sub  # one model: do not walk into it
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in formats.EXTENSIONS:
                yield here / name


def _selected(relative: str, include, exclude) -> bool:
    name = relative.rsplit("/", 1)[-1]

    def matches(patterns):
        return any(fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(name, p)
                   for p in patterns)

    if include and not matches(include):
        return False
    return not (exclude and matches(exclude))


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class _ConfigTree:
    """The neuralbridge.toml files from the root down, parsed once per folder."""

    def __init__(self, root: Path):
        self.root = root
        self.cache: dict[Path, tuple[dict, dict] | None] = {}

    def settings_for(self, model_path: Path) -> dict:
        folder = model_path.parent
        chain = [folder, *folder.parents]
        chain = list(reversed(chain[:chain.index(self.root) + 1])) if self.root in chain else [folder]
        settings: dict = {}
        for directory in chain:  # root first, the model's own folder last (wins)
            parsed = self._parse(directory)
            if parsed is None:
                continue
            common, tables = parsed
            settings.update(common)
            relative = model_path.relative_to(directory).as_posix()
            for pattern, table in tables.items():
                if fnmatch.fnmatchcase(relative, pattern):
                    settings.update(table)
        return settings

    def _parse(self, directory: Path):
        if directory not in self.cache:
            path = directory / CONFIG_NAME
            self.cache[directory] = parse_config(path) if path.is_file() else None
        return self.cache[directory]


def parse_config(path: Path) -> tuple[dict, dict]:
    """(settings for every model, {file name or glob: settings}) from one neuralbridge.toml."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot parse {path}: {first_line(exc)}") from exc
    data = data.get("neuralbridge", data)
    common, tables = {}, {}
    for key, value in data.items():
        normal = str(key).replace("-", "_")
        if normal in CONFIG_KEYS:
            common[normal] = value
        elif isinstance(value, dict):  # a per-file table
            tables[str(key)] = check_config_keys(value, f"{path} [{key!r}]")
        else:
            raise UsageError(f"unknown key {key!r} in {path}",
                             hint=f"known keys: {', '.join(sorted(CONFIG_KEYS))}; a table "
                                  "named after a model file applies to that model")
    return common, tables
