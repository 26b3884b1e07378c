"""`check-input MODEL DATA`: explain why an input does not fit a model, and fix what is clear.

Each problem becomes a Finding with a kind, a message, and a suggested fix; `fixable` ones
(adding a batch dimension, NHWC <-> NCHW, a dtype cast, 0-255 -> 0-1, padding a sequence,
renaming inputs...) are applied by `fix_input`, whose result is checked again.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import InputSpecError
from .model import ModelHandle
from .options import Options
from .specs import TensorSpec

RANGES = ("0-1", "0-255")


@dataclass
class Finding:
    """One mismatch between the data and the model's inputs."""

    kind: str  # e.g. "missing-batch-dim", "layout", "dtype", "value-range"
    input: str | None
    message: str
    fix: str
    fixable: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class InputCheck:
    """The findings for one data set, and the corrected arrays (model input names)."""

    findings: list[Finding]
    specs: list[TensorSpec]
    fixed: dict = field(default_factory=dict)  # name -> array after the fixable fixes

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def fully_fixable(self) -> bool:
        return all(f.fixable for f in self.findings)


def check_arrays(specs: list[TensorSpec], data: dict, *, static: bool = True,
                 positional: bool = False, expect_range: str = "0-1") -> InputCheck:
    """Check `data` (name -> array) against `specs`. `static`: the model's fixed dims are
    binding (not for PyTorch, whose inferred sizes are only defaults). `positional`: the data
    names carry no meaning (a .npy file or an image)."""
    import numpy as np

    findings: list[Finding] = []
    pairs = _pair_inputs(specs, data, positional, findings)
    fixed = {}
    for spec, array in pairs:
        fixed[spec.name] = _check_one(spec, np.asarray(array), static, expect_range, findings)
    _check_batches(specs, fixed, findings)
    return InputCheck(findings, list(specs), fixed if all(f.fixable for f in findings) else {})


# ---------------------------------------------------------------- names and count
def _pair_inputs(specs, data, positional, findings) -> list[tuple[TensorSpec, object]]:
    names = [s.name for s in specs]
    given = list(data)
    if len(given) < len(specs) and not all(n in data for n in names):
        missing = [n for n in names if n not in data]
        if len(given) != 0 and not set(given) & set(names) and len(missing) == len(names):
            missing = names[len(given):]
        findings.append(Finding(
            "missing-input", None,
            f"the model takes {len(specs)} inputs ({', '.join(names)}); the data holds "
            f"{len(given)} ({', '.join(given) or 'none'})",
            f"add {', '.join(missing)} to the .npz (numpy.savez(path, "
            + ", ".join(f"{n}=..." for n in names) + "))"))
        known = [(s, data[s.name]) for s in specs if s.name in data]
        return known or list(zip(specs, data.values()))
    if all(n in data for n in names):
        extra = [k for k in given if k not in names]
        if extra:
            findings.append(Finding(
                "extra-input", ", ".join(extra),
                f"the data holds array(s) the model does not take: {', '.join(extra)}",
                "drop them", fixable=True))
        return [(s, data[s.name]) for s in specs]
    if len(given) > len(specs):
        findings.append(Finding(
            "extra-input", None,
            f"the model takes {len(specs)} input(s) ({', '.join(names)}); the data holds "
            f"{len(given)} ({', '.join(given)}) with other names",
            f"name the arrays {', '.join(names)} in the .npz"))
        return list(zip(specs, data.values()))
    if not positional:  # same count, other names: the order is the only guide
        findings.append(Finding(
            "input-names", ", ".join(given),
            f"the data names {', '.join(given)} do not match the model's inputs "
            f"{', '.join(names)}",
            "rename by position: " + ", ".join(f"{g} -> {n}" for g, n in zip(given, names)),
            fixable=True))
    return list(zip(specs, data.values()))


# ---------------------------------------------------------------- one input
def _check_one(spec: TensorSpec, array, static: bool, expect_range: str, findings):
    """Run the checks in the order the fixes must be applied; return the fixed array."""
    import numpy as np

    name = spec.name
    if array.dtype.kind not in "biuf":
        findings.append(Finding("dtype", name, f"{name} holds {array.dtype} values, not numbers",
                                "save a numeric array"))
        return array
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        count = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        findings.append(Finding("non-finite", name, f"{name} contains {count} NaN/inf value(s)",
                                "clean the data (e.g. numpy.nan_to_num) before running"))
    array = _check_rank(spec, array, findings)
    if array.ndim != spec.rank:
        return array
    array = _check_layout(spec, array, findings)
    array = _check_channels(spec, array, findings)
    array = _check_sizes(spec, array, static, findings)
    array = _check_dtype_and_range(spec, array, expect_range, findings)
    return array


def _check_rank(spec, array, findings):
    import numpy as np

    name = spec.name
    if array.ndim == spec.rank - 1:
        findings.append(Finding(
            "missing-batch-dim", name,
            f"{name} has shape {list(array.shape)} but the model takes {spec.shape_text()}: "
            "the batch dimension is missing",
            f"add it: array[None] -> {[1] + list(array.shape)}", fixable=True))
        return array[None]
    if array.ndim == spec.rank + 1 and array.shape[0] == 1:
        findings.append(Finding(
            "extra-dim", name,
            f"{name} has shape {list(array.shape)} (rank {array.ndim}) but the model takes rank "
            f"{spec.rank} {spec.shape_text()}",
            "drop the leading size-1 dimension: array[0]", fixable=True))
        return array[0]
    if array.ndim != spec.rank:
        findings.append(Finding(
            "rank", name, f"{name} has rank {array.ndim} {list(array.shape)}; the model takes "
            f"rank {spec.rank} {spec.shape_text()}",
            "reshape the data to the model's input shape"))
        return array
    return np.asarray(array)


def _channel_axis(spec) -> int | None:
    """1 for NCHW-like specs, -1 for NHWC-like ones (channels known, 1-4), else None."""
    if spec.rank < 3:
        return None
    first, last = spec.shape[1], spec.shape[-1]
    if isinstance(first, int) and first <= 4 and not (isinstance(last, int) and last <= 4):
        return 1
    if isinstance(last, int) and last <= 4 and not (isinstance(first, int) and first <= 4):
        return -1
    return None


def _check_layout(spec, array, findings):
    import numpy as np

    axis = _channel_axis(spec)
    if axis is None:
        return array
    channels = spec.shape[axis]
    other = -1 if axis == 1 else 1
    looks_other = array.shape[other] in (channels, 1, 3, 4) and array.shape[axis] not in (1, 3, 4)
    if array.shape[axis] == channels or not looks_other:
        return array
    rank = array.ndim
    if axis == 1:
        perm, given, wanted = (0, rank - 1) + tuple(range(1, rank - 1)), "NHWC", "NCHW"
    else:
        perm, given, wanted = (0,) + tuple(range(2, rank)) + (1,), "NCHW", "NHWC"
    findings.append(Finding(
        "layout", spec.name,
        f"{spec.name} is {given} {list(array.shape)} (channels {'last' if axis == 1 else 'first'})"
        f" but the model takes {wanted} {spec.shape_text()}",
        f"transpose: numpy.transpose(array, {perm})", fixable=True))
    return np.ascontiguousarray(np.transpose(array, perm))


def _check_channels(spec, array, findings):
    import numpy as np

    axis = _channel_axis(spec)
    if axis is None or array.shape[axis] == spec.shape[axis]:
        return array
    have, want = array.shape[axis], spec.shape[axis]
    if have == 4 and want == 3:
        findings.append(Finding("channels", spec.name, f"{spec.name} has 4 channels (RGBA); the "
                                "model takes 3 (RGB)", "drop the alpha channel", fixable=True))
        return np.take(array, [0, 1, 2], axis=axis)
    if have == 1 and want == 3:
        findings.append(Finding("channels", spec.name, f"{spec.name} has 1 channel (greyscale); "
                                "the model takes 3 (RGB)", "repeat the channel 3 times",
                                fixable=True))
        return np.repeat(array, 3, axis=axis)
    findings.append(Finding("channels", spec.name, f"{spec.name} has {have} channels; the model "
                            f"takes {want}", f"give {want} channels"))
    return array


def _check_sizes(spec, array, static, findings):
    """Fixed sizes of a static graph: sequence length (padded/truncated) and image size."""
    import numpy as np

    if not static:
        return array
    for axis in range(1, spec.rank):
        want, have = spec.shape[axis], array.shape[axis]
        if not isinstance(want, int) or want == have:
            continue
        if spec.rank in (2, 3) and axis == 1:
            action = "pad with zeros" if have < want else "truncate"
            findings.append(Finding(
                "sequence-length", spec.name,
                f"{spec.name} has sequence length {have}; this static model takes exactly {want}",
                f"{action} to {want} along axis 1 (or re-export with a dynamic length)",
                fixable=True))
            if have > want:
                array = np.take(array, range(want), axis=1)
            else:
                pad = [(0, 0)] * array.ndim
                pad[1] = (0, want - have)
                array = np.pad(array, pad)
        elif spec.rank >= 4:
            findings.append(Finding(
                "image-size", spec.name,
                f"{spec.name} has shape {list(array.shape)}; this static model takes "
                f"{spec.shape_text()}",
                "resize or crop the images to the model's size (not done automatically: "
                "which one is right depends on the training pipeline)"))
            break
        else:
            findings.append(Finding("shape", spec.name, f"{spec.name} dimension {axis} is {have};"
                                    f" the model takes {want}", "reshape the data"))
    return array


def _check_dtype_and_range(spec, array, expect_range, findings):
    import numpy as np

    name, want = spec.name, spec.dtype
    have = array.dtype.name
    if want.startswith(("int", "uint")) or want == "bool":
        if have != want:
            integral = array.dtype.kind in "biu" or bool(np.all(np.mod(array, 1) == 0))
            findings.append(Finding(
                "dtype", name, f"{name} is {have}; the model takes {want}"
                + ("" if integral else " and the values are not whole numbers"),
                f"cast: array.astype('{want}')" if integral else "pass integer ids",
                fixable=integral))
            array = array.astype(want) if integral else array
        return _check_id_range(spec, array, findings)
    if have != want:
        findings.append(Finding("dtype", name, f"{name} is {have}; the model takes {want}",
                                f"cast: array.astype('{want}')", fixable=True))
        array = array.astype(want)
    return _check_value_range(spec, array, expect_range, findings)


def _check_id_range(spec, array, findings):
    if spec.value_range and array.size:
        low, high = spec.value_range
        if array.min() < low or array.max() >= high:
            findings.append(Finding(
                "id-range", spec.name, f"{spec.name} holds ids from {array.min()} to "
                f"{array.max()}; the model's vocabulary is [{int(low)}, {int(high)})",
                "check the tokenizer matches the model"))
    return array


def _check_value_range(spec, array, expect_range, findings):
    if _channel_axis(spec) is None or not array.size:
        return array
    low, high = float(array.min()), float(array.max())
    if expect_range == "0-1" and low >= 0 and 1.5 < high <= 255:
        findings.append(Finding(
            "value-range", spec.name, f"{spec.name} values run {low:g}..{high:g}, like 0-255 "
            "pixels; the model expects 0-1 (--expect-range)", "scale: array / 255", fixable=True))
        return array / 255.0
    if expect_range == "0-255" and low >= 0 and high <= 1.0:
        findings.append(Finding(
            "value-range", spec.name, f"{spec.name} values run {low:g}..{high:g}, like 0-1; the "
            "model expects 0-255 (--expect-range)", "scale: array * 255", fixable=True))
        return array * 255.0
    return array


def _check_batches(specs, fixed, findings) -> None:
    sizes = {name: a.shape[0] for name, a in fixed.items() if getattr(a, "ndim", 0)}
    for spec in specs:
        batch = spec.shape[0] if spec.shape else None
        have = sizes.get(spec.name)
        if isinstance(batch, int) and have is not None and have != batch:
            findings.append(Finding(
                "batch-size", spec.name, f"{spec.name} has batch {have}; this model was exported "
                f"with a fixed batch of {batch}",
                f"split the data into batches of {batch}, or re-export with a dynamic batch"))
    if len(set(sizes.values())) > 1:
        findings.append(Finding(
            "batch-mismatch", None, "the inputs have different batch sizes: "
            + ", ".join(f"{k} {v}" for k, v in sizes.items()), "give every input the same batch"))


# ---------------------------------------------------------------- model-level entry points
def _data_dict(data) -> tuple[dict, bool]:
    """Accept a path, a dict of arrays, one array, or a list; (dict, names-are-positional)."""
    import numpy as np
    from pathlib import Path

    from .datafiles import IMAGE_SUFFIXES, read_data

    if isinstance(data, (str, Path)):
        suffix = Path(data).suffix.lower()
        return read_data(data), suffix == ".npy" or suffix in IMAGE_SUFFIXES
    if isinstance(data, dict):
        return {str(k): np.asarray(v) for k, v in data.items()}, False
    if isinstance(data, (list, tuple)):
        return {f"input_{i}": np.asarray(v) for i, v in enumerate(data)}, True
    return {"input_0": np.asarray(data)}, True


def model_specs(model, options: Options) -> tuple[ModelHandle, list[TensorSpec]]:
    """Load `model` and its input specs; an actionable error when they are unknown."""
    from .compare import load_model

    handle = load_model(model, options)
    if not handle.inputs:
        raise InputSpecError(f"cannot tell the inputs of {handle.name}",
                             hint="pass --input-shape (e.g. 1,3,224,224)")
    if handle.framework == "onnx":  # token ids index an embedding table: its size bounds them
        from dataclasses import replace

        from .backends.onnx_to_tf import _gather_vocab

        handle.inputs = [replace(s, value_range=(0, vocab)) if s.value_range is None and
                         s.dtype.startswith("int") and (vocab := _gather_vocab(handle.obj, s.name))
                         else s for s in handle.inputs]
    return handle, handle.inputs


def check_model_input(model, data, options: Options | None = None, *,
                      expect_range: str = "0-1") -> tuple[ModelHandle, InputCheck]:
    """Load the model and check `data` against its inputs."""
    options = options or Options()
    handle, specs = model_specs(model, options)
    arrays, positional = _data_dict(data)
    result = check_arrays(specs, arrays, static=handle.framework != "torch",
                          positional=positional, expect_range=expect_range)
    return handle, result


def write_fixed(result: InputCheck, path: str, force: bool = False) -> str:
    """Write the fixed arrays as an .npz named like the model's inputs (atomically)."""
    import numpy as np

    from .atomic import atomic_output, check_output

    if not path.endswith(".npz"):
        raise InputSpecError(f"the fixed input is written as .npz, not {path}",
                             hint="name it fixed.npz")
    check_output(path, force)
    with atomic_output(path, force) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{s.name: result.fixed[s.name] for s in result.specs})
    return path


def run_fixed(handle: ModelHandle, result: InputCheck) -> list:
    """Run the model on the fixed arrays; returns its outputs (raises on failure)."""
    from .pipeline import run_model

    return run_model(handle, [result.fixed[s.name] for s in result.specs])
