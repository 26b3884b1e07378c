"""The one-way data flow: detect -> load -> input specs -> route -> save -> validate -> report.

Every entry point (CLI commands and the Python API) goes through these functions.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import formats
from .atomic import atomic_output, check_output, discard_output, ensure_space
from .doctor import require_route
from .backends import backend
from .errors import ConversionError, InputSpecError, NeuralBridgeError, UsageError, first_line
from .model import ModelHandle
from .options import Options
from .specs import DEFAULT_BATCH, TensorSpec, dummy_inputs, fixed_batch, reconcile
from .validate import ValidationReport, check, compare_outputs


@dataclass(frozen=True)
class Target:
    """A conversion target: the framework it runs in and the artifact it writes."""

    name: str
    framework: str
    suffix: str  # file suffix, or a folder suffix for SavedModel
    description: str


TARGETS = {t.name: t for t in (
    Target("onnx", "onnx", ".onnx", "ONNX model"),
    Target("torch", "torch", ".pt2", "PyTorch ExportedProgram (.pt2; TorchScript .pt if export fails)"),
    Target("torchscript", "torch", ".pt", "TorchScript archive"),
    Target("tf", "tf", ".savedmodel", "TensorFlow SavedModel folder"),
    Target("keras", "tf", ".keras", "Keras 3 archive"),
    Target("h5", "tf", ".h5", "Keras HDF5 file"),
    Target("tflite", "tf", ".tflite", "TensorFlow Lite (float32)"),
)}
# with no --to, a model goes to "the other" framework
DEFAULT_TARGET = {"torch": "tf", "tf": "torch", "onnx": "tf"}


@dataclass
class ConversionResult:
    """What a conversion did, for the report and the API."""

    source: ModelHandle
    target: ModelHandle
    target_name: str
    output: str | None = None
    saved_format: str | None = None
    route: list[str] = field(default_factory=list)
    strategy: str | None = None
    report: ValidationReport | None = None
    onnx_path: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def converted_inputs(self) -> list[TensorSpec]:
        """The converted model's inputs: the source's, permuted where it takes NHWC."""
        perms = getattr(self.target, "input_perms", None) or {}
        return [replace(s, shape=tuple(s.shape[p] for p in perms[i])) if i in perms else s
                for i, s in enumerate(self.source.inputs or [])]

    def as_dict(self) -> dict:
        perms = getattr(self.target, "input_perms", None) or {}
        return {
            "source": {"path": self.source.source, "format": self.source.format,
                       "framework": self.source.framework, "name": self.source.name},
            "target": self.target_name,
            "output": self.output,
            "saved_format": self.saved_format,
            "route": self.route,
            "strategy": self.strategy,
            "layout": "nhwc" if perms else "keep",
            "inputs": [s.as_dict() for s in self.source.inputs or []],
            "converted_inputs": [s.as_dict() for s in self.converted_inputs()],
            "validation": self.report.as_dict() if self.report else None,
            "onnx": self.onnx_path,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
        }


# ---------------------------------------------------------------- steps
def target_for(name: str | None, source_framework: str) -> Target:
    name = name or DEFAULT_TARGET[source_framework]
    aliases = {"pytorch": "torch", "pt2": "torch", "savedmodel": "tf", "tensorflow": "tf",
               "saved_model": "tf"}
    name = aliases.get(name, name)
    if name not in TARGETS:
        raise UsageError(f"unknown target {name!r}", hint=f"use one of: {', '.join(TARGETS)}")
    return TARGETS[name]


def target_from_suffix(output: str) -> str | None:
    """Guess --to from an output name (model.onnx -> onnx); None when it says nothing."""
    suffix = Path(output).suffix.lower()
    by_suffix = {t.suffix: t.name for t in TARGETS.values()}
    return by_suffix.get(suffix)


EXACT_SUFFIX_TARGETS = ("onnx", "keras", "h5", "tflite")  # a file named so must be that
WEIGHTS_ONLY_TARGETS = ("torch", "torchscript", "keras", "h5")


def _check_suffix(output: str, to: str | None, weights_only: bool = False) -> None:
    """Refuse `--to torch -o model.onnx`: the file would not load as what its name says."""
    if not to or to not in TARGETS:
        return
    wanted = TARGETS[to]
    if weights_only:
        _check_weights_only(output, wanted)
        return
    by_suffix = target_from_suffix(output)
    if not by_suffix:
        return
    named = TARGETS[by_suffix]
    if wanted.framework != named.framework or (wanted.name != named.name and (
            wanted.name in EXACT_SUFFIX_TARGETS or named.name in EXACT_SUFFIX_TARGETS)):
        raise UsageError(f"the output name {output} says {named.name}, but the target is "
                         f"{wanted.name}", hint=f"name it *{wanted.suffix} or change --to")


def _check_weights_only(output: str | None, target: Target) -> None:
    """--weights-only writes a torch state dict or a Keras `.weights.h5`; nothing else."""
    if target.name not in WEIGHTS_ONLY_TARGETS:
        raise UsageError(f"--weights-only writes a PyTorch state dict (--to torch) or Keras "
                         f"weights (--to keras or h5), not {target.name}",
                         hint="drop --weights-only to write the whole model")
    if target.framework == "tf" and output and not str(output).endswith(".weights.h5"):
        stem = Path(str(output)).name.split(".")[0]
        raise UsageError(f"Keras weights files are named *.weights.h5, not {output}",
                         hint=f"-o {stem}.weights.h5")


def load_source(source: Any, options: Options) -> ModelHandle:
    """Detect the format of a path / import path and load it, or adopt a live model object."""
    if isinstance(source, ModelHandle):
        return source
    if isinstance(source, (str, Path)):
        fmt = formats.detect(str(source), options.source_format)
        options.progress(f"loading {source} ({fmt.description})")
        return backend(fmt.framework).load(str(source), fmt, options)
    for framework in ("torch", "tf", "onnx"):
        handle = _try_wrap(framework, source)
        if handle is not None:
            return handle
    raise UsageError(f"cannot convert a {type(source).__name__}",
                     hint="pass a torch.nn.Module, a Keras model / tf.Module, an onnx.ModelProto "
                          "or a path")


def _try_wrap(framework: str, obj):
    import sys

    required = {"torch": "torch", "tf": "tensorflow", "onnx": "onnx"}[framework]
    if required not in sys.modules:  # a live object implies its framework is imported
        return None
    return backend(framework).wrap(obj)


def resolve_specs(handle: ModelHandle, options: Options) -> list[TensorSpec]:
    """The model's own specs overlaid with the user's; an actionable error when unknown."""
    model_specs = backend(handle.framework).input_specs(handle)
    try:
        specs = reconcile(model_specs, options.input_specs)
    except InputSpecError as exc:  # say which model the shapes were meant for
        exc.message = f"{handle.name}: {exc.message}"
        raise
    if options.input_specs:  # the user's shapes replace what was inferred
        handle.notes = [n for n in handle.notes if not n.startswith("inferred input")]
        specs = _name_unnamed(specs, model_specs, handle.call_names)
    if not specs:
        raise InputSpecError(
            f"cannot infer the input shape of {handle.name}",
            hint="pass it, e.g. --input-shape 1,3,224,224 (one per input: "
                 "--input-shape x:1,3,224,224 --input-shape mask:1,16 --dtype mask:int64)")
    if options.input_dtypes:
        specs = [replace(s, dtype=options.input_dtypes.get(s.name, options.input_dtypes.get(
            None, s.dtype))) for s in specs]
    for spec in specs:
        if spec.dtype == "string":
            raise InputSpecError(f"{handle.name}: input {spec.name} is a string tensor",
                                 hint="only models with numeric inputs can be converted; keep "
                                      "the text handling outside the model")
    # a graph whose own batch dim is a number cannot be given another batch
    fixed = [handle.framework != "torch" and bool(m.shape) and isinstance(m.shape[0], int)
             for m in model_specs or []]
    handle.inputs = fixed_batch(specs, options.static, fixed)
    return handle.inputs


def _name_unnamed(specs, model_specs, forward_names) -> list[TensorSpec]:
    """Unnamed --input-shape values (input_0, input_1) for a model that lists no inputs of
    its own take the names of its forward() parameters, when the counts agree."""
    if model_specs or not specs or not forward_names or len(forward_names) != len(specs):
        return specs
    if not all(re.fullmatch(r"input_\d+", s.name) for s in specs):
        return specs
    return [replace(s, name=n) for s, n in zip(specs, forward_names)]


def run_model(handle: ModelHandle, arrays: list) -> list:
    """One inference in the model's own framework; inputs permuted per handle.input_perms."""
    import numpy as np

    if handle.input_perms:
        arrays = [np.ascontiguousarray(np.transpose(a, handle.input_perms[i]))
                  if i in handle.input_perms else a for i, a in enumerate(arrays)]
    try:
        return backend(handle.framework).run(handle, arrays)
    except NeuralBridgeError:
        raise
    except Exception as exc:
        shapes = ", ".join(f"{s.name}{list(a.shape)} {a.dtype}" for s, a in
                           zip(handle.inputs or [], arrays))
        message = first_line(exc)
        raise ConversionError(f"running {handle.name} ({handle.framework}) on {shapes} failed: "
                              f"{message}", hint=_run_failure_hint(message)) from exc


def _run_failure_hint(message: str) -> str:
    """Point at the input flags only when the runtime complained about inputs."""
    if re.search(r"dimension|shape|rank|dtype|data type|type \(|size mismatch|expected",
                 message, re.IGNORECASE):
        return "check --input-shape / --dtype"
    return "run again with --debug for the full error"



def validate(reference: list, candidate: ModelHandle, arrays: list, names, options: Options,
             label: str = "") -> ValidationReport:
    outputs = run_model(candidate, arrays)
    batch = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else DEFAULT_BATCH
    report = compare_outputs(reference, outputs, names, atol=options.atol, rtol=options.rtol,
                             batch=batch)
    report.candidate = label
    return report


# ---------------------------------------------------------------- route
AUTO = "<auto>"  # output sentinel: name the output after the source (CLI default)


def convert(source: Any, to: str | None = None, output: str | None = None,
            options: Options | None = None) -> ConversionResult:
    """Convert `source` to the target `to`; save to `output` when given; validate.

    `output=AUTO` names the output after the source file's stem or the model's class.
    """
    options = (options or Options()).check()
    started = time.perf_counter()
    if output and output != AUTO:
        check_output(output, options.force)
        to = to or target_from_suffix(output)
        _check_suffix(output, to, options.weights_only)
    if options.save_onnx:
        check_output(options.save_onnx, options.force)
    handle = load_source(source, options)
    target = target_for(to, handle.framework)
    require_route(handle.framework, target.name)  # a missing framework: say so before working
    if options.weights_only:
        _check_weights_only(None if output == AUTO else output, target)
    if options.precision != "fp32":
        from .precision import prepare

        prepare(options, target.name)
    if output == AUTO:
        output = str(check_output(default_output(handle.name, source, target,
                                                 options.weights_only), options.force))
    if output and isinstance(source, (str, Path)) and Path(output).exists():
        out, src = Path(output).resolve(), Path(str(source)).resolve()
        if out == src:
            raise UsageError(f"the output {output} is the source itself", hint="choose another -o")
        if out.is_dir() and src.is_relative_to(out):  # replacing the folder deletes the source
            raise UsageError(f"the output {output} contains the source {source}",
                             hint="choose another -o")
    if options.save_onnx and output and Path(options.save_onnx).resolve() == Path(output).resolve():
        raise UsageError(f"--save-onnx {options.save_onnx} is the output itself",
                         hint="give --save-onnx another path, or leave it out for --to onnx")
    specs = resolve_specs(handle, options)
    arrays = dummy_inputs(specs, DEFAULT_BATCH, seed=0)
    options.progress(f"running the source model on seeded inputs "
                     f"({', '.join(s.name + str(list(a.shape)) for s, a in zip(specs, arrays))})")
    reference = run_model(handle, arrays)
    names = handle.output_names or _default_output_names(len(reference))
    _check_representable(handle, target, names, reference)
    if not handle.outputs:
        handle.outputs = [TensorSpec(n, tuple(r.shape), str(r.dtype)) for n, r in
                          zip(names, reference)]

    result = ConversionResult(handle, handle, target.name, notes=list(handle.notes))
    converted, proto = _route(handle, target, specs, arrays, reference, names, options, result)
    result.target = converted
    result.notes += _layout_notes(options, target, converted)
    save_onnx = _onnx_writer(proto, options, result) \
        if options.save_onnx and proto is not None else None
    if output:
        _save(converted, target, output, options, result, also=save_onnx)
    elif save_onnx is not None:
        save_onnx()
    if options.validate and output:
        options.progress(f"validating the saved {target.name} model")
        result.report = _validate_saved(result, target, converted, reference, arrays, names,
                                        options)
    result.seconds = time.perf_counter() - started
    if options.validate and result.report is not None:
        check(result.report, result.output)
    return result


def _layout_notes(options: Options, target: Target, converted: ModelHandle) -> list[str]:
    """Say when --layout nhwc changed nothing, rather than ignore the flag silently."""
    if options.layout != "nhwc" or converted.input_perms:
        return []
    if target.framework != "tf":
        return [f"--layout nhwc applies to TensorFlow targets (tf, keras, h5, tflite); the "
                f"{target.name} model keeps the source's layout"]
    return ["--layout nhwc changed nothing: no input of this route is a channels-first image "
            "batch (rank 4)"]


def _onnx_writer(proto, options: Options, result: ConversionResult):
    """--save-onnx as a step to run inside the main output's write (both or neither)."""
    def save_onnx():
        with atomic_output(options.save_onnx, options.force) as tmp:
            backend("onnx").save(backend("onnx").wrap(proto), str(tmp))
        result.onnx_path = str(options.save_onnx)
    return save_onnx


def _check_representable(handle: ModelHandle, target: Target, names, reference) -> None:
    """String (or object) outputs do not survive the route through ONNX converters."""
    for name, value in zip(names, reference):
        kind = getattr(getattr(value, "dtype", None), "kind", "O")
        if kind in "OSU" and target.framework != handle.framework:
            raise ConversionError(
                f"{handle.name}: output {name} is a string tensor, which the {target.name} "
                "route cannot represent",
                hint="keep string post-processing outside the model and output numbers")


def _default_output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _route(handle, target, specs, arrays, reference, names, options, result):
    """Try each ONNX candidate graph until one converts and validates; return (model, proto)."""
    if handle.framework == target.framework and target.name != "onnx" and \
            backend(handle.framework).saves_directly(handle, target.name):
        result.route = [handle.framework]
        if options.validate:
            result.report = validate(reference, handle, arrays, names, options, "source")
        return handle, None
    errors, best = [], None
    for strategy, proto in _onnx_candidates(handle, specs, options, result):
        label = f"{handle.framework}->onnx ({strategy})" if handle.framework != "onnx" else "onnx"
        try:
            if target.framework == "onnx":
                converted = backend("onnx").wrap(proto)
            else:
                options.progress(f"converting ONNX -> {target.name}")
                converted = backend(target.framework).from_onnx(proto, specs, options,
                                                                target.name)
            converted.name = handle.name
            report = (validate(reference, converted, arrays, names, options, label)
                      if options.validate else None)
        except NeuralBridgeError as exc:
            errors.append(f"{label}: {exc}")
            continue
        except Exception as exc:  # a converter library's own failure: try the next graph
            errors.append(f"{label}: {type(exc).__name__}: {first_line(exc)}")
            continue
        route = list(dict.fromkeys([handle.framework, "onnx"]))  # an ONNX source: once
        route += [target.name] if target.framework != "onnx" else []
        candidate = (converted, proto, report, strategy, route)
        if report is None or report.passed:
            best = candidate
            break
        if best is None or report.max_rel_error < best[2].max_rel_error:
            best = candidate
        errors.append(f"{label}: {report.summary()}")
    if best is None:
        detail = errors[-1] if errors else "no strategy produced a model"
        error = ConversionError(f"cannot convert {handle.name} to {target.name}: {detail}",
                                hint=f"{len(errors)} strategies tried; -v shows each error"
                                if len(errors) > 1 else None)
        error.details = errors
        raise error
    converted, proto, report, strategy, route = best
    result.route, result.strategy, result.report = route, strategy, report
    result.notes.extend(n for n in handle.notes if n not in result.notes)  # exporters' notes
    result.notes.extend(n for n in converted.notes if n not in result.notes)  # converters'
    result.notes.extend(f"fallback: {e}" for e in errors)
    return converted, proto


def _onnx_candidates(handle, specs, options, result):
    if handle.framework == "onnx":
        candidates = iter([("as-is", handle.obj)])
    else:
        candidates = backend(handle.framework).to_onnx(handle, specs, options)
    for strategy, proto in candidates:
        if options.static:  # every exporter's graph, and an ONNX source's, gets fixed shapes
            from .backends.onnx_backend import fix_input_shapes

            fix_input_shapes(proto, specs)
        yield strategy, proto


def _weight_bytes(handle: ModelHandle) -> int:
    """About how many bytes the saved model will take (its weights); 0 when unknown."""
    obj = handle.obj
    try:
        if handle.framework == "onnx":
            from .backends.onnx_backend import byte_size

            return byte_size(obj)
        if handle.framework == "torch":
            tensors = list(obj.parameters()) + list(obj.buffers())
            return sum(t.numel() * t.element_size() for t in tensors)
        variables = getattr(obj, "variables", None) or getattr(obj, "weights", None) or []
        return sum(int(v.shape.num_elements() or 0) * v.dtype.size for v in variables)
    except Exception:  # an estimate only: never a reason to fail
        return 0


def _save(converted: ModelHandle, target: Target, output: str, options, result,
          also=None) -> None:
    options.progress(f"saving {target.description} to {output}")
    ensure_space(output, _weight_bytes(converted))
    with atomic_output(output, options.force) as tmp:
        if options.precision != "fp32":  # an fp16 / int8 variant of the converted model
            from .precision import save_variant

            saved_format = save_variant(converted, target.name, str(tmp), options)
        else:
            saved_format = backend(target.framework).save(converted, str(tmp), target.name,
                                                          options)
        if also is not None:  # --save-onnx: written before the main output is moved in
            also()
    result.notes.extend(getattr(saved_format, "notes", None) or [])
    if getattr(saved_format, "fixed_batch", False):
        result.notes.append("the saved program runs only at the example batch size (2)")
    if saved_format == "torchscript" and Path(output).suffix == ".pt2":
        # torch.export failed and TorchScript was written: give it the suffix users expect
        renamed = Path(output).with_suffix(".pt")
        try:
            check_output(renamed, options.force)
        except NeuralBridgeError:  # the .pt exists: leave neither it changed nor our .pt2
            discard_output(output)
            raise
        Path(output).replace(renamed)
        result.notes.append(f"torch.export could not export this graph; wrote TorchScript "
                            f"{renamed} (load it with torch.jit.load)")
        output = str(renamed)
    result.output, result.saved_format = str(output), saved_format


def _validate_saved(result, target, converted, reference, arrays, names, options):
    """Load the written output back and compare it with the source. An output that cannot
    be loaded or run is useless, and one interrupted before it was checked is unchecked:
    either is removed, so only a validated output (or a mismatch, exit 3, kept for
    inspection) is left."""
    from . import interrupts

    interrupts.track(Path(result.output))  # the Ctrl-C watchdog removes it too
    try:
        saved = _reload(result.output, target, converted, options)
        return validate(reference, saved, arrays, names, options, label=result.output)
    except BaseException as exc:
        discard_output(result.output)
        if not isinstance(exc, Exception):  # Ctrl-C before the output was checked
            raise
        raise ConversionError(f"the written {target.name} model {result.output} could not be "
                              f"loaded back and run, so it was removed: {first_line(exc)}",
                              hint="run with -v for the details; try another --to or --opset"
                              ) from exc
    finally:
        interrupts.untrack(Path(result.output))


def _reload(output: str, target: Target, converted: ModelHandle, options) -> ModelHandle:
    """Load the written artifact back, as a user would, to validate what was saved."""
    if options.weights_only:
        return converted
    fmt = formats.detect(output)
    handle = backend(fmt.framework).load(output, fmt, options)
    handle.inputs = handle.inputs or converted.inputs
    handle.input_perms = converted.input_perms
    handle.name = converted.name
    return handle


def default_output(handle_name: str, source: Any, target: Target,
                   weights_only: bool = False) -> str:
    """`<stem><suffix>` in the working folder: a file's stem, or the model's class name."""
    if isinstance(source, (str, Path)) and not formats.is_import_path(str(source)):
        stem = Path(str(source).rstrip("/")).name
        stem = stem.split(".")[0] or stem
    else:
        stem = handle_name
    if weights_only and target.framework == "tf":
        return f"{stem}.weights.h5"  # Keras names weights files so
    return f"{stem}{target.suffix}"
