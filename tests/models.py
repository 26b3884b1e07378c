"""Shared builders of small, seeded test models (torch imported lazily, inside each builder).

Random-init torchvision models output ~1e-15 in eval mode, so every builder here
re-initialises weights with `seeded_init`, which keeps activations O(1) and makes
relative-error checks meaningful (shared/ENVIRONMENT.md, trap 7).
"""
from __future__ import annotations

import math
from pathlib import Path


def seeded_init(module, seed: int = 0):
    """Re-initialise `module` in place with a seeded init giving O(1) outputs; returns it in eval mode.

    Conv/Linear weights ~ N(0, 1/fan_in), biases ~ N(0, 0.01^2); norm layers get affine weights
    near 1, biases near 0, running mean near 0 and running var near 1; embeddings ~ N(0, 1);
    recurrent layers ~ U(-1/sqrt(h), 1/sqrt(h)); convnext layer scales 0.5; any other parameter
    (class tokens, position embeddings) ~ N(0, 0.1^2).
    """
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)

    def normal_(t, std, mean=0.0):
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * std + mean)

    done = set()
    for sub in module.modules():
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear,
                            nn.ConvTranspose1d, nn.ConvTranspose2d)):
            w = sub.weight
            fan_in = w[0].numel() if not isinstance(sub, (nn.ConvTranspose1d, nn.ConvTranspose2d)) \
                else w.shape[0] * w[0, 0].numel()
            normal_(w, 1.0 / math.sqrt(max(fan_in, 1)))
            if sub.bias is not None:
                normal_(sub.bias, 0.01)
            done.update({id(w), id(sub.bias)})
        elif isinstance(sub, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            if sub.affine:
                normal_(sub.weight, 0.05, 1.0)
                normal_(sub.bias, 0.05)
                done.update({id(sub.weight), id(sub.bias)})
            if sub.track_running_stats:
                normal_(sub.running_mean, 0.05)
                with torch.no_grad():
                    sub.running_var.copy_(1.0 + 0.1 * torch.rand(sub.running_var.shape, generator=gen))
        elif isinstance(sub, (nn.LayerNorm, nn.GroupNorm)):
            if getattr(sub, "weight", None) is not None:
                normal_(sub.weight, 0.05, 1.0)
                done.add(id(sub.weight))
            if getattr(sub, "bias", None) is not None:
                normal_(sub.bias, 0.05)
                done.add(id(sub.bias))
        elif isinstance(sub, nn.Embedding):
            normal_(sub.weight, 1.0)
            done.add(id(sub.weight))
        elif isinstance(sub, (nn.LSTM, nn.GRU, nn.RNN)):
            bound = 1.0 / math.sqrt(sub.hidden_size)
            for p in sub.parameters():
                with torch.no_grad():
                    p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
                done.add(id(p))
        elif isinstance(sub, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                p = getattr(sub, name, None)
                if p is not None:
                    normal_(p, 1.0 / math.sqrt(p.shape[1]))
                    done.add(id(p))
            if sub.in_proj_bias is not None:
                normal_(sub.in_proj_bias, 0.01)
                done.add(id(sub.in_proj_bias))
    for name, p in module.named_parameters():
        if id(p) in done:
            continue
        if "layer_scale" in name:  # convnext: 1e-6 by default would hide the residual branch
            with torch.no_grad():
                p.fill_(0.5)
        else:
            normal_(p, 0.1)
    module.eval()
    return module


def keras_seeded_init(model, seed: int = 0, sample=None):
    """The Keras counterpart of `seeded_init`: keras.applications with weights=None output
    ~1e-11 (BatchNorm at identity statistics shrinks the signal layer by layer), so kernels
    get N(0, 2/fan_in), biases N(0, 0.01^2), BatchNorm gamma near 1, beta and moving mean
    near 0, moving variance near 1; then the last layer's kernel is scaled so that the
    outputs on `sample` (seeded uniform inputs by default) have unit standard deviation."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    last = None
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([_bn_value(layer, i, w, rng) for i, w in enumerate(weights)])
            continue
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense,
                              keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
            new = []
            for w in weights:
                if w.ndim == 1:
                    new.append(0.01 * rng.standard_normal(w.shape))
                else:
                    fan_in = int(np.prod(w.shape[:-1])) if not isinstance(
                        layer, keras.layers.DepthwiseConv2D) else int(np.prod(w.shape[:2]))
                    new.append(rng.standard_normal(w.shape) * np.sqrt(2.0 / max(fan_in, 1)))
            layer.set_weights([w.astype(np.float32) for w in new])
            last = layer
    if last is not None:
        if sample is None:
            shape = [2 if d is None else d for d in model.inputs[0].shape]
            sample = np.random.default_rng(seed + 1).random(shape).astype(np.float32)
        std = float(np.std(np.asarray(model(sample))))
        if std > 0:
            weights = last.get_weights()
            weights[0] = (weights[0] / std).astype(np.float32)
            if len(weights) > 1:
                weights[1] = (weights[1] / std).astype(np.float32)
            last.set_weights(weights)
    return model


def _bn_value(layer, index: int, w, rng):
    """BatchNormalization weights in Keras order: [gamma], [beta], moving mean, moving var."""
    import numpy as np

    names = (["gamma"] if layer.scale else []) + (["beta"] if layer.center else []) + \
        ["mean", "var"]
    kind = names[index]
    if kind == "gamma":
        return (1.0 + 0.05 * rng.standard_normal(w.shape)).astype(np.float32)
    if kind == "var":
        return (1.0 + 0.1 * rng.random(w.shape)).astype(np.float32)
    return (0.05 * rng.standard_normal(w.shape)).astype(np.float32)


def torchvision_model(name: str, seed: int = 0):
    """A torchvision classifier by name (resnet18, mobilenet_v3_small, ...), weights=None, seeded."""
    import torchvision

    model = torchvision.models.get_model(name, weights=None)
    return seeded_init(model, seed)


def small_cnn(seed: int = 0):
    """Conv/BN/ReLU/pool/flatten/linear; input (N, 3, 32, 32) float32, output (N, 10)."""
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(16), nn.GELU(),
        nn.AvgPool2d(2),
        nn.Conv2d(16, 16, 1), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    return seeded_init(model, seed)


def text_lstm(vocab: int = 100, embed: int = 16, hidden: int = 24, classes: int = 5,
              bidirectional: bool = False, num_layers: int = 1, seed: int = 0):
    """Embedding + LSTM (batch_first) + Linear on the last step; input int64 ids (N, T)."""
    import torch
    from torch import nn

    class TextLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, embed)
            self.lstm = nn.LSTM(embed, hidden, num_layers=num_layers, batch_first=True,
                                bidirectional=bidirectional)
            self.head = nn.Linear(hidden * (2 if bidirectional else 1), classes)

        def forward(self, ids):
            out, _ = self.lstm(self.embed(ids))
            return self.head(out[:, -1])

    torch.manual_seed(seed)
    return seeded_init(TextLSTM(), seed)


def transformer_encoder(d_model: int = 32, nhead: int = 4, layers: int = 2, seed: int = 0):
    """nn.TransformerEncoder (batch_first) over float input (N, T, d_model)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=64, dropout=0.0,
                                       batch_first=True)
    model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    return seeded_init(model, seed)


def seeded_input(shape, seed: int = 0, dtype: str = "float32", high: int | None = None):
    """A seeded torch tensor: standard normal floats, or integers in [0, high) for int dtypes."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    if dtype.startswith("int"):
        return torch.randint(0, high or 10, tuple(shape), generator=gen, dtype=getattr(torch, dtype))
    return torch.randn(tuple(shape), generator=gen, dtype=getattr(torch, dtype))


def rel_error(actual, reference) -> float:
    """max |actual - reference| / max |reference| (numpy or torch inputs)."""
    import numpy as np

    a = np.asarray(actual.detach().cpu().numpy() if hasattr(actual, "detach") else actual, dtype=np.float64)
    r = np.asarray(reference.detach().cpu().numpy() if hasattr(reference, "detach") else reference,
                   dtype=np.float64)
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    diff = float(np.max(np.abs(a - r))) if r.size else 0.0
    return diff / scale if scale > 0 else diff


def keras_two_io(seed: int = 0):
    """Keras functional model: inputs a (N, 8) and b (N, 4); outputs o1 (N, 3) and o2 (N, 2)."""
    import keras

    keras.utils.set_random_seed(seed)
    a, b = keras.Input((8,), name="a"), keras.Input((4,), name="b")
    h = keras.layers.Concatenate()([keras.layers.Dense(16, activation="relu")(a), b])
    return keras.Model([a, b], [keras.layers.Dense(3, name="o1")(h),
                                keras.layers.Dense(2, name="o2")(h)])


def onnx_mlp(path, sizes=(16, 32, 8), seed: int = 0):
    """Write a seeded MLP (MatMul + Add + Relu per layer) as ONNX with a dynamic batch; no torch."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (0.01 * rng.standard_normal(n_out)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        current = f"a{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def onnx_custom_op(path):
    """Write an ONNX model using an operator no runtime or converter implements."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="ai.neuralbridge.test")], "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.neuralbridge.test", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def upsampling_head():
    """`F.interpolate(size=...)` to another feature map's size: nearest by an odd factor (an
    FPN's top-down path) and bilinear back to the input size (lraspp's segmentation head)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.small = nn.Conv2d(4, 4, 3, stride=3, padding=1)

        def forward(self, x):
            feat = torch.relu(self.down(x))
            up = F.interpolate(self.small(feat), size=feat.shape[-2:], mode="nearest")
            return F.interpolate(feat + up, size=x.shape[-2:], mode="bilinear", align_corners=False)

    return seeded_init(Head())
