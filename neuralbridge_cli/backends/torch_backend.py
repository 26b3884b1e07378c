"""PyTorch backend: import paths, state dicts, TorchScript, ExportedProgram; export to ONNX."""
from __future__ import annotations

import importlib
import inspect
import io
import json
import logging
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

from .. import lazy
from ..errors import first_line, ConversionError, LoadError, UsageError
from ..model import ModelHandle
from ..specs import DEFAULT_BATCH, TensorSpec, dummy_inputs

# default spatial sizes used when only the channel count is known (printed to the user)
DEFAULT_SPATIAL = {1: (128,), 2: (224, 224), 3: (16, 112, 112)}
DEFAULT_SEQ_LEN = 16
DEFAULT_ONNX_OPSET = 18  # the dynamo exporter's own default
TORCHSCRIPT_EXPORTER_OPSET = 17


# ---------------------------------------------------------------- loading
def load(source: str, fmt, options) -> ModelHandle:
    torch = lazy.torch()
    name = fmt.name
    if name == "torch-import":
        module = build_from_import_path(source, options.model_args)
        return _module_handle(module, name, source)
    path = Path(source)
    if name == "torchscript":
        return _module_handle(_guard(lambda: torch.jit.load(str(path), map_location="cpu"), source),
                              name, source, display=path.stem)
    if name == "torch-exported":
        if not options.trust_pickle:
            _refuse_pickled_pt2(path)
        program = _guard(lambda: torch.export.load(str(path)), source)
        handle = _module_handle(program.module(), name, source, display=path.stem)
        handle.inputs = _exported_program_specs(program)
        return handle
    if name == "safetensors":
        return _from_state_dict(load_safetensors(source), source, options)
    if name == "torch-pickle" and not options.trust_pickle:
        raise LoadError(f"{source}: loading a pickled module can run arbitrary code; refusing",
                        hint="if you trust its author, pass --trust-pickle")
    if options.trust_pickle:
        obj = _guard(lambda: torch.load(str(path), map_location="cpu", weights_only=False), source)
        if isinstance(obj, torch.nn.Module):
            return _module_handle(obj.eval(), name, source)
        return _from_state_dict(obj, source, options)
    return _from_state_dict(_load_weights_only(path), source, options)


def load_safetensors(source: str) -> dict:
    safetensors = lazy.require("safetensors.torch", "read .safetensors files")
    return _guard(lambda: safetensors.load_file(str(source)), source)


def load_weights_only(source: str, options) -> dict:
    """The object in a .pt/.pth/.bin file, unpickled only with --trust-pickle."""
    torch = lazy.torch()
    if options.trust_pickle:
        return _guard(lambda: torch.load(str(source), map_location="cpu", weights_only=False),
                      source)
    return _load_weights_only(Path(source))


def state_dict_tensors(obj) -> dict | None:
    """The name -> tensor mapping in a loaded checkpoint (also under `state_dict`/`model`)."""
    return _unwrap_state_dict(obj)


def _refuse_pickled_pt2(path: Path) -> None:
    """torch.export.load unpickles (weights_only=False) entries marked `use_pickle`:
    refuse such archives unless the user trusts them."""
    import zipfile

    from ..formats import ZIP_ERRORS

    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.namelist():
                if entry.endswith("_config.json") and b'"use_pickle": true' in archive.read(entry):
                    raise LoadError(
                        f"{path} stores pickled Python objects ({entry.rsplit('/', 1)[-1]}); "
                        "refusing to unpickle them",
                        hint="if you trust its author, pass --trust-pickle (it can run arbitrary code)")
    except ZIP_ERRORS as exc:
        raise LoadError(f"{path} is not a readable .pt2 archive: {first_line(exc)}",
                        hint=REEXPORT) from exc


REEXPORT = "re-export it; the file may be truncated or corrupt"


def _guard(fn, source):
    logged: list = []
    try:
        with _quiet_torch_logs(logged):
            return fn()
    except Exception as exc:
        detail = first_line(exc)
        if "warnings above" in detail:  # torch logged the real error (kept quiet): use it
            causes = [r.exc_info[1] for r in logged if r.exc_info and r.exc_info[1]]
            detail = first_line(causes[-1]) if causes else detail
        raise LoadError(f"cannot load {source}: {detail}", hint=REEXPORT) from exc


class _Collect(logging.Handler):
    def __init__(self, records: list):
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record) -> None:
        self.records.append(record)


@contextmanager
def _quiet_torch_logs(records: list):
    """torch.export.load logs a full traceback (as a warning) before raising: collect the
    records instead of printing them."""
    logger = logging.getLogger("torch.export")
    saved = logger.handlers[:], logger.propagate
    logger.handlers = [_Collect(records)]  # torch attaches its own printing handler here
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved


def _load_weights_only(path: Path):
    torch = lazy.torch()
    if not _looks_like_torch_save(path):
        raise LoadError(f"{path} is not a readable PyTorch file (neither a torch.save zip "
                        "archive nor a legacy pickle)", hint=REEXPORT)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" in text or "Unsupported operand" in text and "GLOBAL" in text \
                or "GLOBAL" in text and "not an allowed global" in text:
            raise LoadError(
                f"{path} holds pickled Python objects, not only weights; refusing to unpickle it",
                hint="if you trust its author, pass --trust-pickle (it can run arbitrary code)",
            ) from exc
        detail = next((ln.strip() for ln in text.splitlines()
                       if ln.strip() and "weights_only" not in ln and "Weights only" not in ln),
                      first_line(exc))
        raise LoadError(f"{path} is not a readable PyTorch file: {detail[:200]}",
                        hint=REEXPORT) from exc


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive; the legacy format starts with a pickle opcode."""
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        head = handle.read(2)
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")


def _from_state_dict(obj, source: str, options) -> ModelHandle:
    state = _unwrap_state_dict(obj)
    if state is None:
        raise LoadError(f"{source} holds neither a module nor a state dict of tensors")
    if not options.model_class:
        raise UsageError(
            f"{source} is a state dict (weights only) and needs the model's class",
            hint="pass --model-class package.module:Class, e.g. torchvision.models:resnet18",
        )
    module = build_from_import_path(options.model_class, options.model_args)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln),
                      first_line(exc))
        raise LoadError(f"the weights in {source} do not fit {options.model_class}: {detail}",
                        hint="check --model-class and --model-args (e.g. num_classes)") from exc
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise LoadError(f"the keys in {source} do not fit {options.model_class}: "
                        + ", ".join(parts), hint="check --model-class and --model-args")
    handle = _module_handle(module.eval(), "torch-state-dict", source,
                            display=type(module).__name__)
    return handle


def _unwrap_state_dict(obj):
    torch = lazy.torch()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    return None


def build_from_import_path(path: str, model_args: dict | None = None):
    """Import `package.module:ClassOrFactory` and call it with `model_args`."""
    torch = lazy.torch()
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise UsageError(f"bad import path {path!r}", hint="write it as package.module:ClassOrFactory")
    cwd = str(Path.cwd())  # allow models defined in the working folder (absolute: "." would
    sys.path.insert(0, cwd)  # keep a cached finder for whichever folder came first)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} (from {path}): {first_line(exc)}",
                         hint="check the module name and that it is installed") from exc
    except (Exception, SystemExit) as exc:  # the module's own code failed while importing
        raise LoadError(f"importing {module_name!r} (from {path}) failed: "
                        f"{type(exc).__name__}: {first_line(exc)}") from exc
    finally:
        sys.path.remove(cwd)
    target = module
    for part in attr_path.split("."):
        target = getattr(target, part, None)
        if target is None:
            public = sorted(n for n, v in vars(module).items()
                            if not n.startswith("_") and callable(v))[:12]
            raise UsageError(f"{module_name} has no attribute {attr_path!r}",
                             hint=f"write MODULE:CLASS_OR_FACTORY; {module_name} defines "
                                  f"{', '.join(public) or 'no callables'}")
    try:
        built = target(**(model_args or {}))
    except (Exception, SystemExit) as exc:
        raise LoadError(f"calling {path}(**{json.dumps(model_args or {})}) failed: {first_line(exc)}",
                        hint="pass constructor arguments with --model-args '{\"key\": value}'") from exc
    if not isinstance(built, torch.nn.Module):
        raise UsageError(f"{path} built a {type(built).__name__}, not a torch.nn.Module")
    return built.eval()


def _module_handle(module, fmt: str, source, display: str | None = None) -> ModelHandle:
    return ModelHandle("torch", module, fmt, display or type(module).__name__, source=source)


def wrap(obj, name=None, source=None, fmt="live"):
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if isinstance(obj, torch.export.ExportedProgram):
        handle = _module_handle(obj.module(), fmt, source, name)
        handle.inputs = _exported_program_specs(obj)
        return handle
    if isinstance(obj, torch.nn.Module):
        return _module_handle(obj.eval(), fmt, source, name)
    return None


# ---------------------------------------------------------------- input specs
def _exported_program_specs(program) -> list[TensorSpec]:
    specs = []
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            if val is None:
                continue
            dims = tuple(int(d) if str(d).isdigit() else None for d in val.shape)
            specs.append(TensorSpec(node.name, dims, str(val.dtype).replace("torch.", "")))
    return specs


def forward_input_names(module) -> list[str]:
    """Positional parameter names of forward (x, input_ids...), for ONNX input names."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    names = []
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            break
    return names


def required_keyword_only(module) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]


def input_specs(handle: ModelHandle) -> list[TensorSpec] | None:
    """Infer specs from the first layer; None when nothing can be inferred."""
    if handle.inputs:
        return handle.inputs
    spec, note = infer_from_first_layer(handle.obj)
    names = forward_input_names(handle.obj)
    handle.call_names = names  # names for unnamed --input-shape values (forward(x, y))
    if spec is None:
        return None
    if len(names) > 1:
        return None  # several inputs: the first layer tells about one of them only
    spec = TensorSpec(names[0] if names else "input", spec.shape, spec.dtype, spec.value_range)
    handle.notes.append(f"inferred input {spec.name} {spec.shape_text()} {spec.dtype} {note}")
    return [spec]


def infer_from_first_layer(module):
    """(TensorSpec, how) from the first Conv/Linear/Embedding/RNN/Transformer layer, else (None, '')."""
    nn = lazy.torch().nn
    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            rank = len(layer.kernel_size)
            spatial = _image_size(module, rank) or DEFAULT_SPATIAL[rank]
            shape = (None, layer.in_channels) + tuple(spatial)
            return TensorSpec("input", shape), (
                f"from {type(layer).__name__}(in_channels={layer.in_channels}); "
                f"spatial size {'x'.join(map(str, spatial))} is a default, set it with --input-shape")
        if isinstance(layer, nn.Linear):
            return TensorSpec("input", (None, layer.in_features)), (
                f"from Linear(in_features={layer.in_features})")
        if isinstance(layer, nn.Embedding):
            return (TensorSpec("input", (None, DEFAULT_SEQ_LEN), "int64",
                               value_range=(0, layer.num_embeddings)),
                    f"from Embedding(num_embeddings={layer.num_embeddings}): token ids, "
                    f"sequence length {DEFAULT_SEQ_LEN}")
        if isinstance(layer, (nn.RNN, nn.LSTM, nn.GRU)):
            shape = ((None, DEFAULT_SEQ_LEN, layer.input_size) if layer.batch_first
                     else (DEFAULT_SEQ_LEN, None, layer.input_size))
            return TensorSpec("input", shape), (
                f"from {type(layer).__name__}(input_size={layer.input_size}, "
                f"batch_first={layer.batch_first}), sequence length {DEFAULT_SEQ_LEN}")
        if isinstance(layer, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
                              nn.MultiheadAttention)):
            attention = layer if isinstance(layer, nn.MultiheadAttention) else layer.self_attn
            batch_first = attention.batch_first
            shape = ((None, DEFAULT_SEQ_LEN, attention.embed_dim) if batch_first
                     else (DEFAULT_SEQ_LEN, None, attention.embed_dim))
            return TensorSpec("input", shape), (
                f"from {type(layer).__name__}(d_model={attention.embed_dim}, "
                f"batch_first={batch_first}), sequence length {DEFAULT_SEQ_LEN}")
    return None, ""


def _image_size(module, rank: int):
    size = getattr(module, "image_size", None)
    if isinstance(size, int) and rank == 2:
        return (size, size)
    return None


# ---------------------------------------------------------------- running
def run(handle: ModelHandle, arrays: list) -> list:
    torch = lazy.torch()
    check_positional(handle)
    tensors = [torch.from_numpy(a) for a in arrays]
    with torch.inference_mode():
        result = handle.obj(*tensors)
    try:
        return flatten_outputs(result)
    except ConversionError as exc:
        raise ConversionError(f"{handle.name}.forward returned {exc.message}",
                              hint=exc.hint) from exc


def check_positional(handle: ModelHandle) -> None:
    """Conversion feeds positional tensors: a forward that needs keyword-only ones cannot run."""
    keyword_only = required_keyword_only(handle.obj)
    if keyword_only:
        raise UsageError(f"{handle.name}.forward needs keyword-only inputs "
                         f"({', '.join(keyword_only)})",
                         hint="wrap the model in a module whose forward takes positional tensors")


def flatten_outputs(result) -> list:
    """Tensor / tuple / list / dict of tensors -> list of numpy arrays in order."""
    torch = lazy.torch()
    if isinstance(result, torch.Tensor):
        return [result.detach().cpu().numpy()]
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, (tuple, list)):
        out = []
        for item in result:
            out.extend(flatten_outputs(item))
        return out
    raise ConversionError(f"a {type(result).__name__}, not tensors",
                          hint="make forward return tensors (or tuples/lists/dicts of tensors); "
                               "only tensor outputs can be converted")


def output_names(handle: ModelHandle, count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


# ---------------------------------------------------------------- to ONNX
def to_onnx(handle: ModelHandle, specs: list[TensorSpec], options):
    """Yield (strategy, ModelProto) candidates: dynamo exporter, then the TorchScript exporter."""
    torch = lazy.torch()
    module = handle.obj
    check_positional(handle)
    examples = tuple(torch.from_numpy(a) for a in dummy_inputs(specs, DEFAULT_BATCH))
    input_names = [s.name for s in specs]
    with torch.inference_mode():
        n_outputs = len(flatten_outputs(module(*examples)))
    names_out = output_names(handle, n_outputs)
    errors = []
    for strategy in _exporter_order(options.opset):
        if strategy == "torchscript" and options.opset and options.opset > 20:
            continue
        options.progress(f"exporting to ONNX ({strategy} exporter)")
        try:
            proto = _export(module, examples, specs, input_names, names_out, strategy, options)
        except Exception as exc:
            errors.append(f"{strategy}: {first_line(exc)}")
            continue
        written = _default_opset(proto)
        if options.opset and written != options.opset:
            handle.notes.append(f"the {strategy} exporter wrote opset {written}; it could not "
                                f"lower the graph to the requested opset {options.opset}")
        yield strategy, proto
    if errors:
        raise ConversionError("torch.onnx.export failed: " + " | ".join(errors))


def _exporter_order(opset: int | None) -> tuple[str, ...]:
    """The dynamo exporter first; but it translates at opset 18 and lowers afterwards, which
    fails for many graphs, so a requested older opset goes to the TorchScript exporter
    first (it translates at that opset directly)."""
    if opset and opset < DEFAULT_ONNX_OPSET:
        return ("torchscript", "dynamo")
    return ("dynamo", "torchscript")


def _default_opset(proto) -> int | None:
    return next((int(i.version) for i in proto.opset_import if i.domain in ("", "ai.onnx")),
                None)


def _export(module, examples, specs, input_names, names_out, strategy, options):
    torch = lazy.torch()
    onnx = lazy.onnx()
    dynamic_batch = not options.static
    if strategy == "dynamo":
        dynamic_shapes = None
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1, max=4096)
            dynamic_shapes = tuple({0: batch} if s.rank else None for s in specs)
        with redirect_stdout(io.StringIO()):
            program = torch.onnx.export(
                module, examples, None, dynamo=True, input_names=input_names,
                output_names=names_out, dynamic_shapes=dynamic_shapes,
                opset_version=options.opset or DEFAULT_ONNX_OPSET, verbose=False,
                optimize=True,
            )
        return program.model_proto
    buffer = io.BytesIO()
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {n: {0: "batch"} for n in input_names + names_out}
    with redirect_stdout(io.StringIO()):
        torch.onnx.export(module, examples, buffer, dynamo=False, input_names=input_names,
                          output_names=names_out, dynamic_axes=dynamic_axes,
                          opset_version=min(options.opset or TORCHSCRIPT_EXPORTER_OPSET, 20),
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


# ---------------------------------------------------------------- from ONNX / save
def from_onnx(proto, specs, options, target: str = "torch") -> ModelHandle:
    from . import onnx_to_torch

    proto, notes = _sized_for_same_padding(proto, specs)
    module = onnx_to_torch.convert_onnx_to_torch(proto, progress=options.progress)
    handle = ModelHandle("torch", module, "live", type(module).__name__, inputs=list(specs))
    handle.notes.extend(notes)
    return handle


def _sized_for_same_padding(proto, specs):
    """onnx2torch has no auto_pad SAME_*, and explicit pads need the spatial size: when
    the graph leaves it unknown, take it from the input specs (the size that is validated).
    Returns (proto, notes); the proto is a copy only when it changed."""
    same = any(a.name == "auto_pad" and a.s in (b"SAME_UPPER", b"SAME_LOWER")
               for node in proto.graph.node for a in node.attribute)
    if not same or not specs:
        return proto, []
    from dataclasses import replace

    from .onnx_backend import fix_input_shapes

    # unknown non-batch dims as the validation inputs have them (TensorSpec.concrete_shape)
    specs = [replace(s, shape=s.shape[:1] + s.concrete_shape()[1:]) if s.rank else s
             for s in specs]
    onnx = lazy.onnx()
    sized = onnx.ModelProto()
    sized.CopyFrom(proto)
    if not fix_input_shapes(sized, specs):
        return proto, []
    sizes = ", ".join(f"{s.name} {s.shape_text()}" for s in specs)
    return sized, [f"SAME padding made explicit for {sizes}: the PyTorch model expects "
                   "that size (give another with --input-shape)"]



def saves_directly(handle: ModelHandle, target: str) -> bool:
    """Every model of this framework can be saved in each of its formats."""
    return True

def save(handle: ModelHandle, path: str, target: str, options) -> str:
    """Write `.pt2` (ExportedProgram, TorchScript fallback), TorchScript, or a state dict."""
    torch = lazy.torch()
    from . import onnx_to_torch

    if options.weights_only:
        torch.save(handle.obj.state_dict(), path)
        return "state-dict"
    examples = [torch.from_numpy(a) for a in dummy_inputs(handle.inputs or [], DEFAULT_BATCH)]
    prefer = "torchscript" if target == "torchscript" else "exported"
    return onnx_to_torch.save_torch_program(handle.obj, examples, path,
                                            dynamic_batch=not options.static, prefer=prefer)


def describe(handle: ModelHandle) -> dict:
    module = handle.obj
    params = 0
    if hasattr(module, "parameters"):
        params = sum(p.numel() for p in module.parameters())
        buffers = sum(b.numel() for b in module.buffers() if b.is_floating_point())
        if buffers > params:  # a converted graph holds (most of) its weights as buffers
            params += buffers
    return {"class": f"{type(module).__module__}.{type(module).__name__}", "parameters": params}

