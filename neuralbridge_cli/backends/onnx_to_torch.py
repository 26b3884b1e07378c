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

import keyword
import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Callable

from .. import lazy
from ..errors import ConversionError
from .onnx_shapes import light_copy as _light_copy, numel as _numel, remove_dead as _remove_dead, \
    shape_values as _shape_values, static_shape as _static_shape, value_types as _value_types

_LOG = logging.getLogger(__name__)

#: newest default-domain opset whose op versions onnx2torch 1.5.15 knows
TARGET_OPSET = 17
#: constant folding keeps a node whose result is bigger than this (elements) and than 4x its inputs
_FOLD_MAX_ELEMENTS = 1 << 20
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}
_SUFFIX = "__nb"


# --------------------------------------------------------------------------------------
# graph passes (pure onnx)
# --------------------------------------------------------------------------------------
def prepare_for_onnx2torch(model_proto, *, target_opset: int = TARGET_OPSET):
    """Return a copy of `model_proto` rewritten so that onnx2torch can convert it.

    Every pass keeps the graph's semantics (checked against onnxruntime by the tests):
    1. inline local functions;
    2. Constant nodes -> initializers (onnx2torch reads weights from initializers only);
    3. drop Identity nodes, their users read the source (TorchScript exports route shared
       weights through Identity: onnx2torch `KeyError('onnx::Conv_197')`);
    4. fold nodes whose inputs are all constant (onnx.reference);
    4b. unroll Loops with a constant trip count and a condition that stays true (tf2onnx's
       form of a Keras 3 GRU; onnx2torch has no Loop);
    5. decompose ops that have no version before opset 18/20 (Gelu -> Erf form or tanh form,
       Mish -> Softplus/Tanh/Mul);
    6. lower the default-domain opset to `target_opset` (17, the newest onnx2torch knows) with
       onnx.version_converter, or by hand where it has no adapter (Split-18, ...), and drop
       `noop_with_empty_axes` that version_converter leaves on Reduce* ops;
    7. fold Shape/Size of static dims and every small int tensor computed from static dims;
    8. give Reshape a constant target where it depends on one dynamic dim (-1 there) and
       drop a needless `allowzero=1` (onnx2torch refuses it);
    8b. turn auto_pad SAME_UPPER/SAME_LOWER (tf2onnx writes it for Keras "same" padding;
       onnx2torch refuses it) into explicit pads where the spatial input size is known;
    9. give every graph output its own single-output producer (onnx2torch returns a whole
       output tuple for an output of a multi-output node, and cannot return an input);
    10. rename nodes whose names hold characters that break .pt2 serialization;
    11. remove dead nodes and initializers.
    The fixes applied are logged and kept in metadata_props["neuralbridge.onnx2torch_fixes"].
    Raises ConversionError when the opset cannot be lowered.
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
    fixes["loop-unroll"] += _unroll_static_loops(model)
    fixes["decompose-new-op"] += _decompose_new_ops(model)
    model, downgraded = _downgrade_opset(model, target_opset)
    if downgraded:
        fixes[f"opset-{downgraded}-to-{target_opset}"] += 1
    fixes["constant-fold"] += _fold_constants(model, _default_opset(model), use_shapes=True)
    fixes["identity-fold"] += _fold_identities(model)
    if _materialize_known_values(model):
        fixes["static-shape-fold"] += 1
        fixes["constant-fold"] += _fold_constants(model, _default_opset(model))
    fixes["reshape-static-target"] += _simplify_reshapes(model)
    fixes["explicit-same-pads"] += _explicit_same_pads(model)
    fixes["output-identity"] += _separate_graph_outputs(model)
    fixes["node-rename"] += _sanitize_node_names(model)
    _remove_dead(model)

    applied = ", ".join(f"{k} x{v}" for k, v in fixes.items() if v)
    if applied:
        _LOG.info("onnx2torch graph fixes: %s", applied)
        _set_metadata(model, "neuralbridge.onnx2torch_fixes", applied)
    return model


_SAME_PAD_OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")


def _explicit_same_pads(model) -> int:
    """auto_pad SAME_* -> explicit `pads`, computed from the input's static spatial size:
    output size ceil(in / stride); the total padding splits evenly, the odd pixel at the end
    (SAME_UPPER) or at the start (SAME_LOWER). Nodes whose input size is unknown stay."""
    from onnx import helper

    types = None
    changed = 0
    for node in model.graph.node:
        if node.op_type not in _SAME_PAD_OPS:
            continue
        attrs = {a.name: a for a in node.attribute}
        mode = attrs.get("auto_pad")
        if mode is None or mode.s not in (b"SAME_UPPER", b"SAME_LOWER"):
            continue
        if types is None:
            types = _value_types(model, True)
        shape = _dims(types.get(node.input[0]))
        kernel = _kernel_shape(model, node, attrs)
        if shape is None or kernel is None or len(shape) != len(kernel) + 2 or \
                None in shape[2:]:  # the batch and channel dims may be unknown
            continue
        rank = len(kernel)
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * rank
        dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * rank
        begins, ends = [], []
        for size, k, s, d in zip(shape[2:], kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            begins.append(small if mode.s == b"SAME_UPPER" else total - small)
            ends.append(total - begins[-1])
        keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute("pads", begins + ends)])
        changed += 1
    return changed


def _dims(tensor_type) -> list[int | None] | None:
    """Dims of a typed value (None where unknown), or None when its rank is unknown."""
    if tensor_type is None or not tensor_type.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") else None
            for d in tensor_type.shape.dim]


def _kernel_shape(model, node, attrs) -> list[int] | None:
    """A pooling node's kernel_shape, or a Conv's (attribute, else its weight's dims)."""
    if "kernel_shape" in attrs:
        return list(attrs["kernel_shape"].ints)
    if node.op_type == "Conv" and len(node.input) > 1:
        for init in model.graph.initializer:
            if init.name == node.input[1]:
                return list(init.dims[2:])
    return None


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_./-]")


def _sanitize_node_names(model) -> int:
    """Replace characters other than letters, digits and `_./-` in node names.

    onnx2torch names its submodules after the nodes, and torch.export records those names
    in each node's nn_module_stack, which the .pt2 serializer joins with ',' and ';': a
    TFLite-derived name such as `model/conv2d/Conv2D;model/conv2d/BiasAdd` then writes a
    file that torch.export.load cannot read back."""
    taken = {node.name for node in model.graph.node}
    renamed = 0
    for node in model.graph.node:
        if not _UNSAFE_NAME_CHARS.search(node.name):
            continue
        base = _UNSAFE_NAME_CHARS.sub("_", node.name)
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        node.name = name
        renamed += 1
    return renamed


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


def _rename_uses(graph, renames: dict) -> None:
    """Point every consumer of a name in `renames` (also inside subgraphs) at its new name."""
    if not renames:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for attr in node.attribute:
            if attr.HasField("g"):
                _rename_uses(attr.g, renames)
            for sub in attr.graphs:
                _rename_uses(sub, renames)


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
    _rename_uses(graph, renames)
    return count


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
                    results = [np.asarray(shape[attrs.get("start", 0):attrs.get("end", len(shape))],
                                          dtype=np.int64)]
        elif node.input and all(name == "" or name in consts for name in node.input) \
                and node.op_type not in ("Constant",):
            sizes = [_numel(consts[n]) for n in node.input if n]
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


#: unrolling stops at this many added nodes and constants (the graph grows with the trip count)
_UNROLL_MAX_NODES = 50_000


def _unroll_static_loops(model) -> int:
    """Unroll Loop nodes whose trip count is a known constant and whose condition stays true.

    tf2onnx turns a Keras 3 GRU/SimpleRNN (a TF while loop it has no pattern for) into an
    ONNX Loop, and onnx2torch has no Loop converter. With a static sequence length the loop
    is a fixed chain of cell steps: the body is copied once per iteration (iteration number
    as a constant, loop-carried values threaded through, scan outputs stacked with
    Unsqueeze + Concat). Every condition must fold to a constant true, or nothing changes.
    Returns the number of loops unrolled."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    if not any(n.op_type == "Loop" and n.domain in ("", "ai.onnx") for n in graph.node):
        return 0
    onnx = lazy.onnx()
    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    values = _shape_values(trial, _value_types(trial, True))
    opset = _default_opset(trial)
    conds: list[str] = []
    nodes, count = [], 0
    for index, node in enumerate(trial.graph.node):
        unrolled = None
        if node.op_type == "Loop" and node.domain in ("", "ai.onnx"):
            tag = f"loop{index}_{(node.name or node.output[0]).replace('/', '_')}"
            unrolled = _unrolled_loop(trial, node, tag, values, opset, conds)
        if unrolled is None:
            nodes.append(node)
        else:
            nodes.extend(unrolled)
            count += 1
    if not count:
        return 0
    _replace_nodes(trial.graph, nodes)
    # no identity folding before the check: it would drop the names the conditions have
    _constants_to_initializers(trial)
    _fold_constants(trial, opset)
    inits = {i.name: i for i in trial.graph.initializer}
    if not all(c in inits and bool(np.all(numpy_helper.to_array(inits[c]))) for c in conds):
        _LOG.info("a Loop condition does not fold to a constant: loops left as they are")
        return 0
    model.CopyFrom(trial)
    return count


def _unrolled_loop(model, node, tag: str, values, opset: int, conds: list):
    """The nodes that replace one Loop (None when it cannot be unrolled); adds initializers and
    appends to `conds` the names of the conditions that must be true."""
    import numpy as np
    from onnx import helper, numpy_helper

    body = next((a.g for a in node.attribute if a.name == "body"), None)
    trip = values.get(node.input[0]) if node.input and node.input[0] else None
    if body is None or trip is None or len(trip[1]) != 1 or not isinstance(trip[1][0], int) \
            or any(a.type in (5, 10) for b in body.node for a in b.attribute) \
            or body.sparse_initializer:
        return None
    steps = trip[1][0]
    carried = list(node.input[2:])
    scans = len(body.output) - 1 - len(carried)
    # every step adds its body, an iteration constant and one Unsqueeze per scan output
    if steps < 1 or scans < 0 or steps * (len(body.node) + 1 + scans) > _UNROLL_MAX_NODES:
        return None
    graph = model.graph

    def add_constant(name, array):
        graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    shared = {init.name: add_constant(f"{tag}/{init.name}", numpy_helper.to_array(init))
              for init in body.initializer}
    cond = node.input[1] if len(node.input) > 1 and node.input[1] else \
        add_constant(f"{tag}/cond_init", np.asarray(True))
    conds.append(cond)
    out, scan_values = [], [[] for _ in range(scans)]
    for k in range(steps):
        env = dict(shared)
        env[body.input[0].name] = add_constant(f"{tag}/iter{k}", np.asarray(k, np.int64))
        env[body.input[1].name] = cond
        env.update({b.name: v for b, v in zip(body.input[2:], carried)})
        for j, b in enumerate(body.node):
            copy = helper.make_node(b.op_type, [env.get(i, i) for i in b.input],
                                    [f"{tag}/{k}/{o}" if o else "" for o in b.output],
                                    name=f"{tag}/{k}/{b.name or f'{b.op_type}_{j}'}",
                                    domain=b.domain)
            copy.attribute.extend(b.attribute)
            env.update({o: c for o, c in zip(b.output, copy.output) if o})
            out.append(copy)
        results = [env.get(o.name, o.name) for o in body.output]
        cond = results[0]
        if k < steps - 1:
            conds.append(cond)
        carried = results[1:1 + len(carried)]
        for s in range(scans):
            scan_values[s].append(results[1 + len(carried) + s])
    for name, value in zip(node.output, carried):
        if name:
            out.append(helper.make_node("Identity", [value], [name], name=f"{tag}/final/{name}"))
    axes = add_constant(f"{tag}/axis0", np.asarray([0], np.int64))
    for s, name in enumerate(node.output[len(carried):]):
        if not name:
            continue
        stacked = []
        for k, value in enumerate(scan_values[s]):
            item = f"{tag}/scan{s}/{k}"
            args = ([value, axes], {}) if opset >= 13 else ([value], {"axes": [0]})
            out.append(helper.make_node("Unsqueeze", args[0], [item], name=item, **args[1]))
            stacked.append(item)
        out.append(helper.make_node("Concat", stacked, [name], axis=0, name=f"{tag}/scan{s}"))
    return out


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
        elif next((a.s for a in node.attribute if a.name == "approximate"), b"none") == b"tanh":
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
        converted = _restore_initializers(version_converter.convert_version(_light_copy(model), target), model)
    except Exception as exc:  # e.g. "No Adapter From Version $18 for Split": lower by hand
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        _LOG.info("onnx.version_converter failed (%s); lowering the ops by hand", message[:200])
        converted = onnx.ModelProto()
        converted.CopyFrom(model)
        _lower_by_hand(converted, target)
    _fix_reduce_attributes(converted, target)
    problem = _check_problem(converted)
    if problem and not _check_problem(model):  # only complain about what the lowering broke
        raise ConversionError(f"lowering ONNX opset {current} to {target} gave an invalid graph: {problem}",
                              hint=f"re-export the model at opset {target}")
    return converted, current


def _restore_initializers(light, model):
    """Put back the big initializers `_light_copy` turned into graph inputs."""
    kept = {i.name for i in light.graph.initializer}
    original_inputs = {i.name for i in model.graph.input}
    moved = [init for init in model.graph.initializer if init.name not in kept]
    moved_names = {init.name for init in moved}
    inputs = [i for i in light.graph.input if i.name not in moved_names or i.name in original_inputs]
    del light.graph.input[:]
    light.graph.input.extend(inputs)
    light.graph.initializer.extend(moved)
    return light


def _check_problem(model) -> str | None:
    """onnx.checker's complaint about `model` (first line), or None."""
    onnx = lazy.onnx()
    try:
        onnx.checker.check_model(_light_copy(model))
    except onnx.checker.ValidationError as exc:
        return (str(exc).strip().splitlines() or ["invalid model"])[0][:300]
    return None


# attributes added after opset 17 that may be dropped when they hold their default value
_DEFAULT_ONLY_ATTRS = {"saturate": 1, "antialias": 0, "keep_aspect_ratio_policy": b"stretch",
                       "block_size": 0, "output_dtype": 0, "ceil_mode": 0}


def _lower_by_hand(model, target: int) -> None:
    """Rewrite nodes whose op version is newer than opset `target` into their older form.

    Handles the changes of opsets 18-2x that real exporters produce: Reduce* axes input ->
    attribute, Split num_outputs -> split sizes, Pad axes input -> full pads, attributes that
    hold their default (AveragePool dilations of 1, Cast saturate, Resize antialias...), and
    version bumps that only added types. Anything else raises ConversionError naming the op."""
    import numpy as np
    from onnx import defs, helper, numpy_helper

    graph = model.graph
    current = _default_opset(model)
    inits = {i.name: i for i in graph.initializer}
    types = _value_types(model, True)

    def const(name):
        if name not in inits:
            return None
        return numpy_helper.to_array(inits[name])

    def fail(node, since, why):
        raise ConversionError(f"cannot lower {node.op_type} (op version {since}) to opset {target} "
                              f"for onnx2torch: {why}", hint=f"re-export the model at opset {target}")

    new_nodes = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        try:
            cur = defs.get_schema(node.op_type, current, "")
        except Exception:  # not an ONNX op: leave it (onnx2torch will say if it lacks it)
            new_nodes.append(node)
            continue
        try:
            old = defs.get_schema(node.op_type, target, "")
        except Exception:
            fail(node, cur.since_version, f"the op does not exist before opset {cur.since_version}")
        if cur.since_version == old.since_version:
            new_nodes.append(node)
            continue
        op = node.op_type
        attrs = {a.name: a for a in node.attribute}
        inputs = list(node.input)
        while inputs and not inputs[-1]:
            inputs.pop()
        if op.startswith("Reduce") and len(inputs) <= 2 and "axes" not in attrs:
            axes = const(inputs[1]) if len(inputs) == 2 else np.zeros(0, np.int64)
            if axes is None:
                fail(node, cur.since_version, "its axes are computed at run time")
            noop = attrs["noop_with_empty_axes"].i if "noop_with_empty_axes" in attrs else 0
            if axes.size == 0 and noop:
                new_nodes.append(helper.make_node("Identity", inputs[:1], list(node.output), name=node.name))
                continue
            kwargs = {"keepdims": attrs["keepdims"].i} if "keepdims" in attrs else {}
            if axes.size:
                kwargs["axes"] = [int(a) for a in axes.reshape(-1)]
            new_nodes.append(helper.make_node(op, inputs[:1], list(node.output), name=node.name, **kwargs))
            continue
        if op == "Split" and "num_outputs" in attrs:
            node.attribute.remove(attrs.pop("num_outputs"))
            if len(inputs) < 2:
                axis = attrs["axis"].i if "axis" in attrs else 0
                shape = _static_shape(types.get(inputs[0]))
                count = len(node.output)
                if shape is not None:
                    dim = shape[axis]
                    chunk = -(-dim // count)
                    sizes = [chunk] * (count - 1) + [dim - chunk * (count - 1)]
                    name = f"{node.output[0]}{_SUFFIX}_split"
                    graph.initializer.append(numpy_helper.from_array(np.asarray(sizes, np.int64), name))
                    del node.input[:]
                    node.input.extend([inputs[0], name])
                # unknown dim: Split-13 without sizes splits evenly, as num_outputs does when it divides
        elif op == "Pad" and len(inputs) == 4:
            pads, axes = const(inputs[1]), const(inputs[3])
            shape = types.get(inputs[0])
            rank = len(shape.shape.dim) if shape is not None and shape.HasField("shape") else None
            if pads is None or axes is None or rank is None:
                fail(node, cur.since_version, "its pads/axes are computed at run time")
            full = np.zeros(2 * rank, np.int64)
            for k, axis in enumerate(axes.reshape(-1)):
                full[int(axis) % rank] = pads[k]
                full[int(axis) % rank + rank] = pads[k + len(axes)]
            name = f"{node.output[0]}{_SUFFIX}_pads"
            graph.initializer.append(numpy_helper.from_array(full, name))
            del node.input[:]
            node.input.extend([inputs[0], name] + inputs[2:3])
        elif op in ("GridSample", "DFT", "Col2Im") or len(inputs) > old.max_input:
            fail(node, cur.since_version, f"its form changed after opset {old.since_version}")
        if op == "Pad" and "mode" in attrs and attrs["mode"].s == b"wrap":
            fail(node, cur.since_version, "mode 'wrap' does not exist before opset 19")
        if op == "Resize" and "coordinate_transformation_mode" in attrs \
                and attrs["coordinate_transformation_mode"].s == b"half_pixel_symmetric":
            fail(node, cur.since_version, "half_pixel_symmetric does not exist before opset 19")
        for name, attr in list(attrs.items()):
            if name in old.attributes:
                continue
            value = helper.get_attribute_value(attr)
            if name == "dilations" and all(v == 1 for v in value):
                node.attribute.remove(attr)
            elif name in _DEFAULT_ONLY_ATTRS and value == _DEFAULT_ONLY_ATTRS[name]:
                node.attribute.remove(attr)
            else:
                fail(node, cur.since_version, f"attribute {name}={value!r} does not exist at version "
                                              f"{old.since_version}")
        new_nodes.append(node)
    _replace_nodes(graph, new_nodes)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = target


_REDUCE_OPS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


def _fix_reduce_attributes(model, target: int) -> None:
    """version_converter (onnx 1.23) keeps `noop_with_empty_axes` when it lowers Reduce* ops
    from 18 to 13, which the older schema does not have (onnxruntime rejects the graph).
    The attribute only matters without axes: then noop=1 makes the op an Identity."""
    from onnx import helper

    if target >= 18:
        return
    new_nodes = []
    for node in model.graph.node:
        if node.op_type in _REDUCE_OPS and node.domain in ("", "ai.onnx"):
            noop = [a for a in node.attribute if a.name == "noop_with_empty_axes"]
            if noop:
                has_axes = any(a.name == "axes" and len(a.ints) for a in node.attribute)
                if noop[0].i and not has_axes:
                    node = helper.make_node("Identity", [node.input[0]], list(node.output), name=node.name)
                else:
                    node.attribute.remove(noop[0])
        new_nodes.append(node)
    _replace_nodes(model.graph, new_nodes)


# --- symbolic values of small integer (shape) tensors ----------------------------------
# An entry is an int or an expression: ("dim", node_index, axis) = dim `axis` of the input of
# the Shape node at `node_index` in graph.node, or (op, a, b) with op in add/sub/mul/div/mod.
def _materialize_known_values(model) -> int:
    """Small int tensors computed from static dims (e.g. Gather(Shape(x), 1) where dim 1 of x
    is static) become initializers, so the rest of their subgraph folds to constants."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    if not any(n.op_type == "Shape" for n in graph.node):
        return 0
    types = _value_types(model, True)
    values = _shape_values(model, types)
    outputs = _graph_output_names(graph)
    inits = {i.name for i in graph.initializer}
    count = 0
    keep = []
    for node in graph.node:
        entry = values.get(node.output[0]) if len(node.output) == 1 else None
        if entry is None or node.output[0] in outputs or node.output[0] in inits \
                or not all(isinstance(v, int) for v in entry[1]):
            keep.append(node)
            continue
        tensor_type = types.get(node.output[0])
        dtype = {6: np.int32, 7: np.int64, 9: np.bool_}.get(tensor_type.elem_type if tensor_type else 7)
        if dtype is None:
            keep.append(node)
            continue
        arr = np.asarray(entry[1], dtype=dtype)
        if entry[0] == 0:
            arr = arr.reshape(())
        graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        inits.add(node.output[0])
        count += 1
    if count:
        _replace_nodes(graph, keep)
        _remove_dead(model)
    return count


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
    init_names = {i.name for i in graph.initializer}
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
        unknown = [k for k, v in enumerate(dims) if not isinstance(v, int)]
        if allowzero and not any(v == 0 for v in dims if isinstance(v, int)):
            node.attribute.remove(allowzero_attr[0])
            allowzero = False
        if len(unknown) > 1 or (unknown and -1 in dims) or (allowzero and 0 in dims):
            continue
        target = [v if isinstance(v, int) else -1 for v in dims]
        # resolve ONNX's "0 = copy the input's dim" where that dim is static
        in_type = types.get(node.input[0])
        in_dims = list(in_type.shape.dim) if in_type is not None and in_type.HasField("shape") else []
        for k, v in enumerate(target):
            if v == 0 and k < len(in_dims) and in_dims[k].HasField("dim_value"):
                target[k] = int(in_dims[k].dim_value)
        if not unknown and node.input[1] in init_names and target == dims:
            continue
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
        for name in node.output:
            if name:
                producers[name] = node
    sources = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    seen, count = set(), 0
    for out in graph.output:
        name = out.name
        producer = producers.get(name)
        if name in seen or name in sources:
            # a repeated output, or a graph input / initializer: copy it into a new output name
            # (the torch module returns outputs by position; the ONNX names do not show)
            out.name = f"{name}{_SUFFIX}_copy{count}"
            graph.node.append(helper.make_node("Identity", [name], [out.name], name=f"{out.name}/identity"))
            count += 1
        elif producer is not None and len(producer.output) > 1:
            inner = f"{name}{_SUFFIX}_out"
            for k, o in enumerate(producer.output):
                if o == name:
                    producer.output[k] = inner
            _rename_uses(graph, {name: inner})
            identity = helper.make_node("Identity", [inner], [name], name=f"{name}/identity")
            graph.node.append(identity)  # after its producer: the order stays topological
            producers[name] = identity
            count += 1
        seen.add(name)
    return count


# --------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------
def _name_inputs(module, proto) -> None:
    """onnx2torch calls forward's arguments input_1, input_2...: give them the ONNX input
    names, so that a saved .pt2 of a model that took `x` still takes `x`."""
    initializers = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in initializers]
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    if len(names) != len(placeholders):
        return
    try:
        for node, name in zip(placeholders, names):
            if name.isidentifier() and not keyword.iskeyword(name) and name != node.name:
                node._rename(name)  # the graph's namespace picks a free variant if taken
                node.target = node.name
        module.recompile()
    except Exception as exc:  # cosmetic: the module works with onnx2torch's names
        _LOG.debug("could not rename the inputs: %s", exc)


def convert_onnx_to_torch(model_proto, *, progress: Callable[[str], None] | None = None):
    """ONNX ModelProto -> torch.nn.Module (a torch.fx.GraphModule), in eval mode.

    Call it as `module(*tensors)` with the ONNX graph inputs in order; it returns one tensor
    for one output, a list for several. Raises ConversionError naming the op that failed."""
    say = progress or (lambda message: None)
    torch = lazy.torch()
    onnx2torch = lazy.require("onnx2torch", "convert ONNX to PyTorch")
    from . import _onnx2torch_extra

    _onnx2torch_extra.register()
    say("preparing the ONNX graph for onnx2torch")
    try:
        prepared = prepare_for_onnx2torch(model_proto)
    except ConversionError:
        raise
    except Exception as exc:  # a malformed graph the passes could not read
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConversionError(f"could not prepare the ONNX graph for onnx2torch: "
                              f"{type(exc).__name__}: {detail}") from exc
    _check_converters(prepared)
    say(f"onnx2torch: converting {len(prepared.graph.node)} nodes")
    try:
        module = onnx2torch.convert(prepared)
    except ConversionError:
        raise
    except Exception as exc:
        raise _conversion_error(exc, prepared) from exc
    try:
        rewritten = _export_friendly(module, prepared)
    except Exception as exc:  # the module works as onnx2torch built it; only exporting suffers
        _LOG.warning("could not make the converted module export-friendly: %s", exc)
        module.recompile()
        rewritten = 0
    if rewritten:
        say(f"replaced {rewritten} shape-reading onnx2torch modules by export-friendly ones")
    _name_inputs(module, prepared)
    module.eval()
    with torch.no_grad():
        for param in module.parameters():
            param.requires_grad_(False)
    return module


_SHAPE_INPUTS = {  # ONNX op -> indices of inputs that are shapes / indices read as Python values
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Tile": (1,),
    "Slice": (1, 2, 3, 4), "Split": (1,), "Range": (0, 1, 2), "Pad": (1,),
    "Squeeze": (1,), "Unsqueeze": (1,), "Resize": (3,),
}


def _export_friendly(module, prepared) -> int:
    """Swap onnx2torch modules that read shapes from tensor data (Reshape, Expand, Slice...)
    for modules that compute them from `tensor.shape`, where the ONNX graph tells how.

    Returns the number of modules replaced. torch.export can then keep a dynamic batch, and
    torch.jit.trace records the shape arithmetic instead of freezing it."""
    import numpy as np
    from onnx import numpy_helper
    from onnx2torch.onnx_graph import OnnxGraph

    from . import _onnx2torch_extra as extra

    torch = lazy.torch()
    graph = prepared.graph
    types = _value_types(prepared, True)
    values = _shape_values(prepared, types)
    unique_names = list(OnnxGraph(graph).nodes.keys())
    fx_graph = module.graph
    fx_nodes = {n.target: n for n in fx_graph.nodes if n.op == "call_module"}
    inits = {i.name: i for i in graph.initializer}
    count = 0

    for index, node in enumerate(graph.node):
        spec_inputs = _SHAPE_INPUTS.get(node.op_type)
        if spec_inputs is None or node.domain not in ("", "ai.onnx"):
            continue
        fx_node = fx_nodes.get(unique_names[index])
        if fx_node is None:
            continue
        specs = []
        for k in spec_inputs:
            name = node.input[k] if k < len(node.input) else ""
            specs.append(None if not name else values.get(name, (None, None))[1])
        if any(spec is None for k, spec in zip(spec_inputs, specs)
               if k < len(node.input) and node.input[k]) or specs[0] is None:
            continue
        sources: list = []  # fx nodes whose .shape the expressions read

        def remap(expr):
            if isinstance(expr, int):
                return expr
            if expr[0] == "dim":
                shape_node = fx_nodes.get(unique_names[expr[1]])
                if shape_node is None or not shape_node.args:
                    raise LookupError("shape source not in the torch graph")
                source = shape_node.args[0]
                if source not in sources:
                    sources.append(source)
                return ("dim", sources.index(source), expr[2])
            return (expr[0], remap(expr[1]), remap(expr[2]))

        try:
            specs = [None if spec is None else [remap(e) for e in spec] for spec in specs]
            attrs = {a.name: a for a in node.attribute}
            op = node.op_type
            if op == "Reshape":
                new = extra.NbReshape(specs[0], attrs["allowzero"].i if "allowzero" in attrs else 0)
            elif op == "Expand":
                new = extra.NbExpand(specs[0])
            elif op == "Tile":
                new = extra.NbTile(specs[0])
            elif op == "ConstantOfShape":
                value = numpy_helper.to_array(attrs["value"].t) if "value" in attrs else np.zeros(1, np.float32)
                dtype = torch.from_numpy(np.ascontiguousarray(value)).dtype
                new = extra.NbConstantOfShape(specs[0], value.reshape(-1)[0].item(), dtype)
            elif op == "Slice":
                starts, ends, axes, steps = specs
                axes = axes if axes is not None else list(range(len(starts)))
                steps = steps if steps is not None else [1] * len(starts)
                if not all(isinstance(a, int) for a in axes) \
                        or not all(isinstance(st, int) and st > 0 for st in steps):
                    continue
                new = extra.NbSlice(starts, ends, axes, steps)
            elif op in ("Squeeze", "Unsqueeze"):
                if not all(isinstance(a, int) for a in specs[0]):
                    continue
                new = (extra.NbSqueeze if op == "Squeeze" else extra.NbUnsqueeze)(specs[0])
            elif op == "Split":
                new = extra.NbSplit(specs[0], attrs["axis"].i if "axis" in attrs else 0)
            elif op == "Range":
                out_type = types.get(node.output[0])
                if out_type is None or out_type.elem_type not in (6, 7):
                    continue
                if any(len(spec) != 1 for spec in specs):
                    continue
                new = extra.NbRange(*(spec[0] for spec in specs),
                                    torch.int64 if out_type.elem_type == 7 else torch.int32)
            elif op == "Resize":
                new = _export_friendly_resize(module, fx_node, node, graph, values, types, specs[0])
                if new is None:
                    continue
            elif op == "Pad":
                mode = attrs["mode"].s.decode() if "mode" in attrs else "constant"
                value = 0.0
                if len(node.input) > 2 and node.input[2]:
                    if node.input[2] not in inits:
                        continue
                    value = numpy_helper.to_array(inits[node.input[2]]).reshape(-1)[0].item()
                if mode not in extra.NbPad._MODES or (len(node.input) > 3 and node.input[3]):
                    continue
                new = extra.NbPad(specs[0], mode, value)
            else:
                continue
        except (LookupError, KeyError, ValueError):
            continue
        target = f"{unique_names[index]}{_SUFFIX}"
        module.add_submodule(target, new)
        data_args = () if node.op_type in ("ConstantOfShape", "Range") else (fx_node.args[0],)
        with fx_graph.inserting_before(fx_node):
            replacement = fx_graph.call_module(target, args=data_args + tuple(sources))
        fx_node.replace_all_uses_with(replacement)
        fx_graph.erase_node(fx_node)
        count += 1
    if count:
        fx_graph.eliminate_dead_code()
        fx_graph.lint()
        module.recompile()
        module.delete_all_unused_submodules()
    return count


def _export_friendly_resize(module, fx_node, node, graph, values, types, spec):
    """An NbResize for onnx2torch's Resize module when `sizes` keeps the input's own batch and
    channels (interpolate resizes the other dims only), else None. `spec` is the sizes
    expression remapped to the replacement's sources."""
    from . import _onnx2torch_extra as extra
    from .onnx_shapes import dims_of, keeps_dim

    old = module.get_submodule(fx_node.target)
    raw = values.get(node.input[3], (None, None))[1]
    tensor_type = types.get(node.input[0])
    if type(old).__name__ != "OnnxResize" or raw is None or len(raw) < 3 or tensor_type is None \
            or (len(node.input) > 1 and node.input[1] and not old.ignore_roi):
        return None
    dims = dims_of(tensor_type)
    if not all(keeps_dim(entry, axis, node.input[0], dims, lambda k: graph.node[k].input[0])
               for axis, entry in enumerate(raw[:2])):
        return None
    return extra.NbResize(spec, old.onnx_mode, old.align_corners)


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
class SavedFormat(str):
    """The format save_torch_program wrote ("exported" / "torchscript"), with details."""

    fixed_batch: bool
    notes: list

    def __new__(cls, value: str, *, fixed_batch: bool = False, notes=None):
        obj = super().__new__(cls, value)
        obj.fixed_batch = bool(fixed_batch)
        obj.notes = list(notes or [])
        return obj


def save_torch_program(module, example_inputs: list, path, *, dynamic_batch: bool = True,
                       prefer: str = "exported") -> str:
    """Write `module` so that plain `torch` can load and run it (nothing of onnx2torch needed).

    First `torch.export.export` (dim 0 of every input dynamic when `dynamic_batch`) and
    `torch.export.save`; if export fails, `torch.jit.trace` + `torch.jit.save` (TorchScript).
    `prefer="torchscript"` goes straight to TorchScript. Returns "exported" or "torchscript"
    as a `SavedFormat` (a str): its `.fixed_batch` is True, and a warning is logged, when the
    saved program does not run at a batch size other than the example's; `.notes` says why
    a fallback was taken. The program is checked against `module` at the example batch and,
    with `dynamic_batch`, at the example batch + 1.
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
            return SavedFormat("exported", fixed_batch=fixed, notes=errors)
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
    return SavedFormat("torchscript", fixed_batch=fixed, notes=errors)


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
           "load_torch_program", "SavedFormat", "TARGET_OPSET"]
