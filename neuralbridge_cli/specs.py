"""Tensor specs: parsing `--input-shape`, dtypes, and seeded dummy inputs.

A TensorSpec is framework-neutral: a name, a shape whose unknown dimensions
are None (or a symbolic name string), and a numpy dtype name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from .errors import InputSpecError

DTYPES = (
    "float32", "float16", "float64", "bfloat16",
    "int8", "int16", "int32", "int64", "uint8", "bool",
)
DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16",
                 "int": "int64", "long": "int64", "fp32": "float32", "fp16": "float16"}

# Sizes used to fill dimensions that are unknown in a spec (batch 2, not 1:
# a dimension of size 1 is easily frozen or broadcast by an exporter).
DEFAULT_BATCH = 2
STATIC_BATCH = 1  # --static with no batch given: what deployment runtimes expect
DEFAULT_SEQUENCE = 16
DEFAULT_IMAGE_SIZE = 224
MAX_DUMMY_ELEMENTS = 2**28  # 1 GiB of float32 per input: beyond it, a shape is a typo


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output."""

    name: str
    shape: tuple  # ints, or None/str for dynamic dims
    dtype: str = "float32"
    # for integer inputs (token ids, class indices): values are drawn from [0, high)
    value_range: tuple[float, float] | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


    def with_dynamic_batch(self) -> "TensorSpec":
        if not self.shape:
            return self
        return replace(self, shape=(None,) + tuple(self.shape[1:]))

    def concrete_shape(self, batch: int = DEFAULT_BATCH) -> tuple[int, ...]:
        """Fill unknown dims: the first with `batch`, the others with a typical size."""
        out = []
        for i, d in enumerate(self.shape):
            if isinstance(d, int) and d >= 0:
                out.append(d)
            elif i == 0:
                out.append(batch)
            else:
                out.append(DEFAULT_SEQUENCE if self.rank <= 3 else DEFAULT_IMAGE_SIZE)
        return tuple(out)

    def as_dict(self) -> dict:
        """JSON form; dynamic dims are null, or their symbolic name when they have one."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def normalize_dtype(name: str) -> str:
    key = str(name).strip().lower().replace("torch.", "").replace("tf.", "")
    key = DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise InputSpecError(
            f"unknown dtype {name!r}", hint=f"use one of: {', '.join(DTYPES)}"
        )
    return key


_SHAPE_RE = re.compile(r"^\s*(?:(?P<name>[^:\[\]]+?)\s*:\s*)?\[?(?P<dims>[^\[\]]*)\]?\s*$")


def parse_shape(text: str) -> tuple[str | None, tuple]:
    """Parse `1,3,224,224`, `[1,3,224,224]`, `x:1,3,224,224` or `ids:?,16` (? or -1 = dynamic)."""
    match = _SHAPE_RE.match(text or "")
    dims_text = match.group("dims").strip() if match else ""
    if not match or not dims_text:
        raise InputSpecError(
            f"bad --input-shape {text!r}",
            hint="write it as 1,3,224,224 or name:1,3,224,224 (? or -1 for a dynamic dim)",
        )
    dims = []
    for part in re.split(r"[,x]\s*", dims_text):
        part = part.strip()
        if part in ("?", "-1", "None", "none", "N", "batch"):
            dims.append(None)
        elif part.isdigit() and int(part) > 0:
            dims.append(int(part))
        else:
            raise InputSpecError(
                f"bad dimension {part!r} in --input-shape {text!r}",
                hint="dimensions are positive integers, or ? / -1 for a dynamic one",
            )
    name = match.group("name")
    return (name.strip() if name else None), tuple(dims)


def parse_dtypes(values: Sequence[str] | None) -> dict[str | None, str]:
    """`--dtype int64` (all inputs) or `--dtype ids:int64` (one input)."""
    out: dict[str | None, str] = {}
    for value in values or ():
        name, _, dtype = value.rpartition(":")
        out[name or None] = normalize_dtype(dtype)
    return out


def specs_from_flags(shapes: Sequence[str] | None, dtypes: Sequence[str] | None = None,
                     ) -> list[TensorSpec] | None:
    """Build specs from CLI flags; None when no shape was given."""
    if not shapes:
        return None
    dtype_map = parse_dtypes(dtypes)
    specs, named = [], set()
    for i, text in enumerate(shapes):
        name, dims = parse_shape(text)
        if name is not None:
            named.add(name)
        spec_name = name or f"input_{i}"
        dtype = dtype_map.get(spec_name, dtype_map.get(None, "float32"))
        specs.append(TensorSpec(spec_name, dims, dtype))
    if named and len(named) != len(specs):
        raise InputSpecError("mix of named and unnamed --input-shape values",
                             hint="name every input (name:1,3,224,224) or none of them")
    return specs


def reconcile(model_specs: Sequence[TensorSpec] | None,
              user_specs: Sequence[TensorSpec] | None) -> list[TensorSpec] | None:
    """Overlay user-given shapes on the model's own specs (by name, else by position)."""
    if not user_specs:
        return list(model_specs) if model_specs else None
    if not model_specs:
        return list(user_specs)
    by_name = {s.name: s for s in model_specs}
    if all(u.name in by_name for u in user_specs):
        merged = {s.name: s for s in model_specs}
        for u in user_specs:
            base = by_name[u.name]
            _check_rank(base, u)
            merged[u.name] = replace(base, shape=u.shape, dtype=_pick_dtype(u, base))
        return [merged[s.name] for s in model_specs]
    if len(user_specs) != len(model_specs):
        raise InputSpecError(
            f"the model has {len(model_specs)} input(s) "
            f"({', '.join(s.name for s in model_specs)}) but {len(user_specs)} shape(s) were given",
            hint="pass one --input-shape per input, named like " + f"{model_specs[0].name}:1,...",
        )
    unknown = [u.name for u in user_specs
               if u.name not in by_name and not re.fullmatch(r"input_\d+", u.name)]
    if unknown:  # a named --input-shape for an input the model does not have
        raise InputSpecError(f"the model has no input named {unknown[0]!r} (its inputs: "
                             f"{', '.join(s.name for s in model_specs)})",
                             hint=f"name it like {model_specs[0].name}:1,... or leave the name out")
    out = []
    for base, u in zip(model_specs, user_specs):
        _check_rank(base, u)
        out.append(replace(base, shape=u.shape, dtype=_pick_dtype(u, base)))
    return out


def _pick_dtype(user: TensorSpec, base: TensorSpec) -> str:
    return user.dtype if user.dtype != "float32" else base.dtype


def _check_rank(base: TensorSpec, user: TensorSpec) -> None:
    if base.rank and user.rank != base.rank:
        raise InputSpecError(
            f"input {base.name!r} has rank {base.rank} {base.shape_text()}, "
            f"but --input-shape gives rank {user.rank} {user.shape_text()}",
            hint=f"give {base.rank} dimensions",
        )


def dummy_inputs(specs: Iterable[TensorSpec], batch: int = DEFAULT_BATCH, seed: int = 0) -> list:
    """Seeded random numpy arrays for the specs (floats ~ N(0,1), ints in range)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        if spec.dtype in ("string", "object", "str"):
            raise InputSpecError(f"input {spec.name} is a string tensor",
                                 hint="only models with numeric inputs can be converted; keep "
                                      "the text handling outside the model")
        shape = spec.concrete_shape(batch)
        size = int(np.prod(shape, dtype=np.float64))
        if size > MAX_DUMMY_ELEMENTS:
            raise InputSpecError(
                f"input {spec.name} of shape {list(shape)} has {size:.3g} values, too many to "
                "test with", hint="give a realistic --input-shape")
        if spec.dtype == "bool":
            arrays.append(rng.integers(0, 2, size=shape).astype(bool))
        elif spec.dtype.startswith(("int", "uint")):
            low, high = spec.value_range or (0, 10)
            arrays.append(rng.integers(int(low), int(high), size=shape).astype(spec.dtype))
        else:
            dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype
            arrays.append(rng.standard_normal(size=shape).astype(dtype))
    return arrays


def fixed_batch(specs: Sequence[TensorSpec], static: bool,
                keep: Sequence[bool] = ()) -> list[TensorSpec]:
    """Batch dim dynamic unless --static (then the concrete shape is kept, an unknown batch
    becoming STATIC_BATCH). `keep[i]` marks inputs whose batch the model itself fixes (an
    ONNX/TF graph with batch 1): left as is."""
    if static:
        return [replace(s, shape=s.concrete_shape(STATIC_BATCH)) for s in specs]
    return [s if i < len(keep) and keep[i] else s.with_dynamic_batch()
            for i, s in enumerate(specs)]
