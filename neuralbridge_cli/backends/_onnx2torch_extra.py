"""Torch-side helpers for onnx_to_torch: recurrent converters and export-friendly shape modules.

Imported only by onnx_to_torch.convert_onnx_to_torch (it imports torch and onnx2torch).

ONNX LSTM / GRU / RNN (and ReverseSequence) converters for onnx2torch, which has none
(onnx2torch issues #136, #233). Each builds a module implementing the ONNX operator:
- the common case (default activations, no clip / peepholes / input_forget / sequence_lens,
  GRU with linear_before_reset=1) runs torch's fused `torch.lstm` / `torch.gru` /
  `torch.rnn_tanh` / `torch.rnn_relu`, with the gate blocks reordered from ONNX to torch:
  LSTM ONNX [i, o, f, c] -> torch [i, f, g(=c), o]; GRU ONNX [z, r, h] -> torch [r, z, n];
- everything else runs an explicit loop over time steps with the ONNX equations
  (peepholes, clip, input_forget, any ONNX activation, linear_before_reset=0, sequence_lens).
Both layouts (0: [seq, batch, ...], 1: [batch, seq, ...]) and all directions are handled.
"""
from __future__ import annotations

from .. import lazy

torch = lazy.torch()
nn = torch.nn

_DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"], "RNN": ["tanh"]}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_USES_ALPHA = {"affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu"}
_USES_BETA = {"affine", "scaledtanh", "hardsigmoid"}
_DEFAULT_ALPHA = {"leakyrelu": 0.01, "thresholdedrelu": 1.0, "hardsigmoid": 0.2, "elu": 1.0,
                  "affine": 1.0, "scaledtanh": 1.0}
_DEFAULT_BETA = {"hardsigmoid": 0.5, "affine": 0.0, "scaledtanh": 1.0}


def _activation(name: str, alpha, beta):
    """An ONNX RNN activation function name -> callable on tensors."""
    name = name.lower()
    alpha = _DEFAULT_ALPHA.get(name) if alpha is None else alpha
    beta = _DEFAULT_BETA.get(name) if beta is None else beta
    table = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": torch.relu,
        "affine": lambda x: alpha * x + beta,
        "leakyrelu": lambda x: torch.nn.functional.leaky_relu(x, alpha),
        "thresholdedrelu": lambda x: torch.where(x > alpha, x, torch.zeros_like(x)),
        "scaledtanh": lambda x: alpha * torch.tanh(beta * x),
        "hardsigmoid": lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0),
        "elu": lambda x: torch.nn.functional.elu(x, alpha),
        "softsign": torch.nn.functional.softsign,
        "softplus": torch.nn.functional.softplus,
    }
    if name not in table:
        raise NotImplementedError(f"RNN activation {name!r} is not supported")
    return table[name]


def _reverse_padded(x, lengths):
    """Reverse each sequence of x [seq, batch, ...] within its own length (padding stays put)."""
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # [seq, 1]
    lengths = lengths.to(steps.dtype).unsqueeze(0)  # [1, batch]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [seq, batch]
    index = index.reshape(tuple(index.shape) + (1,) * (x.dim() - 2)).expand(x.shape)
    return torch.gather(x, 0, index)


class OnnxReverseSequence(nn.Module):
    """ONNX ReverseSequence: reverse the first sequence_lens[b] steps of each batch entry."""

    def __init__(self, batch_axis: int = 1, time_axis: int = 0):
        super().__init__()
        self.batch_axis, self.time_axis = int(batch_axis), int(time_axis)

    def forward(self, x, sequence_lens):
        if (self.time_axis, self.batch_axis) == (0, 1):
            return _reverse_padded(x, sequence_lens)
        moved = x.movedim((self.time_axis, self.batch_axis), (0, 1))
        return _reverse_padded(moved, sequence_lens).movedim((0, 1), (self.time_axis, self.batch_axis))


class OnnxRecurrent(nn.Module):
    """ONNX LSTM / GRU / RNN (any opset version from 7, layout 0 and 1, all directions)."""

    def __init__(self, kind: str, hidden_size: int, direction: str = "forward", layout: int = 0,
                 activations=None, alphas=None, betas=None, clip=None, input_forget: int = 0,
                 linear_before_reset: int = 0, n_outputs: int = 1):
        super().__init__()
        self.kind = kind
        self.hidden_size = int(hidden_size)
        self.direction = direction
        self.num_directions = 2 if direction == "bidirectional" else 1
        self.layout = int(layout)
        self.clip = None if clip is None else float(clip)
        self.input_forget = int(input_forget)
        self.linear_before_reset = int(linear_before_reset)
        self.n_outputs = int(n_outputs)
        per_dir = len(_DEFAULT_ACTIVATIONS[kind])
        names = [a.lower() for a in (activations or _DEFAULT_ACTIVATIONS[kind] * self.num_directions)]
        if len(names) == per_dir and self.num_directions == 2:
            names = names * 2
        if len(names) != per_dir * self.num_directions:
            raise NotImplementedError(f"{kind}: expected {per_dir * self.num_directions} activations, got {names}")
        alphas, betas = list(alphas or []), list(betas or [])
        funcs = []
        for name in names:
            alpha = alphas.pop(0) if name in _USES_ALPHA and alphas else None
            beta = betas.pop(0) if name in _USES_BETA and betas else None
            funcs.append(_activation(name, alpha, beta))
        self._acts = [funcs[d * per_dir:(d + 1) * per_dir] for d in range(self.num_directions)]
        defaults = _DEFAULT_ACTIVATIONS[kind] * self.num_directions
        if kind == "RNN":
            self._fused = self.clip is None and len(set(names)) == 1 and names[0] in ("tanh", "relu")
            self._rnn_relu = names[0] == "relu"
        elif kind == "GRU":
            self._fused = self.clip is None and names == defaults and self.linear_before_reset != 0
        else:
            self._fused = self.clip is None and names == defaults and self.input_forget == 0

    # -- shared plumbing -----------------------------------------------------------
    def _run(self, X, W, R, B, sequence_lens, initial_h, initial_c=None, P=None):
        if self.layout == 1:  # [batch, seq, in] -> [seq, batch, in]
            X = X.transpose(0, 1)
            initial_h = None if initial_h is None else initial_h.transpose(0, 1)
            initial_c = None if initial_c is None else initial_c.transpose(0, 1)
        D, H = self.num_directions, self.hidden_size
        batch = X.shape[1]
        # expand() checks the states against the input's batch at run time too (a traced or
        # exported program run at another batch size): torch.lstm itself does not check, and
        # reads past the end of a too-small state
        initial_h = X.new_zeros((D, batch, H)) if initial_h is None \
            else initial_h.expand(D, batch, H).contiguous()
        if self.kind == "LSTM":
            initial_c = X.new_zeros((D, batch, H)) if initial_c is None \
                else initial_c.expand(D, batch, H).contiguous()
        if self._fused and sequence_lens is None and P is None:
            Y, Y_h, Y_c = self._fused_run(X, W, R, B, initial_h, initial_c)
        else:
            Y, Y_h, Y_c = self._loop_run(X, W, R, B, sequence_lens, initial_h, initial_c, P)
        # Y: [seq, D, batch, H]; Y_h, Y_c: [D, batch, H]
        if self.layout == 1:
            Y = Y.permute(2, 0, 1, 3)
            Y_h = Y_h.transpose(0, 1)
            Y_c = None if Y_c is None else Y_c.transpose(0, 1)
        outs = (Y, Y_h, Y_c)[:self.n_outputs]
        return outs[0] if self.n_outputs == 1 else outs

    def _torch_order(self, block):
        """Gate blocks along dim 0 from ONNX order to torch order."""
        if self.kind == "LSTM":
            i, o, f, c = block.chunk(4, 0)
            return torch.cat([i, f, c, o], 0)
        if self.kind == "GRU":
            z, r, h = block.chunk(3, 0)
            return torch.cat([r, z, h], 0)
        return block

    def _fused_run(self, X, W, R, B, h0, c0):
        D, G, H = self.num_directions, _GATES[self.kind], self.hidden_size
        reverse = self.direction == "reverse"
        if reverse:
            X = X.flip(0)
        params = []
        for d in range(D):
            params += [self._torch_order(W[d]), self._torch_order(R[d])]
            if B is not None:
                params += [self._torch_order(B[d, :G * H]), self._torch_order(B[d, G * H:])]
        has_bias = B is not None
        Y_c = None
        if self.kind == "LSTM":
            Y, Y_h, Y_c = torch.lstm(X, (h0, c0), params, has_bias, 1, 0.0, False, D == 2, False)
        elif self.kind == "GRU":
            Y, Y_h = torch.gru(X, h0, params, has_bias, 1, 0.0, False, D == 2, False)
        else:
            rnn = torch.rnn_relu if self._rnn_relu else torch.rnn_tanh
            Y, Y_h = rnn(X, h0, params, has_bias, 1, 0.0, False, D == 2, False)
        if reverse:
            Y = Y.flip(0)
        Y = Y.unflatten(2, (D, H)).transpose(1, 2)  # [seq, batch, D*H] -> [seq, D, batch, H]
        return Y, Y_h, Y_c

    def _loop_run(self, X, W, R, B, sequence_lens, h0, c0, P):
        D, G, H = self.num_directions, _GATES[self.kind], self.hidden_size
        steps = X.shape[0]
        ys, hs, cs = [], [], []
        for d in range(D):
            backward = self.direction == "reverse" or d == 1
            x = _reverse_padded(X, sequence_lens) if backward else X
            Wd, Rd = W[d], R[d]
            Wb = B[d, :G * H] if B is not None else None
            Rb = B[d, G * H:] if B is not None else None
            x_proj = torch.matmul(x, Wd.t())  # [seq, batch, G*H]
            if Wb is not None:
                x_proj = x_proj + Wb
            h = h0[d]
            c = c0[d] if c0 is not None else None
            acts = self._acts[d]
            outs = []
            for t in range(steps):
                if self.kind == "LSTM":
                    h_new, c_new = self._lstm_cell(x_proj[t], h, c, Rd, Rb, P[d] if P is not None else None, acts)
                elif self.kind == "GRU":
                    h_new, c_new = self._gru_cell(x_proj[t], h, Rd, Rb, acts), None
                else:
                    gates = x_proj[t] + torch.matmul(h, Rd.t())
                    if Rb is not None:
                        gates = gates + Rb
                    h_new, c_new = acts[0](self._clip(gates)), None
                if sequence_lens is not None:
                    valid = (t < sequence_lens).unsqueeze(-1)  # [batch, 1]
                    y = torch.where(valid, h_new, torch.zeros_like(h_new))
                    h = torch.where(valid, h_new, h)
                    if c_new is not None:
                        c = torch.where(valid, c_new, c)
                else:
                    y, h, c = h_new, h_new, c_new
                outs.append(y)
            y = torch.stack(outs, 0)  # [seq, batch, H]
            if backward:
                y = _reverse_padded(y, sequence_lens)
            ys.append(y)
            hs.append(h)
            cs.append(c)
        Y = torch.stack(ys, 1)
        Y_h = torch.stack(hs, 0)
        Y_c = torch.stack(cs, 0) if self.kind == "LSTM" else None
        return Y, Y_h, Y_c

    def _clip(self, x):
        return x if self.clip is None else torch.clamp(x, -self.clip, self.clip)

    def _lstm_cell(self, xw, h, c, Rd, Rb, Pd, acts):
        f_act, g_act, h_act = acts
        gates = xw + torch.matmul(h, Rd.t())
        if Rb is not None:
            gates = gates + Rb
        gi, go, gf, gc = gates.chunk(4, -1)
        if Pd is not None:
            pi, po, pf = Pd.chunk(3, -1)
            gi = gi + pi * c
            gf = gf + pf * c
        i = f_act(self._clip(gi))
        f = 1.0 - i if self.input_forget else f_act(self._clip(gf))
        cand = g_act(self._clip(gc))
        c_new = f * c + i * cand
        if Pd is not None:
            go = go + po * c_new
        o = f_act(self._clip(go))
        return o * h_act(c_new), c_new

    def _gru_cell(self, xw, h, Rd, Rb, acts):
        f_act, g_act = acts
        H = self.hidden_size
        xz, xr, xh = xw.chunk(3, -1)
        Rz, Rr, Rh = Rd.chunk(3, 0)
        if Rb is not None:
            bz, br, bh = Rb.chunk(3, -1)
        else:
            bz = br = bh = h.new_zeros((H,))
        z = f_act(self._clip(xz + torch.matmul(h, Rz.t()) + bz))
        r = f_act(self._clip(xr + torch.matmul(h, Rr.t()) + br))
        if self.linear_before_reset:
            cand = xh + r * (torch.matmul(h, Rh.t()) + bh)
        else:
            cand = xh + torch.matmul(r * h, Rh.t()) + bh
        cand = g_act(self._clip(cand))
        return (1.0 - z) * cand + z * h


class OnnxLSTM(OnnxRecurrent):
    def forward(self, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None):
        return self._run(X, W, R, B, sequence_lens, initial_h, initial_c, P)


class OnnxGRU(OnnxRecurrent):
    def forward(self, X, W, R, B=None, sequence_lens=None, initial_h=None):
        return self._run(X, W, R, B, sequence_lens, initial_h)


class OnnxRNN(OnnxRecurrent):
    def forward(self, X, W, R, B=None, sequence_lens=None, initial_h=None):
        return self._run(X, W, R, B, sequence_lens, initial_h)


_CLASSES = {"LSTM": OnnxLSTM, "GRU": OnnxGRU, "RNN": OnnxRNN}
_VERSIONS = {"LSTM": (1, 7, 14), "GRU": (1, 3, 7, 14), "RNN": (1, 7, 14)}


def _make_converter(kind: str):
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    def convert(node, graph):  # pylint: disable=unused-argument
        attrs = node.attributes
        hidden = attrs.get("hidden_size")
        if hidden is None:  # optional in the spec: read it from R [D, G*H, H]
            r_name = node.input_values[2]
            if r_name not in graph.initializers:
                raise NotImplementedError(f"{kind} without hidden_size and with a computed R")
            hidden = int(graph.initializers[r_name].to_torch().shape[-1])
        module = _CLASSES[kind](
            kind, hidden,
            direction=attrs.get("direction", "forward"),
            layout=attrs.get("layout", 0),
            activations=attrs.get("activations"),
            alphas=attrs.get("activation_alpha"),
            betas=attrs.get("activation_beta"),
            clip=attrs.get("clip"),
            input_forget=attrs.get("input_forget", 0),
            linear_before_reset=attrs.get("linear_before_reset", 0),
            n_outputs=len(node.output_values),
        )
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))

    return convert


_REGISTERED = False


def register() -> None:
    """Add the LSTM/GRU/RNN converters to onnx2torch's registry (once; never replaces one)."""
    global _REGISTERED
    if _REGISTERED:
        return
    lazy.require("onnx2torch", "convert ONNX to PyTorch")
    from onnx2torch.node_converters.registry import add_converter, get_converter

    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    def reverse_sequence(node, graph):  # pylint: disable=unused-argument
        module = OnnxReverseSequence(node.attributes.get("batch_axis", 1), node.attributes.get("time_axis", 0))
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))

    try:
        get_converter(operation_type="ReverseSequence", version=10)
    except NotImplementedError:
        add_converter(operation_type="ReverseSequence", version=10)(reverse_sequence)
    for kind, versions in _VERSIONS.items():
        converter = _make_converter(kind)
        for version in versions:
            try:
                existing = get_converter(operation_type=kind, version=version)
            except NotImplementedError:
                existing = None
            if existing is None:
                add_converter(operation_type=kind, version=version)(converter)
    _REGISTERED = True


# --------------------------------------------------------------------------------------
# export-friendly replacements for onnx2torch modules that read shapes from tensors
# --------------------------------------------------------------------------------------
# onnx2torch's Reshape / Expand / ConstantOfShape / Slice / Tile / Split / Pad / Range
# modules turn their shape inputs into Python values at run time (`torch.any(shape == 0)`,
# `torch.Size(shape)`, `.tolist()`), which torch.export cannot trace and torch.jit.trace
# freezes. onnx_to_torch works out those shape inputs symbolically from the ONNX graph
# (constants, and dims of tensors for dynamic sizes) and swaps in these modules, which
# compute the shape from `tensor.shape` and take the tensors whose dims they need as
# extra arguments.
#
# A shape expression is an int, ("dim", k, axis) = sources[k].shape[axis], or
# (op, a, b) with op in add / sub / mul / div / mod / max / min.

def _eval(expr, sources):
    if isinstance(expr, int):
        return expr
    kind = expr[0]
    if kind == "dim":
        return sources[expr[1]].shape[expr[2]]
    a, b = _eval(expr[1], sources), _eval(expr[2], sources)
    if kind == "add":
        return a + b
    if kind == "sub":
        return a - b
    if kind == "mul":
        return a * b
    if kind == "div":
        return a // b
    if kind == "mod":
        return a % b
    if kind == "max":
        return torch.sym_max(a, b)
    if kind == "min":
        return torch.sym_min(a, b)
    raise ValueError(f"unknown shape expression {expr!r}")


class NbReshape(nn.Module):
    """ONNX Reshape with a target known up to dims of other tensors."""

    def __init__(self, shape, allowzero: int = 0):
        super().__init__()
        self.shape = list(shape)
        self.allowzero = int(allowzero)

    def forward(self, x, *sources):
        shape = []
        for k, expr in enumerate(self.shape):
            if not self.allowzero and isinstance(expr, int) and expr == 0:
                shape.append(x.shape[k])  # ONNX: 0 copies the input's dim
            else:
                shape.append(_eval(expr, sources))
        return torch.reshape(x, shape)


class NbExpand(nn.Module):
    """ONNX Expand (two-way broadcast of x against the target shape)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = list(shape)

    def forward(self, x, *sources):
        shape = [_eval(e, sources) for e in self.shape]
        return x.expand(torch.broadcast_shapes(x.shape, shape))


class NbConstantOfShape(nn.Module):
    def __init__(self, shape, value, dtype):
        super().__init__()
        self.shape = list(shape)
        self.value = value
        self.dtype = dtype

    def forward(self, *sources):
        shape = [_eval(e, sources) for e in self.shape]
        device = sources[0].device if sources else None
        return torch.full(shape, self.value, dtype=self.dtype, device=device)


class NbTile(nn.Module):
    def __init__(self, repeats):
        super().__init__()
        self.repeats = list(repeats)

    def forward(self, x, *sources):
        return x.repeat([_eval(e, sources) for e in self.repeats])


# Slice bounds at or past INT32_MAX mean "to the end" (tf2onnx writes 2**31 - 1, torch's
# exporter INT64_MAX); comparing such a bound with a symbolic batch would cap the batch range
# and make torch.export refuse the dynamic dim ("Constraints violated").
_BIG = (1 << 31) - 1


class NbSlice(nn.Module):
    """ONNX Slice with positive steps (starts/ends may depend on other tensors' dims)."""

    def __init__(self, starts, ends, axes, steps):
        super().__init__()
        self.starts, self.ends, self.axes, self.steps = list(starts), list(ends), list(axes), list(steps)

    def forward(self, x, *sources):
        index = [slice(None)] * x.dim()
        for start, end, axis, step in zip(self.starts, self.ends, self.axes, self.steps):
            start = _eval(start, sources)
            end = _eval(end, sources)
            if isinstance(start, int) and start <= -_BIG:
                start = None
            if isinstance(end, int) and end >= _BIG:
                end = None
            if isinstance(start, int) and start == 0:
                start = None
            index[axis % x.dim()] = slice(start, end, None if step == 1 else step)
        return x[tuple(index)]


class NbSplit(nn.Module):
    def __init__(self, sizes, axis: int):
        super().__init__()
        self.sizes = list(sizes)
        self.axis = int(axis)

    def forward(self, x, *sources):
        return torch.split(x, [_eval(e, sources) for e in self.sizes], dim=self.axis)


class NbRange(nn.Module):
    def __init__(self, start, limit, delta, dtype):
        super().__init__()
        self.start, self.limit, self.delta, self.dtype = start, limit, delta, dtype

    def forward(self, *sources):
        start, limit, delta = (_eval(e, sources) for e in (self.start, self.limit, self.delta))
        device = sources[0].device if sources else None
        return torch.arange(start, limit, delta, dtype=self.dtype, device=device)


class NbPad(nn.Module):
    """ONNX Pad with known pads: [x1_begin, x2_begin, ..., x1_end, x2_end, ...]."""

    _MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}

    def __init__(self, pads, mode: str, value: float):
        super().__init__()
        half = len(pads) // 2
        begins, ends = list(pads[:half]), list(pads[half:])
        torch_pads = []
        for b, e in zip(reversed(begins), reversed(ends)):  # torch: last dim first
            torch_pads += [b, e]
        while len(torch_pads) > 2 and torch_pads[-1] == 0 and torch_pads[-2] == 0:
            torch_pads = torch_pads[:-2]  # torch's non-constant modes pad only trailing dims
        self.pads = torch_pads
        self.mode = self._MODES[mode]
        self.value = value

    def forward(self, x, *sources):
        pads = [_eval(p, sources) for p in self.pads]
        if self.mode == "constant":
            return torch.nn.functional.pad(x, pads, mode="constant", value=self.value)
        return torch.nn.functional.pad(x, pads, mode=self.mode)


class NbSqueeze(nn.Module):
    def __init__(self, axes):
        super().__init__()
        self.axes = list(axes)

    def forward(self, x, *sources):
        dims = sorted((a % x.dim() for a in self.axes), reverse=True)
        for dim in dims:
            x = torch.squeeze(x, dim)
        return x


class NbUnsqueeze(nn.Module):
    def __init__(self, axes):
        super().__init__()
        self.axes = list(axes)

    def forward(self, x, *sources):
        rank = x.dim() + len(self.axes)
        for dim in sorted(a % rank for a in self.axes):
            x = torch.unsqueeze(x, dim)
        return x


class NbResize(nn.Module):
    """ONNX Resize to `sizes` known up to the input's own batch and channel dims (torch's
    `F.interpolate(size=...)` export): onnx2torch reads the sizes tensor as data, which
    torch.export cannot trace with a dynamic batch."""

    _MODES = {("nearest", 1): "nearest", ("nearest", 2): "nearest", ("nearest", 3): "nearest",
              ("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear",
              ("cubic", 2): "bicubic"}

    def __init__(self, sizes, onnx_mode: str, align_corners):
        super().__init__()
        self.sizes = list(sizes)
        self.onnx_mode = onnx_mode
        self.align_corners = align_corners

    def forward(self, x, *sources):
        mode = self._MODES[(self.onnx_mode, x.dim() - 2)]
        size = [_eval(e, sources) for e in self.sizes[2:]]
        return torch.nn.functional.interpolate(x, size=size, mode=mode, align_corners=self.align_corners)
