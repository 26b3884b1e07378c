"""Seeded zoo models beyond tests/models.py (scripts/zoo.py); frameworks imported lazily.

Torch builders are zero-argument factories usable as `--model-class`/import paths
(`zoo_models:gpt_block`); Keras builders are written to a .keras file by `save_keras`.
"""
from __future__ import annotations

from models import seeded_init


def segmentation(seed: int = 0):
    """torchvision LR-ASPP MobileNetV3-Large (21 classes); returns the `out` map only."""
    import torchvision
    from torch import nn

    class Segmenter(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
                weights=None, weights_backbone=None)

        def forward(self, x):
            return self.net(x)["out"]

    return seeded_init(Segmenter(), seed)


def detection_backbone(seed: int = 0):
    """The MobileNetV3 + FPN backbone of torchvision's Faster R-CNN: image -> 3 feature maps."""
    import torchvision
    from torch import nn

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            detector = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
                weights=None, weights_backbone=None)
            self.body = detector.backbone

        def forward(self, x):
            return tuple(self.body(x).values())

    return seeded_init(Backbone(), seed)


def text_gru(vocab: int = 100, embed: int = 16, hidden: int = 24, classes: int = 5,
             seed: int = 0):
    """Embedding + GRU (batch_first) + Linear on the last step; input int64 ids (N, T)."""
    import torch
    from torch import nn

    class TextGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, embed)
            self.gru = nn.GRU(embed, hidden, batch_first=True)
            self.head = nn.Linear(hidden, classes)

        def forward(self, ids):
            out, _ = self.gru(self.embed(ids))
            return self.head(out[:, -1])

    torch.manual_seed(seed)
    return seeded_init(TextGRU(), seed)


def gpt_block(vocab: int = 128, d_model: int = 32, heads: int = 4, max_len: int = 128,
              seed: int = 0):
    """A GPT-style decoder block: token + position embeddings, causal self-attention,
    MLP, pre-norm residuals and an LM head; input int64 ids (N, T), output (N, T, vocab)."""
    import torch
    from torch import nn

    class GPTBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = nn.Embedding(vocab, d_model)
            self.positions = nn.Parameter(torch.zeros(max_len, d_model))
            self.norm1 = nn.LayerNorm(d_model)
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.norm2 = nn.LayerNorm(d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                     nn.Linear(4 * d_model, d_model))
            self.head = nn.Linear(d_model, vocab)

        def forward(self, ids):
            n, t = ids.shape
            x = self.tokens(ids) + self.positions[:t]
            q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
            split = lambda z: z.reshape(n, t, heads, d_model // heads).transpose(1, 2)  # noqa: E731
            q, k, v = split(q), split(k), split(v)
            scores = q @ k.transpose(-2, -1) / (d_model // heads) ** 0.5
            causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
            attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d_model)
            x = x + self.proj(attended)
            x = x + self.mlp(self.norm2(x))
            return self.head(x)

    torch.manual_seed(seed)
    return seeded_init(GPTBlock(), seed)


# ---------------------------------------------------------------- Keras
def keras_application(name: str):
    """keras.applications.<name> with weights=None and raw logits (no softmax), re-initialised
    by models.keras_seeded_init so that the logits are of order 1 (they are ~1e-11 as built)
    and validation compares informative numbers."""
    import keras

    from models import keras_seeded_init

    return keras_seeded_init(getattr(keras.applications, name)(weights=None,
                                                                classifier_activation=None))


def keras_lstm():
    """Keras LSTM classifier over float sequences (N, 12, 8)."""
    import keras

    x = keras.Input((12, 8), name="sequence")
    h = keras.layers.LSTM(16)(x)
    return keras.Model(x, keras.layers.Dense(4, name="logits")(h))


def keras_mha():
    """Keras self-attention block: MultiHeadAttention + residual + LayerNorm + pooling."""
    import keras

    x = keras.Input((10, 16), name="tokens")
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    h = keras.layers.LayerNormalization()(x + attended)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(x, keras.layers.Dense(3, name="logits")(h))


def keras_two_io():
    from models import keras_two_io as build

    return build()


def save_keras(builder: str, args_json: str, path: str, seed: int = 0) -> None:
    """Build the Keras model `builder` (a function here) with seeded weights; save to path."""
    import json

    import keras

    keras.utils.set_random_seed(seed)
    model = globals()[builder](**json.loads(args_json))
    model.save(path)
