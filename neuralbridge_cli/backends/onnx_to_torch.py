"""ONNX -> PyTorch through onnx2torch, with the graph fixes and converters it lacks.

onnx2torch 1.5.15 (the last release, 2024) rejects many real graphs:
- TorchScript-exported torchvision models feed deduplicated initializers through
  `Identity` nodes, and its Conv/Gemm converters look weights up by name only
  (`KeyError('onnx::Conv_197')`, onnx2torch issue #156);
- it knows op versions up to opset 17 only (`ReduceMean` 18, `AveragePool` 19,
  `Shape` 19, `Gelu` 20 ... from torch's dynamo exporter, which writes opset 20);
- `Reshape` with `allowzero=1` (written by the dynamo exporter) is refused;
- it has no `LSTM`, `GRU` or `RNN` converter (issues #136, #233);
- a graph output that is one of several outputs of a node comes back as the whole tuple.

`prepare_for_onnx2torch` rewrites the ONNX graph (pure onnx, semantics kept) so
that onnx2torch accepts it; `convert_onnx_to_torch` registers recurrent converters,
converts, and reports failures as one-line `ConversionError`s naming the op.
`save_torch_program` / `load_torch_program` write and read an artifact that needs
nothing but `torch` (a `torch.export` .pt2, or TorchScript as the fallback).
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Callable

from .. import lazy
from ..errors import ConversionError

_LOG = logging.getLogger(__name__)

#: newest default-domain opset whose op versions onnx2torch 1.5.15 knows
TARGET_OPSET = 17
#: constant folding leaves tensors bigger than this (elements) as they are
_FOLD_MAX_ELEMENTS = 1 << 24
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}
_SUFFIX = "__nb"


# --------------------------------------------------------------------------------------
# graph passes (pure onnx)
# --------------------------------------------------------------------------------------
def prepare_for_onnx2torch(model_proto, *, target_opset: int = TARGET_OPSET):
    """Return a copy of `model_proto` rewritten so that onnx2torch can convert it.

    Every pass keeps the graph's semantics (checked against onnxruntime by the tests):
    inline local functions; Constant nodes -> initializers; drop Identity nodes (their
    users read the source directly); fold constant subgraphs (and Shape of static dims);
    decompose ops that have no version before opset 20 (Gelu, Mish); downgrade to opset
    `target_opset` with onnx.version_converter; replace Reshape targets that depend on one
    dynamic dim by a constant with -1 and drop a needless `allowzero=1`; give every graph
    output its own single-output producer; remove dead nodes and initializers.
    The list of fixes applied is logged and kept in metadata_props["neuralbridge.onnx2torch_fixes"].
    """
    onnx = lazy.onnx()
    model = onnx.ModelProto()
    model.CopyFrom(model_proto)
    fixes: Counter = Counter()

    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
        fixes["inline-functions"] += 1
    fixes["constant-to-initializer"] += _constants_to_initializers(model)
    fixes["identity-fold"] += _fold_identities(model)
    fixes["constant-fold"] += _fold_constants(model, _default_opset(model))
    fixes["decompose-new-op"] += _decompose_new_ops(model)
    model, downgraded = _downgrade_opset(model, target_opset)
    if downgraded:
        fixes[f"opset-{downgraded}-to-{target_opset}"] += 1
    fixes["constant-fold"] += _fold_constants(model, _default_opset(model), use_shapes=True)
    fixes["identity-fold"] += _fold_identities(model)
    fixes["reshape-static-target"] += _simplify_reshapes(model)
    fixes["output-identity"] += _separate_graph_outputs(model)
    _remove_dead(model)

    applied = ", ".join(f"{k} x{v}" for k, v in fixes.items() if v)
    if applied:
        _LOG.info("onnx2torch graph fixes: %s", applied)
        _set_metadata(model, "neuralbridge.onnx2torch_fixes", applied)
    return model


def _default_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _set_metadata(model, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def _graph_output_names(graph) -> set:
    return {o.name for o in graph.output}


def _rename_uses(graph, old: str, new: str) -> None:
    """Point every consumer of `old` (also inside subgraphs) at `new`."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            if attr.g is not None and attr.HasField("g"):
                _rename_uses(attr.g, old, new)
            for sub in attr.graphs:
                _rename_uses(sub, old, new)


def _replace_nodes(graph, nodes) -> None:
    nodes = list(nodes)
    del graph.node[:]
    graph.node.extend(nodes)


def _constants_to_initializers(model) -> int:
    """Constant nodes -> initializers: onnx2torch's Conv/Gemm/... converters read weights
    from initializers only (onnx2torch issues #156, #230, #243)."""
    onnx = lazy.onnx()
    from onnx import helper, numpy_helper

    graph = model.graph
    outputs = _graph_output_names(graph)
    keep, count = [], 0
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            keep.append(node)
            continue
        attrs = {a.name: a for a in node.attribute}
        tensor = None
        if "value" in attrs:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attrs["value"].t)
        elif "value_float" in attrs or "value_floats" in attrs or "value_int" in attrs or "value_ints" in attrs:
            import numpy as np

            name = next(iter(k for k in attrs if k.startswith("value_")))
            value = helper.get_attribute_value(attrs[name])
            dtype = np.float32 if "float" in name else np.int64
            tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype))
        if tensor is None:  # sparse or string constants: leave to onnx2torch
            keep.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        count += 1
    _replace_nodes(graph, keep)
    return count


def _fold_identities(model) -> int:
    """Drop Identity nodes that do not produce a graph output; their users read the source.

    The TorchScript exporter routes shared weights through Identity nodes, which onnx2torch
    cannot look up as initializers (`KeyError('onnx::Conv_197')`)."""
    graph = model.graph
    outputs = _graph_output_names(graph)
    keep, count = [], 0
    renames = {}
    for node in graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            source = node.input[0]
            renames[node.output[0]] = renames.get(source, source)
            count += 1
        else:
            keep.append(node)
    _replace_nodes(graph, keep)
    for old, new in renames.items():
        _rename_uses(graph, old, new)
    return count


def _value_types(model, use_shapes: bool):
    """name -> TypeProto.tensor_type for every value onnx shape inference can type."""
    onnx = lazy.onnx()
    if use_shapes and model.ByteSize() < (1 << 31) - (1 << 24):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
            graph = inferred.graph
        except Exception as exc:  # shape inference is an aid, not a requirement
            _LOG.debug("shape inference failed: %s", exc)
            graph = model.graph
    else:
        graph = model.graph
    types = {}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type
    return types


def _static_shape(tensor_type):
    """Tuple of ints, or None when any dim is unknown."""
    if tensor_type is None or not tensor_type.HasField("shape"):
        return None
    dims = []
    for dim in tensor_type.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        dims.append(int(dim.dim_value))
    return tuple(dims)


def _fold_constants(model, opset: int, use_shapes: bool = False) -> int:
    """Evaluate nodes whose inputs are all constant (onnx.reference) into initializers.

    With `use_shapes`, `Shape`/`Size` of values whose shape inference gives static dims fold
    too, which turns shape subgraphs of static dims into constants."""
    import numpy as np
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    outputs = _graph_output_names(graph)
    consts = {init.name: init for init in graph.initializer}
    types = _value_types(model, use_shapes) if use_shapes else {}
    arrays: dict = {}
    keep, count = [], 0

    def array(name):
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(consts[name])
        return arrays[name]

    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or any(o in outputs for o in node.output) \
                or node.op_type in _NONDETERMINISTIC or any(a.type in (5, 10) for a in node.attribute):
            keep.append(node)
            continue
        results = None
        if use_shapes and node.op_type in ("Shape", "Size") and node.input[0] not in consts:
            shape = _static_shape(types.get(node.input[0]))
            if shape is not None:
                if node.op_type == "Size":
                    results = [np.asarray(int(np.prod(shape)), dtype=np.int64)]
                else:
                    attrs = {a.name: a.i for a in node.attribute}
                    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
                    results = [np.asarray(shape[slice(start, end if end != 0 or "end" in attrs else None)],
                                          dtype=np.int64)]
        elif node.input and all(name == "" or name in consts for name in node.input) \
                and node.op_type not in ("Constant",):
            sizes = [consts[n].ByteSize() for n in node.input if n]
            try:
                evaluator = ReferenceEvaluator(node, opsets={"": opset})
                feeds = {name: array(name) for name in node.input if name}
                results = evaluator.run(None, feeds)
            except Exception as exc:  # an op the reference runtime lacks: leave it to onnx2torch
                _LOG.debug("could not fold %s %s: %s", node.op_type, node.name, exc)
                results = None
            if results is not None and any(np.asarray(r).size > max(_FOLD_MAX_ELEMENTS, 4 * sum(sizes))
                                           for r in results):
                results = None
        if results is None or len(results) != len(node.output) \
                or any(np.asarray(r).dtype == object for r in results):
            keep.append(node)
            continue
        for name, value in zip(node.output, results):
            if not name:
                continue
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            consts[name] = tensor
            arrays[name] = np.asarray(value)
        count += 1
    _replace_nodes(graph, keep)
    return count


def _elem_type(types, name, default=1):
    tensor_type = types.get(name)
    return tensor_type.elem_type if tensor_type is not None and tensor_type.elem_type else default


def _decompose_new_ops(model) -> int:
    """Rewrite ops that exist only since opset 18+ (no older version to convert to) into
    older ops: Gelu-20 -> Div/Erf/Add/Mul (or the tanh form), Mish-18 -> Softplus/Tanh/Mul."""
    from onnx import helper, numpy_helper
    import numpy as np

    graph = model.graph
    if not any(n.op_type in ("Gelu", "Mish") and n.domain in ("", "ai.onnx") for n in graph.node):
        return 0
    types = _value_types(model, True)
    new_nodes, count = [], 0
    np_types = {1: np.float32, 10: np.float16, 11: np.float64}

    def const(base, value, elem):
        name = f"{base}{_SUFFIX}_c{len(graph.initializer)}"
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np_types.get(elem, np.float32)),
                                                         name))
        return name

    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gelu", "Mish"):
            new_nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        elem = _elem_type(types, x)
        base = (node.name or node.op_type).replace("/", "_")
        t = lambda k: f"{y}{_SUFFIX}_{k}"  # noqa: E731
        if node.op_type == "Mish":
            new_nodes += [helper.make_node("Softplus", [x], [t("sp")], name=f"{base}/softplus"),
                          helper.make_node("Tanh", [t("sp")], [t("th")], name=f"{base}/tanh"),
                          helper.make_node("Mul", [x, t("th")], [y], name=f"{base}/mul")]
        elif helper.get_node_attr_value(node, "approximate") in (b"tanh", "tanh") \
                if any(a.name == "approximate" for a in node.attribute) else False:
            # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
            new_nodes += [
                helper.make_node("Mul", [x, x], [t("x2")], name=f"{base}/x2"),
                helper.make_node("Mul", [t("x2"), x], [t("x3")], name=f"{base}/x3"),
                helper.make_node("Mul", [t("x3"), const(base, 0.044715, elem)], [t("cx3")], name=f"{base}/cx3"),
                helper.make_node("Add", [x, t("cx3")], [t("inner")], name=f"{base}/inner"),
                helper.make_node("Mul", [t("inner"), const(base, math.sqrt(2.0 / math.pi), elem)], [t("scaled")],
                                 name=f"{base}/scaled"),
                helper.make_node("Tanh", [t("scaled")], [t("tanh")], name=f"{base}/tanh"),
                helper.make_node("Add", [t("tanh"), const(base, 1.0, elem)], [t("one_plus")], name=f"{base}/add1"),
                helper.make_node("Mul", [x, t("one_plus")], [t("xm")], name=f"{base}/mulx"),
                helper.make_node("Mul", [t("xm"), const(base, 0.5, elem)], [y], name=f"{base}/half"),
            ]
        else:  # exact: 0.5 * x * (1 + erf(x / sqrt(2)))
            new_nodes += [
                helper.make_node("Div", [x, const(base, math.sqrt(2.0), elem)], [t("div")], name=f"{base}/div"),
                helper.make_node("Erf", [t("div")], [t("erf")], name=f"{base}/erf"),
                helper.make_node("Add", [t("erf"), const(base, 1.0, elem)], [t("one_plus")], name=f"{base}/add1"),
                helper.make_node("Mul", [x, t("one_plus")], [t("xm")], name=f"{base}/mulx"),
                helper.make_node("Mul", [t("xm"), const(base, 0.5, elem)], [y], name=f"{base}/half"),
            ]
        count += 1
    _replace_nodes(graph, new_nodes)
    return count


def _downgrade_opset(model, target: int):
    """onnx.version_converter to `target` when the default-domain opset is newer.

    Returns (model, old_opset or 0)."""
    onnx = lazy.onnx()
    from onnx import version_converter

    current = _default_opset(model)
    if current <= target:
        return model, 0
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:  # the converter names the op it cannot adapt
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        ops = sorted({n.op_type for n in model.graph.node})
        raise ConversionError(
            f"cannot lower ONNX opset {current} to {target} for onnx2torch: {message}",
            hint=f"re-export the model at opset {target} (ops in graph: {', '.join(ops[:12])})") from exc
    return converted, current


# --- symbolic values of small int64 shape tensors -------------------------------------
class _Dim:
    """An unknown (dynamic) dimension, tagged by where it came from."""

    __slots__ = ("tag",)

    def __init__(self, tag):
        self.tag = tag

    def __repr__(self):
        return f"Dim({self.tag})"


def _shape_values(model, types):
    """Partial evaluation of 1-D int shape tensors: name -> (rank, [int | _Dim, ...])."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    values = {}
    for init in graph.initializer:
        if init.data_type in (6, 7) and len(init.dims) <= 1 and (not init.dims or init.dims[0] <= 64):
            arr = numpy_helper.to_array(init)
            values[init.name] = (arr.ndim, [int(v) for v in arr.reshape(-1)])

    def const_list(name):
        entry = values.get(name)
        if entry is None or any(isinstance(v, _Dim) for v in entry[1]):
            return None
        return entry[1]

    for node in graph.node:
        op = node.op_type
        ins = list(node.input)
        attrs = {a.name: a for a in node.attribute}
        result = None
        try:
            if op == "Shape":
                tensor_type = types.get(ins[0])
                if tensor_type is not None and tensor_type.HasField("shape"):
                    dims = []
                    for k, dim in enumerate(tensor_type.shape.dim):
                        if dim.HasField("dim_value"):
                            dims.append(int(dim.dim_value))
                        else:
                            dims.append(_Dim((ins[0], k)))
                    start = attrs["start"].i if "start" in attrs else 0
                    end = attrs["end"].i if "end" in attrs else len(dims)
                    result = (1, dims[slice(start, end)])
            elif op in ("Cast", "Identity") and ins[0] in values:
                result = values[ins[0]]
            elif op == "Gather" and ins[0] in values and const_list(ins[1]) is not None \
                    and (attrs["axis"].i if "axis" in attrs else 0) == 0:
                src = values[ins[0]][1]
                idx = const_list(ins[1])
                rank_idx = values[ins[1]][0]
                picked = [src[i] for i in idx]
                result = (rank_idx, picked)
            elif op == "Unsqueeze" and ins[0] in values and values[ins[0]][0] == 0:
                result = (1, values[ins[0]][1])
            elif op == "Squeeze" and ins[0] in values and len(values[ins[0]][1]) == 1:
                result = (0, values[ins[0]][1])
            elif op == "Concat" and all(i in values for i in ins):
                result = (1, [v for i in ins for v in values[i][1]])
            elif op == "Slice" and ins[0] in values and values[ins[0]][0] == 1:
                starts, ends = const_list(ins[1]), const_list(ins[2])
                axes = const_list(ins[3]) if len(ins) > 3 and ins[3] else [0]
                steps = const_list(ins[4]) if len(ins) > 4 and ins[4] else [1]
                if starts is not None and ends is not None and axes in ([0], [-1]) and steps is not None:
                    src = values[ins[0]][1]
                    result = (1, src[slice(starts[0], min(ends[0], len(src) + 1), steps[0])])
        except (IndexError, KeyError, ValueError, TypeError):
            result = None
        if result is not None and node.output:
            values[node.output[0]] = result
    return values


def _simplify_reshapes(model) -> int:
    """Give Reshape a constant target where its shape tensor is known but for one dynamic dim.

    E.g. `Reshape(x, Concat(Gather(Shape(x), 0), [197, 768]))` becomes `Reshape(x, [-1, 197, 768])`
    (the same result: reshape keeps the element count). Constant targets keep the converted
    torch module free of data-dependent shapes, so torch.export works with a dynamic batch.
    `allowzero=1` is dropped when the target has no 0 (it only changes the meaning of 0s);
    a dynamic dim is taken to be non-zero (a tensor with a 0-size dim is empty anyway).
    """
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    if not any(n.op_type == "Reshape" for n in graph.node):
        return 0
    types = _value_types(model, True)
    values = _shape_values(model, types)
    count = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
            continue
        entry = values.get(node.input[1])
        allowzero_attr = [a for a in node.attribute if a.name == "allowzero"]
        allowzero = bool(allowzero_attr and allowzero_attr[0].i)
        if entry is None:
            continue
        dims = list(entry[1])
        unknown = [k for k, v in enumerate(dims) if isinstance(v, _Dim)]
        known_zero = any((not isinstance(v, _Dim)) and v == 0 for v in dims)
        if allowzero and not known_zero:
            node.attribute.remove(allowzero_attr[0])
            allowzero = False
        if not unknown or len(unknown) > 1 or -1 in dims:
            if unknown:
                continue
        target = list(dims)
        if unknown:
            # a dim copied from the input at the same position (ONNX 0 = copy) keeps it dynamic
            # without a -1; otherwise the single unknown becomes -1
            target[unknown[0]] = -1
        if any(v == 0 for v in target) and allowzero:
            continue
        # resolve ONNX "0 = copy the input dim" where the input dim is static
        in_shape = types.get(node.input[0])
        for k, v in enumerate(target):
            if v == 0 and not allowzero:
                dim = in_shape.shape.dim[k] if in_shape is not None and in_shape.HasField("shape") \
                    and k < len(in_shape.shape.dim) else None
                if dim is not None and dim.HasField("dim_value"):
                    target[k] = int(dim.dim_value)
        name = f"{node.input[1]}{_SUFFIX}_static{count}"
        graph.initializer.append(numpy_helper.from_array(np.asarray(target, dtype=np.int64), name))
        node.input[1] = name
        count += 1
    return count


def _separate_graph_outputs(model) -> int:
    """Make each graph output the only output of its own node.

    onnx2torch returns a node's whole output tuple when a graph output is one of several
    outputs of a node (LSTM's Y_h, Split...), and cannot return a graph input or initializer
    directly; an Identity node in front of such an output fixes both."""
    from onnx import helper

    graph = model.graph
    producers = {}
    for node in graph.node:
        for k, name in enumerate(node.output):
            if name:
                producers[name] = node
    sources = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    seen, count = set(), 0
    for out in graph.output:
        name = out.name
        producer = producers.get(name)
        needs = name in sources or name in seen or (producer is not None and len(producer.output) > 1)
        seen.add(name)
        if not needs:
            continue
        inner = f"{name}{_SUFFIX}_out"
        if producer is not None:
            for k, o in enumerate(producer.output):
                if o == name:
                    producer.output[k] = inner
            _rename_uses(graph, name, inner)
            src = inner
        else:
            src = name
            inner = name
        if src == name:  # a graph input / initializer: copy it under the output name is impossible,
            # rename the output instead (ONNX names are not visible to the torch module)
            new_name = f"{name}{_SUFFIX}_copy"
            out.name = new_name
            graph.node.append(helper.make_node("Identity", [name], [new_name], name=f"{new_name}/identity"))
        else:
            graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}/identity"))
        count += 1
    if count:  # keep the graph topologically sorted: identities after their producers
        _toposort(graph)
    return count


def _toposort(graph) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        pending = rest
        if not progressed:  # outer-scope names or a cycle: keep the remaining order
            ordered.extend(pending)
            break
    _replace_nodes(graph, ordered)


def _remove_dead(model) -> None:
    """Drop nodes whose outputs nobody reads, then unused initializers."""
    graph = model.graph
    needed = _graph_output_names(graph)

    def subgraph_inputs(g, acc):
        for node in g.node:
            acc.update(node.input)
            for attr in node.attribute:
                if attr.HasField("g"):
                    subgraph_inputs(attr.g, acc)
                for sub in attr.graphs:
                    subgraph_inputs(sub, acc)

    live = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output if o):
            live.append(node)
            needed.update(node.input)
            for attr in node.attribute:
                if attr.HasField("g"):
                    subgraph_inputs(attr.g, needed)
                for sub in attr.graphs:
                    subgraph_inputs(sub, needed)
    live.reverse()
    if len(live) != len(graph.node):
        _replace_nodes(graph, live)
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)


# --------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------
def convert_onnx_to_torch(model_proto, *, progress: Callable[[str], None] | None = None):
    """ONNX ModelProto -> torch.nn.Module (a torch.fx.GraphModule), in eval mode.

    Call it as `module(*tensors)` with the ONNX graph inputs in order; it returns one tensor
    for one output, a list for several. Raises ConversionError naming the op that failed."""
    say = progress or (lambda message: None)
    torch = lazy.torch()
    onnx2torch = lazy.require("onnx2torch", "convert ONNX to PyTorch")
    from . import _onnx2torch_rnn

    _onnx2torch_rnn.register()
    say("preparing the ONNX graph for onnx2torch")
    prepared = prepare_for_onnx2torch(model_proto)
    _check_converters(prepared)
    say(f"onnx2torch: converting {len(prepared.graph.node)} nodes")
    try:
        module = onnx2torch.convert(prepared)
    except ConversionError:
        raise
    except Exception as exc:
        raise _conversion_error(exc, prepared) from exc
    module.eval()
    with torch.no_grad():
        for param in module.parameters():
            param.requires_grad_(False)
    return module


def _check_converters(model) -> None:
    """Fail early, naming every op (and version) onnx2torch has no converter for."""
    from onnx import defs
    from onnx2torch.node_converters.registry import get_converter

    opsets = {imp.domain or "": imp.version for imp in model.opset_import}
    missing = []
    for node in model.graph.node:
        domain = node.domain if node.domain != "ai.onnx" else ""
        version = opsets.get(domain, 1)
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except NotImplementedError:
            try:
                since = defs.get_schema(node.op_type, max_inclusive_version=version, domain=domain).since_version
            except Exception:
                since = version
            label = f"{domain + '.' if domain else ''}{node.op_type} (op version {since})"
            if label not in missing:
                missing.append(label)
    if missing:
        raise ConversionError(f"onnx2torch has no converter for {', '.join(missing)}",
                              hint="re-export with other ops, or convert through another route")


def _conversion_error(exc: Exception, model) -> ConversionError:
    """Name the ONNX node onnx2torch was converting when `exc` was raised."""
    node = None
    tb = exc.__traceback__
    while tb is not None:
        frame_node = tb.tb_frame.f_locals.get("onnx_node")
        if frame_node is not None and tb.tb_frame.f_code.co_name == "convert":
            node = frame_node
        tb = tb.tb_next
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if node is not None:
        opsets = {imp.domain or "": imp.version for imp in model.opset_import}
        version = opsets.get(node.domain or "", 0)
        try:
            from onnx import defs

            version = defs.get_schema(node.operation_type, max_inclusive_version=version,
                                      domain=node.domain or "").since_version
        except Exception:
            pass
        return ConversionError(
            f"onnx2torch failed on {node.operation_type} (op version {version}) node "
            f"'{node.name or node.unique_name}': {type(exc).__name__}: {detail}")
    return ConversionError(f"onnx2torch failed: {type(exc).__name__}: {detail}")


# --------------------------------------------------------------------------------------
# saving a program that needs only torch
# --------------------------------------------------------------------------------------
def save_torch_program(module, example_inputs: list, path, *, dynamic_batch: bool = True,
                       prefer: str = "exported") -> str:
    """Write `module` so that plain `torch` can load and run it (nothing of onnx2torch needed).

    First `torch.export.export` (dim 0 of every input dynamic when `dynamic_batch`) and
    `torch.export.save`; if export fails, `torch.jit.trace` + `torch.jit.save` (TorchScript).
    `prefer="torchscript"` goes straight to TorchScript. Returns "exported" or "torchscript";
    when the dynamic batch could not be kept, a warning is logged and the returned format
    gets the suffix "+fixed-batch" (e.g. "torchscript+fixed-batch").
    """
    torch = lazy.torch()
    if prefer not in ("exported", "torchscript"):
        raise ValueError(f"prefer must be 'exported' or 'torchscript', not {prefer!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = tuple(example_inputs)
    module.eval()
    errors = []
    if prefer == "exported":
        try:
            fixed = _save_exported(torch, module, inputs, path, dynamic_batch)
            return "exported" + ("+fixed-batch" if fixed else "")
        except Exception as exc:  # fall back to TorchScript
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            errors.append(f"torch.export: {type(exc).__name__}: {detail}")
            _LOG.info("torch.export failed, falling back to TorchScript: %s", errors[-1])
    try:
        fixed = _save_torchscript(torch, module, inputs, path, dynamic_batch)
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        errors.append(f"torch.jit.trace: {type(exc).__name__}: {detail}")
        raise ConversionError("could not save a torch program: " + "; ".join(errors)) from exc
    return "torchscript" + ("+fixed-batch" if fixed else "")


def _batch_variant(torch, inputs, batch: int):
    """The example inputs resized along dim 0 to `batch` (repeating rows)."""
    out = []
    for tensor in inputs:
        if not hasattr(tensor, "dim") or tensor.dim() == 0 or tensor.shape[0] == 0:
            out.append(tensor)
            continue
        reps = -(-batch // tensor.shape[0])
        out.append(torch.cat([tensor] * reps, 0)[:batch].clone())
    return out


def _outputs_match(torch, got, want) -> bool:
    got = list(got) if isinstance(got, (list, tuple)) else [got]
    want = list(want) if isinstance(want, (list, tuple)) else [want]
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if tuple(g.shape) != tuple(w.shape):
            return False
        if w.is_floating_point():
            scale = float(w.abs().max()) if w.numel() else 0.0
            if w.numel() and float((g.double() - w.double()).abs().max()) > 1e-4 * max(scale, 1e-6) + 1e-6:
                return False
        elif not torch.equal(g, w):
            return False
    return True


def _check_other_batch(torch, run, module, inputs) -> bool:
    """True when `run` (the saved program) matches `module` at a batch other than the example's."""
    batches = [t.shape[0] for t in inputs if hasattr(t, "dim") and t.dim() > 0]
    if not batches:
        return True
    other = _batch_variant(torch, inputs, batches[0] + 1)
    with torch.no_grad():
        try:
            return _outputs_match(torch, run(*other), module(*other))
        except Exception as exc:
            _LOG.debug("saved program fails at batch %d: %s", batches[0] + 1, exc)
            return False


def _save_exported(torch, module, inputs, path, dynamic_batch: bool) -> bool:
    """torch.export + save; returns True when the batch had to stay fixed."""
    fixed = False
    program = None
    if dynamic_batch and any(hasattr(t, "dim") and t.dim() > 0 for t in inputs):
        batch = torch.export.Dim("batch", min=1)
        shapes = tuple({0: batch} if hasattr(t, "dim") and t.dim() > 0 else None for t in inputs)
        try:
            program = torch.export.export(module, inputs, dynamic_shapes=shapes, strict=False)
            if not _check_other_batch(torch, program.module(), module, inputs):
                program = None
        except Exception as exc:
            _LOG.info("torch.export with a dynamic batch failed (%s); exporting a fixed batch",
                      (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200])
            program = None
        if program is None:
            fixed = True
    if program is None:
        program = torch.export.export(module, inputs, strict=False)
    with torch.no_grad():
        if not _outputs_match(torch, program.module()(*inputs), module(*inputs)):
            raise RuntimeError("the exported program's outputs differ from the module's")
    torch.export.save(program, str(path))
    if fixed and dynamic_batch:
        _LOG.warning("%s: saved with the example's fixed batch size", path)
    return fixed


def _save_torchscript(torch, module, inputs, path, dynamic_batch: bool) -> bool:
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, inputs, check_trace=True, strict=False)
    fixed = bool(dynamic_batch) and not _check_other_batch(torch, traced, module, inputs)
    torch.jit.save(traced, str(path))
    if fixed:
        _LOG.warning("%s: the TorchScript trace keeps the example's batch size", path)
    return fixed


def load_torch_program(path):
    """Load what save_torch_program wrote: a callable module (plain torch only)."""
    torch = lazy.torch()
    path = str(path)
    try:
        return torch.export.load(path).module()
    except Exception as export_exc:
        try:
            return torch.jit.load(path)
        except Exception as jit_exc:
            raise ConversionError(f"{path} is neither a torch.export program nor TorchScript: "
                                  f"{(str(export_exc).splitlines() or [''])[0][:200]}") from jit_exc


__all__ = ["prepare_for_onnx2torch", "convert_onnx_to_torch", "save_torch_program",
           "load_torch_program", "TARGET_OPSET"]
