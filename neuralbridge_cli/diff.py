"""`diff A B`: what differs between two models' structure and weights.

Each model becomes a list of layers (name, type, parameter tensors in PyTorch layout).
Layers are aligned by name when the two models share their names (a checkpoint before and
after fine-tuning), else by graph position over the weight-bearing layers (a Keras model and
its PyTorch conversion). Converters fold BatchNorm into the preceding convolution, or keep it
as a per-channel scale and shift: a BatchNorm on one side is folded, or matched against the
other side's loose constants, before the tensors are compared. Per matched tensor: relative
L2 change ||b - a|| / ||a|| and max absolute change.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field

from .errors import UsageError

CHANGED_REL_L2 = 1e-5  # float32 round-off of a conversion stays well below this


@dataclass
class Layer:
    """One layer: its tensors in PyTorch layout (weight (out, in, ...), bias...)."""

    name: str
    type: str
    tensors: dict  # short name -> numpy array
    attrs: str = ""  # printable settings (kernel size, stride...) for structure diffs
    bn: tuple | None = None  # (scale, shift, bn layer name) of a BatchNorm that follows it


@dataclass
class TensorDiff:
    a: str
    b: str
    shape: tuple
    rel_l2: float
    max_abs: float
    changed: bool
    note: str = ""


@dataclass
class ModelDiff:
    """Structure and weight differences of B against A."""

    a: str
    b: str
    alignment: str  # "name" or "position"
    structure: list[dict] = field(default_factory=list)  # {change, a, b, detail}
    tensors: list[TensorDiff] = field(default_factory=list)
    unmatched_a: list[str] = field(default_factory=list)
    unmatched_b: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    a_tensors: int = 0  # weight tensors each model holds
    b_tensors: int = 0

    @property
    def changed(self) -> list[TensorDiff]:
        return sorted((t for t in self.tensors if t.changed), key=lambda t: -t.rel_l2)

    @property
    def changed_layers(self) -> list[str]:
        return sorted({_layer_of(t.b) for t in self.changed})

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "alignment": self.alignment,
                "a_tensors": self.a_tensors, "b_tensors": self.b_tensors,
                "structure": self.structure, "tensors": [asdict(t) for t in self.tensors],
                "matched": len(self.tensors), "changed": len(self.changed),
                "changed_layers": self.changed_layers, "unmatched_a": self.unmatched_a,
                "unmatched_b": self.unmatched_b, "notes": self.notes,
                "identical": not self.changed and not self.structure
                and not self.unmatched_a and not self.unmatched_b}


def _layer_of(tensor_name: str) -> str:
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else tensor_name


# ---------------------------------------------------------------- extracting layers
def layers_of(handle) -> tuple[list[Layer], list]:
    """(layers, loose constants) of a loaded model."""
    import sys

    obj = handle.obj
    torch = sys.modules.get("torch")
    keras = sys.modules.get("keras")
    if handle.framework == "onnx":
        return _onnx_layers(obj), []
    if keras is not None and isinstance(obj, keras.Model):
        return _keras_layers(obj), []
    if torch is not None and isinstance(obj, torch.nn.Module):
        return _torch_layers(obj)
    if torch is not None and hasattr(obj, "state_dict") and hasattr(obj, "module"):
        return _exported_layers(obj)
    raise UsageError(f"diff cannot read the weights of a {type(obj).__name__} "
                     f"({handle.format})", hint="diff PyTorch, Keras or ONNX models (for a "
                     "SavedModel or TFLite file, diff the model it was converted from)")


def _np(t):
    import numpy as np

    return np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)


def _torch_layers(module) -> tuple[list[Layer], list]:
    """Parameters (and BatchNorm statistics) per module; other buffers, which converters use
    for graph constants, are loose."""
    from torch import nn

    layers, loose = [], []
    for name, sub in module.named_modules():
        is_bn = isinstance(sub, nn.modules.batchnorm._BatchNorm)
        tensors = {k: _np(v) for k, v in sub.named_parameters(recurse=False) if v is not None}
        for key, value in sub.named_buffers(recurse=False):
            if value is None or key == "num_batches_tracked":
                continue
            if is_bn:
                tensors[key] = _np(value)
            else:
                loose.append((f"{name}.{key}" if name else key, _np(value)))
        if tensors:
            layers.append(Layer(name, type(sub).__name__, tensors, sub.extra_repr()))
    return layers, loose + _graph_constants(module)


def _graph_constants(module) -> list:
    """Tensors a torch.fx GraphModule reads with get_attr that are not parameters/buffers."""
    import torch

    graph = getattr(module, "graph", None)
    registered = {id(t) for t in list(module.parameters()) + list(module.buffers())}
    out = []
    for node in getattr(graph, "nodes", ()):
        if node.op != "get_attr":
            continue
        value = module
        for part in str(node.target).split("."):
            value = getattr(value, part, None)
        if isinstance(value, torch.Tensor) and id(value) not in registered:
            out.append((str(node.target), _np(value)))
    return out


def _exported_layers(program) -> tuple[list[Layer], list]:
    """A torch.export program: parameters grouped by module; buffers (a converter's graph
    constants) are loose, matched later by value."""
    params = set(program.graph_signature.parameters)
    by_layer: dict[str, dict] = {}
    for key, value in program.state_dict.items():
        if key not in params:
            continue
        prefix, _, short = key.rpartition(".")
        by_layer.setdefault(prefix, {})[short] = _np(value)
    layers = [Layer(k, "Conv" if v.get("weight") is not None and v["weight"].ndim >= 3 else
                    "Linear", v) for k, v in by_layer.items()]
    loose = [(n, _np(b)) for n, b in program.module().named_buffers() if n not in params]
    return layers, loose


def _keras_layers(model) -> list[Layer]:
    import numpy as np

    layers = []
    for layer in _flat_keras_layers(model):
        weights = {w.path.rsplit("/", 1)[-1]: np.asarray(w.numpy()) for w in layer.weights}
        if not weights:
            continue
        cls = type(layer).__name__
        tensors = _keras_to_torch_layout(cls, weights)
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(layer.get_config().items())
                          if k in ("kernel_size", "strides", "padding", "units", "filters",
                                   "activation", "epsilon", "dilation_rate", "groups"))
        layers.append(Layer(layer.name, cls, tensors, attrs))
    return layers


def _flat_keras_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.weights:  # nested model
            yield from _flat_keras_layers(layer)
        else:
            yield layer


def _keras_to_torch_layout(cls: str, weights: dict) -> dict:
    """Kernels to (out, in, ...); BatchNorm to PyTorch's names."""
    import numpy as np

    out = {}
    for key, w in weights.items():
        if key in ("kernel", "depthwise_kernel") and w.ndim >= 3:
            if "Depthwise" in cls or key == "depthwise_kernel":  # (kh, kw, in, mult)
                spatial = w.shape[:-2]
                w = np.moveaxis(w, (-2, -1), (0, 1)).reshape((-1, 1) + spatial)
            else:  # (k..., in, out) -> (out, in, k...)
                w = np.transpose(w, (w.ndim - 1, w.ndim - 2) + tuple(range(w.ndim - 2)))
            key = "weight"
        elif key == "kernel" and w.ndim == 2:
            w, key = w.T, "weight"
        key = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
               "moving_variance": "running_var"}.get(key, key)
        out[key] = w
    return out


def _onnx_layers(proto) -> list[Layer]:
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    # integer initializers are shapes, axes and indices, and scalars are op constants (the
    # 0.5 of a GELU): neither are weights
    inits = {k: v for k, v in inits.items() if v.dtype.kind == "f" and v.ndim > 0}
    layers, used = [], set()
    for i, node in enumerate(proto.graph.node):
        tensors = {name: inits[name] for name in node.input if name in inits and name not in used}
        if tensors:
            used.update(tensors)
            short = {("weight" if k == 0 else "bias" if k == 1 else f"input{k}"): v
                     for k, v in enumerate(tensors.values())}
            attrs = ", ".join(f"{a.name}" for a in node.attribute)
            layers.append(Layer(node.name or f"{node.op_type}_{i}", node.op_type, short, attrs))
    return layers


# ---------------------------------------------------------------- comparing
def _tensor_diff(a_name, b_name, a, b, note="") -> TensorDiff:
    import numpy as np

    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        if a64.size == b64.size:
            b64 = b64.reshape(a64.shape)
        else:
            return TensorDiff(a_name, b_name, tuple(a.shape), float("inf"), float("inf"), True,
                              f"shape {list(b.shape)} != {list(a.shape)}")
    delta = b64 - a64
    norm = float(np.linalg.norm(a64))
    rel = float(np.linalg.norm(delta)) / norm if norm else float(np.linalg.norm(delta))
    max_abs = float(np.max(np.abs(delta))) if delta.size else 0.0
    return TensorDiff(a_name, b_name, tuple(a.shape), rel, max_abs, rel > CHANGED_REL_L2, note)


def diff_layers(a_layers, b_layers, a_name="A", b_name="B", b_loose=()) -> ModelDiff:
    """Align two layer lists and compare their tensors."""
    a_names = {layer.name for layer in a_layers}
    b_names = {layer.name for layer in b_layers}
    shared = len(a_names & b_names)
    if shared and shared >= 0.5 * min(len(a_names), len(b_names)):
        return _diff_by_name(a_layers, b_layers, a_name, b_name)
    return _diff_by_position(a_layers, b_layers, a_name, b_name, list(b_loose))


def _diff_by_name(a_layers, b_layers, a_name, b_name) -> ModelDiff:
    result = ModelDiff(a_name, b_name, "name")
    b_by = {layer.name: layer for layer in b_layers}
    a_by = {layer.name: layer for layer in a_layers}
    for layer in a_layers:
        other = b_by.get(layer.name)
        if other is None:
            result.structure.append({"change": "removed", "a": layer.name, "b": None,
                                     "detail": layer.type})
            result.unmatched_a.extend(f"{layer.name}.{k}" for k in layer.tensors)
            continue
        if other.type != layer.type or other.attrs != layer.attrs:
            result.structure.append({"change": "changed", "a": layer.name, "b": other.name,
                                     "detail": f"{layer.type}({layer.attrs}) -> "
                                               f"{other.type}({other.attrs})"})
        for key, value in layer.tensors.items():
            full = f"{layer.name}.{key}" if layer.name else key
            if key in other.tensors:
                result.tensors.append(_tensor_diff(full, full, value, other.tensors[key]))
            else:
                result.unmatched_a.append(full)
        result.unmatched_b.extend(f"{other.name}.{k}" for k in other.tensors
                                  if k not in layer.tensors)
    for layer in b_layers:
        if layer.name not in a_by:
            result.structure.append({"change": "added", "a": None, "b": layer.name,
                                     "detail": layer.type})
            result.unmatched_b.extend(f"{layer.name}.{k}" for k in layer.tensors)
    return result


def _is_bn(layer: Layer) -> bool:
    return {"running_mean", "running_var"} <= set(layer.tensors)


def _eps(layer: Layer) -> float:
    import re

    found = re.search(r"eps(?:ilon)?=([0-9.eE+-]+)", layer.attrs)
    return float(found.group(1)) if found else 1e-5


def _attach_batchnorms(layers: list[Layer]) -> list[Layer]:
    """Hang each BatchNorm on the weight layer before it (when the channels agree)."""
    import numpy as np

    out = []
    for layer in layers:
        prev = out[-1] if out else None
        weight = prev.tensors.get("weight") if prev else None
        if _is_bn(layer) and prev is not None and prev.bn is None and weight is not None \
                and weight.ndim >= 2 and weight.shape[0] == layer.tensors["running_var"].shape[0]:
            t = layer.tensors
            scale = t.get("weight", 1.0) / np.sqrt(t["running_var"].astype(np.float64) + _eps(layer))
            shift = t.get("bias", 0.0) - t["running_mean"] * scale
            prev.bn = (scale, shift, layer.name)
            continue
        out.append(layer)
    return out


def _signature(layer: Layer):
    weight = layer.tensors.get("weight")
    if weight is None:
        weight = next(iter(layer.tensors.values()))
    shape = tuple(weight.shape)
    return tuple(sorted(shape)) if len(shape) == 2 else shape


def _fold(weight, bias, bn):
    scale, shift, _ = bn
    folded = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    return folded, (0.0 if bias is None else bias) * scale + shift


def _oriented(a, b):
    """b transposed when it is a's transpose (Dense kept as MatMul (in, out))."""
    if a.shape != b.shape and a.ndim == 2 and b.shape == a.T.shape:
        return b.T
    return b


def _diff_by_position(a_layers, b_layers, a_name, b_name, b_loose) -> ModelDiff:
    result = ModelDiff(a_name, b_name, "position")
    a_list, b_list = _attach_batchnorms(a_layers), _attach_batchnorms(b_layers)
    matcher = difflib.SequenceMatcher(None, [_signature(x) for x in a_list],
                                      [_signature(x) for x in b_list], autojunk=False)
    loose = [(name, value) for name, value in b_loose]
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for la, lb in zip(a_list[i1:i2], b_list[j1:j2]):
                _compare_pair(la, lb, loose, result)
            continue
        for layer in a_list[i1:i2]:
            if _match_loose(layer, loose, result):
                continue
            result.structure.append({"change": "removed", "a": layer.name, "b": None,
                                     "detail": f"{layer.type} {list(_signature(layer))}"})
            result.unmatched_a.extend(f"{layer.name}.{k}" for k in layer.tensors)
        for layer in b_list[j1:j2]:
            result.structure.append({"change": "added", "a": None, "b": layer.name,
                                     "detail": f"{layer.type} {list(_signature(layer))}"})
            result.unmatched_b.extend(f"{layer.name}.{k}" for k in layer.tensors)
    folded = sum(1 for t in result.tensors if "folded" in t.note)
    if folded:
        result.notes.append(f"{folded} tensor(s) compared with a BatchNorm folded in, as the "
                            "converter did")
    if loose:
        shapes = ", ".join(f"{list(v.shape)} {v.dtype}" for _, v in loose[:6])
        result.notes.append(f"{len(loose)} graph constant(s) of {b_name} matched no weight: "
                            f"{shapes}{' ...' if len(loose) > 6 else ''} (reshape targets, "
                            "clip bounds and the like)")
    return result


def _compare_pair(la: Layer, lb: Layer, loose: list, result: ModelDiff) -> None:
    wa, wb = la.tensors.get("weight"), lb.tensors.get("weight")
    if wa is None or wb is None or la.bn is not None and lb.bn is not None or \
            (la.bn is None and lb.bn is None):
        for key, value in la.tensors.items():
            if key in lb.tensors:
                result.tensors.append(_tensor_diff(f"{la.name}.{key}", f"{lb.name}.{key}", value,
                                                   _oriented(value, lb.tensors[key])))
            else:
                result.unmatched_a.append(f"{la.name}.{key}")
        result.unmatched_b.extend(f"{lb.name}.{k}" for k in lb.tensors if k not in la.tensors)
        if la.bn is not None and lb.bn is not None:
            for idx, what in ((0, "scale"), (1, "shift")):
                result.tensors.append(_tensor_diff(f"{la.bn[2]}.{what}", f"{lb.bn[2]}.{what}",
                                                   la.bn[idx], lb.bn[idx]))
        return
    swap = la.bn is None  # make `la` the side with the BatchNorm
    if swap:
        la, lb = lb, la
    diffs = _with_batchnorm(la, lb, loose, result)
    for d in diffs:
        if swap:
            d.a, d.b = d.b, d.a
        result.tensors.append(d)


def _with_batchnorm(la: Layer, lb: Layer, loose: list, result: ModelDiff) -> list[TensorDiff]:
    """`la` has a BatchNorm after it, `lb` none: folded into lb, or kept as lb's constants."""
    wa, ba, wb, bb = la.tensors["weight"], la.tensors.get("bias"), lb.tensors["weight"], \
        lb.tensors.get("bias")
    wb = _oriented(wa, wb)
    wf, bf = _fold(wa, ba, la.bn)
    folded = _tensor_diff(f"{la.name}.weight", f"{lb.name}.weight", wf, wb,
                          f"BatchNorm {la.bn[2]} folded in")
    raw = _tensor_diff(f"{la.name}.weight", f"{lb.name}.weight", wa, wb)
    if folded.rel_l2 <= raw.rel_l2:
        out = [folded]
        if bb is not None:
            out.append(_tensor_diff(f"{la.name}.bias", f"{lb.name}.bias", bf, bb,
                                    f"BatchNorm {la.bn[2]} folded in"))
        else:
            result.unmatched_a.append(f"{la.name}.bias")
        return out
    out = [raw]
    if ba is not None and bb is not None:
        out.append(_tensor_diff(f"{la.name}.bias", f"{lb.name}.bias", ba, bb))
    for idx, what in ((0, "scale"), (1, "shift")):  # the converter kept Mul/Add constants
        match = _closest_constant(la.bn[idx], loose)
        if match is None:
            result.unmatched_a.append(f"{la.bn[2]}.{what}")
            continue
        name, value = match
        loose[:] = [(n, v) for n, v in loose if n != name]
        out.append(_tensor_diff(f"{la.bn[2]}.{what}", name, la.bn[idx], value,
                                "kept as a graph constant"))
    return out


def _closest_constant(target, loose: list):
    """The loose constant closest to `target` (reshaped, or transposed for 2-D), when it is
    within 1e-3 of target's scale: a converter stored that weight as a graph constant."""
    import numpy as np

    best, best_err = None, None
    for name, value in loose:
        if value.size != target.size or value.dtype.kind != "f":
            continue
        views = [value.reshape(target.shape)]
        if target.ndim == 2:
            views.append(value.reshape(target.shape[::-1]).T)
        for view in views:
            err = float(np.max(np.abs(view.astype(np.float64) - target)))
            if best_err is None or err < best_err:
                best, best_err = (name, view), err
    scale = float(np.max(np.abs(target))) or 1.0
    return best if best is not None and best_err <= 1e-3 * scale else None


def _match_loose(layer: Layer, loose: list, result: ModelDiff) -> bool:
    """Match an unaligned layer's tensors to loose constants; False when its weight has none
    (the layer then counts as removed); tensors left without a constant are unmatched."""
    found = []
    for key, value in layer.tensors.items():
        match = _closest_constant(value, loose)
        if match is not None:
            found.append((key, value, match))
            loose[:] = [(n, v) for n, v in loose if n != match[0]]
    if not any(key == "weight" for key, _, _ in found):
        return False
    for key, value, (name, view) in found:
        result.tensors.append(_tensor_diff(f"{layer.name}.{key}", name, value, view,
                                           "kept as a graph constant"))
    matched = {key for key, _, _ in found}
    for key, value in layer.tensors.items():
        if key in matched:
            continue
        if not value.any():  # an add of zeros: converters drop it
            result.tensors.append(TensorDiff(f"{layer.name}.{key}", "(none)", tuple(value.shape),
                                             0.0, 0.0, False, "all zeros; dropped by the converter"))
        else:
            result.unmatched_a.append(f"{layer.name}.{key}")
    return True


# ---------------------------------------------------------------- entry point and reports
def diff_models(a, b, options) -> ModelDiff:
    """Load both models (any supported format) and diff them."""
    from .pipeline import load_source

    handle_a, handle_b = load_source(a, options), load_source(b, options)
    a_layers, _ = layers_of(handle_a)
    b_layers, b_loose = layers_of(handle_b)
    a_loose = layers_of(handle_a)[1]
    if a_loose and not b_loose:  # the side with loose constants goes second
        result = _swap(diff_layers(b_layers, a_layers, str(b), str(a), a_loose))
    else:
        result = diff_layers(a_layers, b_layers, str(a), str(b), b_loose)
    result.a_tensors = sum(len(x.tensors) for x in a_layers)
    result.b_tensors = sum(len(x.tensors) for x in b_layers) + len(b_loose or a_loose)
    return result


def _swap(result: ModelDiff) -> ModelDiff:
    for t in result.tensors:
        t.a, t.b = t.b, t.a
    for entry in result.structure:
        entry["a"], entry["b"] = entry["b"], entry["a"]
        entry["change"] = {"added": "removed", "removed": "added"}.get(entry["change"],
                                                                        entry["change"])
    result.a, result.b = result.b, result.a
    result.unmatched_a, result.unmatched_b = result.unmatched_b, result.unmatched_a
    return result


def html_report(result: ModelDiff, path: str) -> str:
    """A self-contained HTML page: summary, per-layer bar chart (inline SVG), tensor table."""
    import html
    import math

    rows = result.tensors
    width, bar_h = 900, 14
    values = [min(t.rel_l2, 10.0) for t in rows]
    top = max([v for v in values if v > 0] or [1e-12])
    bars = []
    for i, (t, v) in enumerate(zip(rows, values)):
        # log scale from 1e-9 up to the largest change, so tiny round-off stays visible
        frac = 0.0 if v <= 0 else max(0.0, (math.log10(v) + 9) / (math.log10(top) + 9 or 1))
        color = "#d62728" if t.changed else "#1f77b4"
        y = i * (bar_h + 2)
        bars.append(f'<text x="0" y="{y + 11}" font-size="10">{html.escape(t.b)[:48]}</text>'
                    f'<rect x="330" y="{y}" width="{frac * (width - 420):.1f}" height="{bar_h}" '
                    f'fill="{color}"><title>{html.escape(t.a)}: rel L2 {t.rel_l2:.3g}'
                    f'</title></rect><text x="{335 + frac * (width - 420):.1f}" y="{y + 11}" '
                    f'font-size="10">{t.rel_l2:.2g}</text>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{len(rows) * (bar_h + 2) + 4}">{"".join(bars)}</svg>')
    table = "".join(f"<tr><td>{html.escape(t.a)}</td><td>{html.escape(t.b)}</td>"
                    f"<td>{'x'.join(map(str, t.shape))}</td><td>{t.rel_l2:.3g}</td>"
                    f"<td>{t.max_abs:.3g}</td><td>{'changed' if t.changed else ''}</td>"
                    f"<td>{html.escape(t.note)}</td></tr>" for t in rows)
    structure = "".join(f"<li>{html.escape(e['change'])}: {html.escape(str(e['a'] or ''))} "
                        f"{html.escape(str(e['b'] or ''))} {html.escape(e['detail'])}</li>"
                        for e in result.structure)
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>diff {html.escape(result.a)} vs {html.escape(result.b)}</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;font-size:12px}}</style></head>
<body><h1>{html.escape(result.b)} against {html.escape(result.a)}</h1>
<p>aligned by {result.alignment}; {len(rows)} tensors matched, {len(result.changed)} changed
(relative L2 &gt; {CHANGED_REL_L2:g}) in layers: {html.escape(', '.join(result.changed_layers)) or 'none'};
{len(result.unmatched_a)} only in A, {len(result.unmatched_b)} only in B.</p>
<ul>{''.join(f'<li>{html.escape(n)}</li>' for n in result.notes)}</ul>
<h2>Weight change per tensor (relative L2, log scale; red = changed)</h2>{svg}
<h2>Structure</h2><ul>{structure or '<li>no structural change</li>'}</ul>
<h2>Tensors</h2><table><tr><th>A</th><th>B</th><th>shape</th><th>rel L2</th><th>max abs</th>
<th></th><th>note</th></tr>{table}</table></body></html>"""
    from pathlib import Path

    Path(path).write_text(page, encoding="utf-8")
    return path
