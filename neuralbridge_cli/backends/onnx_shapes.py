"""Shape facts of an ONNX graph, without running it, and dead-node removal (shared by the
torch and TF backends).

`value_types` types every value onnx shape inference can (weights left out, which is what
makes inference fast on large models); `shape_values` partially evaluates the small int
tensors of shape arithmetic (Shape -> Gather -> Concat ...) into entries that are ints or
symbolic expressions over the dims of other tensors. A shape expression is an int,
("dim", node_index, axis) = dim `axis` of the tensor read by the Shape node `node_index`, or
(op, a, b) with op in add / sub / mul / div / mod / max / min.
"""
from __future__ import annotations

import logging

from .. import lazy

_LOG = logging.getLogger(__name__)


def numel(tensor) -> int:
    n = 1
    for d in tensor.dims:
        n *= int(d)
    return n


def light_copy(model, max_elements: int = 4096):
    """A copy of `model` for shape inference: initializers bigger than `max_elements` become
    typed graph inputs (their values are never needed to infer shapes, and copying and
    serialising hundreds of MB of weights is what makes shape inference slow)."""
    from onnx import helper

    onnx = lazy.onnx()
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    inputs = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if numel(init) <= max_elements or init.data_location == 1:
            graph.initializer.append(init)
        elif init.name not in inputs:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def value_types(model, use_shapes: bool):
    """name -> TypeProto.tensor_type for every value onnx shape inference can type."""
    onnx = lazy.onnx()
    graph = model.graph
    if use_shapes:
        try:
            inferred = onnx.shape_inference.infer_shapes(light_copy(model), strict_mode=False,
                                                         data_prop=True)
            graph = inferred.graph
        except Exception as exc:  # shape inference is an aid, not a requirement
            _LOG.debug("shape inference failed: %s", exc)
    types = {}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type
    return types


def static_shape(tensor_type):
    """Tuple of ints, or None when any dim is unknown."""
    if tensor_type is None or not tensor_type.HasField("shape"):
        return None
    dims = []
    for dim in tensor_type.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        dims.append(int(dim.dim_value))
    return tuple(dims)


_ARITH = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Mod": "mod",
          "Max": "max", "Min": "min"}


def _arith(op: str, a, b):
    if isinstance(a, int) and isinstance(b, int):
        if op == "add":
            return a + b
        if op == "sub":
            return a - b
        if op == "mul":
            return a * b
        if op == "div":
            return int(a / b) if b else None  # ONNX integer Div truncates
        if op == "max":
            return max(a, b)
        if op == "min":
            return min(a, b)
        return a % b if b else None
    if op in ("max", "min") and a == b:
        return a
    if op == "mul" and (a == 1 or b == 1):
        return b if a == 1 else a
    if op in ("add", "sub") and b == 0:
        return a
    if op == "div" and b == 1:
        return a
    return (op, a, b)


def _reduces_axis_zero(node, ints) -> bool:
    """A reduction of a rank-1 value over its only axis (axes absent, [0] or [-1])."""
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ints(node.input[1])
        if axes is None:
            return False
    noop = next((a.i for a in node.attribute if a.name == "noop_with_empty_axes"), 0)
    return axes in ([0], [-1]) or (not axes and not noop)


def _broadcast_entries(a, b):
    if len(a) == 1 and len(b) > 1:
        a = a * len(b)
    if len(b) == 1 and len(a) > 1:
        b = b * len(a)
    return (a, b) if len(a) == len(b) else (None, None)


def shape_values(model, types, max_len: int = 64):
    """Partial evaluation of small int tensors: value name -> (rank, [entry, ...]).

    Follows Shape, Gather (axis 0, constant indices), Slice (axis 0, constant, step 1), Equal, Where,
    Concat, Unsqueeze/Squeeze (rank 0 <-> 1), Reshape to rank <= 1, Cast to an int type,
    Identity, elementwise Add/Sub/Mul/Div/Mod/Max/Min (two inputs) and ReduceProd over a rank-1
    value (tf2onnx's einsum batch folding); other values are unknown (absent)."""
    from onnx import numpy_helper

    graph = model.graph
    values = {}
    known_dims = {}  # value name -> [entry | None] per dim, beyond what shape inference knows
    for init in graph.initializer:
        if init.data_type in (6, 7, 9) and len(init.dims) <= 1 and (not init.dims or init.dims[0] <= max_len):
            arr = numpy_helper.to_array(init)
            values[init.name] = (arr.ndim, [int(v) for v in arr.reshape(-1)])

    def ints(name):
        entry = values.get(name)
        if entry is None or not all(isinstance(v, int) for v in entry[1]):
            return None
        return entry[1]

    for index, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or not node.output:
            continue
        op = node.op_type
        ins = list(node.input)
        attrs = {a.name: a for a in node.attribute}
        result = None
        try:
            if op == "Shape":
                tensor_type = types.get(ins[0])
                if tensor_type is not None and tensor_type.HasField("shape"):
                    known = known_dims.get(ins[0], [])
                    dims = []
                    for k, d in enumerate(tensor_type.shape.dim):
                        if d.HasField("dim_value"):
                            dims.append(int(d.dim_value))
                        elif k < len(known) and known[k] is not None:
                            dims.append(known[k])
                        else:
                            dims.append(("dim", index, k))
                    rank = len(dims)
                    start = attrs["start"].i if "start" in attrs else 0
                    end = attrs["end"].i if "end" in attrs else rank
                    result = (1, dims[slice(start, end)])
            elif op in ("Cast", "Identity") and ins[0] in values:
                if op == "Identity" or attrs["to"].i in (6, 7):
                    result = values[ins[0]]
            elif op == "Gather" and ins[0] in values and ints(ins[1]) is not None \
                    and (attrs["axis"].i if "axis" in attrs else 0) == 0 and values[ins[0]][0] == 1:
                src = values[ins[0]][1]
                result = (values[ins[1]][0], [src[i] for i in ints(ins[1])])
            elif op == "Unsqueeze" and ins[0] in values and values[ins[0]][0] == 0:
                result = (1, values[ins[0]][1])
            elif op == "Squeeze" and ins[0] in values and len(values[ins[0]][1]) == 1:
                result = (0, values[ins[0]][1])
            elif op == "Reshape" and ins[0] in values and ints(ins[1]) is not None \
                    and len(ints(ins[1])) <= 1:
                result = (len(ints(ins[1])), values[ins[0]][1])
            elif op == "Reshape" and ins[1] in values:
                # the output's dims are the target's entries (-1 and 0 stay unknown)
                known_dims[node.output[0]] = [
                    None if isinstance(v, int) and v <= 0 else v for v in values[ins[1]][1]]
            elif op == "Concat" and all(i in values for i in ins):
                result = (1, [v for i in ins for v in values[i][1]])
            elif op == "Slice" and ins[0] in values and values[ins[0]][0] == 1:
                starts, ends = ints(ins[1]), ints(ins[2])
                axes = ints(ins[3]) if len(ins) > 3 and ins[3] else [0]
                steps = ints(ins[4]) if len(ins) > 4 and ins[4] else [1]
                if starts is not None and ends is not None and axes in ([0], [-1]) and steps == [1]:
                    src = values[ins[0]][1]
                    result = (1, src[slice(starts[0], ends[0])])
            elif op == "Equal" and ins[0] in values and ins[1] in values:
                (ra, a), (rb, b) = values[ins[0]], values[ins[1]]
                a, b = _broadcast_entries(a, b)

                def equal(x, y):
                    if isinstance(x, int) and isinstance(y, int):
                        return int(x == y)
                    if isinstance(x, int) and x < 0 or isinstance(y, int) and y < 0:
                        return 0  # a dim is never negative
                    return None

                entries = [equal(x, y) for x, y in zip(a, b)] if a is not None else [None]
                if all(e is not None for e in entries):
                    result = (max(ra, rb), entries)
            elif op == "Where" and all(i in values for i in ins) and ints(ins[0]) is not None:
                cond, a, b = ints(ins[0]), values[ins[1]][1], values[ins[2]][1]
                size = max(len(cond), len(a), len(b))
                cond, a, b = (v * size if len(v) == 1 else v for v in (cond, a, b))
                if len(cond) == len(a) == len(b):
                    result = (max(values[i][0] for i in ins), [x if c else y for c, x, y in zip(cond, a, b)])
            elif op == "ReduceProd" and ins[0] in values and values[ins[0]][0] == 1 \
                    and _reduces_axis_zero(node, ints):
                product = 1
                for entry in values[ins[0]][1]:
                    product = _arith("mul", product, entry)
                keep = attrs["keepdims"].i if "keepdims" in attrs else 1
                result = (1 if keep else 0, [product])
            elif op in _ARITH and len(ins) == 2 and ins[0] in values and ins[1] in values:
                (ra, a), (rb, b) = values[ins[0]], values[ins[1]]
                if len(a) == 1 and len(b) > 1:
                    a = a * len(b)
                if len(b) == 1 and len(a) > 1:
                    b = b * len(a)
                if len(a) == len(b):
                    entries = [_arith(_ARITH[op], x, y) for x, y in zip(a, b)]
                    if all(e is not None for e in entries):
                        result = (max(ra, rb), entries)
        except (IndexError, KeyError, ValueError, TypeError):
            result = None
        if result is not None and len(result[1]) <= max_len:
            values[node.output[0]] = result
    return values


def dims_of(tensor_type) -> list:
    """The dims of a typed value: ints, None where dynamic."""
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]


def keeps_dim(entry, axis: int, source: str, dims: list, shape_input) -> bool:
    """True when the shape-value `entry` is dim `axis` of `source` itself: read by a Shape
    node of `source` (`shape_input(node_index)` names the tensor a Shape node reads), or
    equal to that dim's static size."""
    if isinstance(entry, tuple):
        return entry[0] == "dim" and entry[2] == axis and shape_input(entry[1]) == source
    return isinstance(entry, int) and axis < len(dims) and dims[axis] == entry


def remove_dead(model) -> None:
    """Drop nodes whose outputs nobody reads, then unused initializers."""
    graph = model.graph
    needed = {o.name for o in graph.output}

    def read_by(node, acc):  # a node's inputs, and those of its subgraphs (outer-scope reads)
        acc.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for inner in sub.node:
                    read_by(inner, acc)

    live = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output if o):
            live.append(node)
            read_by(node, needed)
    live.reverse()
    if len(live) != len(graph.node):
        del graph.node[:]
        graph.node.extend(live)
    if any(init.name not in needed for init in graph.initializer):
        used = [init for init in graph.initializer if init.name in needed]
        del graph.initializer[:]
        graph.initializer.extend(used)
