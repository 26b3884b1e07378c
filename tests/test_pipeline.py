"""Every conversion route end to end, on real models, with the artifacts checked by
loading them in a separate process with their framework alone (this project and the
converter libraries blocked from import)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import models
from neuralbridge_cli.options import Options
from neuralbridge_cli.pipeline import convert

BLOCK = ("import sys\n"
         "for name in ('neuralbridge_cli', 'onnx2torch', 'onnx2tf', 'tf2onnx', 'tf_keras'):\n"
         "    sys.modules[name] = None  # importing any of them now fails\n")

LOADERS = {
    "torch": "import torch\nm = torch.export.load(PATH).module()\ny = m(*[torch.from_numpy(a) for a in X])",
    "torchscript": "import torch\nm = torch.jit.load(PATH)\ny = m(*[torch.from_numpy(a) for a in X])",
    "tf": "import tensorflow as tf\nm = tf.saved_model.load(PATH)\ny = m(*X)",
    "keras": "import keras\nm = keras.saving.load_model(PATH)\ny = m(X if len(X) > 1 else X[0])",
    "h5": "import keras\nm = keras.saving.load_model(PATH)\ny = m(X if len(X) > 1 else X[0])",
    "tflite": ("import tensorflow as tf\nit = tf.lite.Interpreter(model_path=PATH)\n"
               "ds = it.get_input_details()\n"
               "[it.resize_tensor_input(d['index'], a.shape) for d, a in zip(ds, X)]\n"
               "it.allocate_tensors()\n[it.set_tensor(d['index'], a) for d, a in zip(ds, X)]\n"
               "it.invoke()\ny = [it.get_tensor(d['index']) for d in it.get_output_details()]"),
    "onnx": ("import onnxruntime as ort\ns = ort.InferenceSession(PATH)\n"
             "y = s.run(None, {i.name: a for i, a in zip(s.get_inputs(), X)})"),
}


def run_plain(target: str, path, arrays: list[np.ndarray], tmp_path) -> list[np.ndarray]:
    """Load `path` in a fresh process with only its framework and run it on `arrays`."""
    np.savez(tmp_path / "x.npz", *arrays)
    script = (BLOCK + "import numpy as np\n"
              f"PATH = {str(path)!r}\n"
              f"X = list(np.load({str(tmp_path / 'x.npz')!r}).values())\n"
              + LOADERS[target] + "\n"
              "ys = list(y) if isinstance(y, (list, tuple)) else [y]\n"
              "ys = [v.detach() if hasattr(v, 'detach') else v for v in ys]\n"
              "np.savez(PATH + '.out.npz', *[np.asarray(v) for v in ys])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return list(np.load(str(path) + ".out.npz").values())


def reference(module, arrays):
    import torch

    with torch.inference_mode():
        out = module(*[torch.from_numpy(a) for a in arrays])
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def seeded(shape, seed=3):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("target, name", [("tf", "cnn.savedmodel"), ("tflite", "cnn.tflite"),
                                          ("onnx", "cnn.onnx"), ("torch", "cnn.pt2"),
                                          ("torchscript", "cnn.pt"), ("keras", "cnn.keras"),
                                          ("h5", "cnn.h5")])
def test_torch_module_to_every_target(target, name, workdir):
    module = models.small_cnn()
    result = convert("models:small_cnn", target, name,
                     Options(input_specs=None, atol=1e-4, rtol=1e-3))
    assert result.report.passed and result.report.max_rel_error < 1e-4
    x = [seeded((3, 3, 224, 224))]  # batch 3: the batch stays dynamic
    got = run_plain(target, workdir / name, x, workdir)
    assert models.rel_error(got[0], reference(module, x)[0]) < 1e-4


def test_savedmodel_back_to_torch_round_trip(workdir):
    module = models.small_cnn()
    convert("models:small_cnn", "tf", "cnn.savedmodel", Options())
    result = convert("cnn.savedmodel", "torch", "back.pt2", Options())
    assert result.route == ["tf", "onnx", "torch"] and result.report.passed
    x = [seeded((3, 3, 224, 224))]
    got = run_plain("torch", workdir / "back.pt2", x, workdir)
    assert models.rel_error(got[0], reference(module, x)[0]) < 1e-4


def test_layout_nhwc_takes_channels_last(workdir):
    module = models.small_cnn()
    result = convert("models:small_cnn", "tf", "nhwc.savedmodel", Options(layout="nhwc"))
    assert result.report.passed and result.target.input_perms == {0: (0, 2, 3, 1)}
    report = result.as_dict()
    assert report["layout"] == "nhwc" and report["inputs"][0]["shape"] == [None, 3, 224, 224]
    assert report["converted_inputs"][0]["shape"] == [None, 224, 224, 3]
    x = seeded((2, 3, 224, 224))
    got = run_plain("tf", workdir / "nhwc.savedmodel", [np.ascontiguousarray(x.transpose(0, 2, 3, 1))],
                    workdir)
    assert models.rel_error(got[0], reference(module, [x])[0]) < 1e-4


@pytest.mark.parametrize("factory", ["text_lstm", "transformer_encoder"])
def test_sequence_models_to_tf_with_inferred_shapes(factory, workdir):
    result = convert(f"models:{factory}", "tf", f"{factory}.savedmodel", Options())
    assert result.report.passed, result.report.summary()
    assert any("inferred" in n for n in result.notes)
    module = getattr(models, factory)()
    spec = result.source.inputs[0]
    if spec.dtype == "int64":
        x = np.random.default_rng(5).integers(0, 100, (3, 16)).astype(np.int64)
    else:
        x = seeded((3, 16, 32))
    got = run_plain("tf", workdir / f"{factory}.savedmodel", [x], workdir)
    assert models.rel_error(got[0], reference(module, [x])[0]) < 1e-4


def test_keras_two_inputs_two_outputs_to_torch(workdir):
    model = models.keras_two_io()
    model.save(workdir / "two.keras")
    result = convert("two.keras", "torch", "two.pt2", Options())
    assert [o.name for o in result.report.outputs] == ["o1", "o2"] and result.report.passed
    x = [seeded((3, 8)), seeded((3, 4), 4)]
    got = run_plain("torch", workdir / "two.pt2", x, workdir)
    want = model(x)
    for g, w in zip(got, want):
        assert models.rel_error(g, np.asarray(w)) < 1e-5


def test_resnet18_state_dict_to_tf_and_back(workdir):
    """The demo's route on a full-size model: state dict -> SavedModel -> .pt2."""
    import torch

    module = models.torchvision_model("resnet18")
    torch.save(module.state_dict(), workdir / "r18.pt")
    first = convert("r18.pt", "tf", "r18.savedmodel",
                    Options(model_class="torchvision.models:resnet18"))
    back = convert("r18.savedmodel", "torch", "r18.pt2", Options())
    assert first.report.max_rel_error < 1e-4 and back.report.max_rel_error < 1e-4
    x = [seeded((2, 3, 224, 224))]
    got = run_plain("torch", workdir / "r18.pt2", x, workdir)
    assert models.rel_error(got[0], reference(module, x)[0]) < 1e-4


def test_keras_two_io_to_tflite_and_tflite_as_a_source(workdir):
    model = models.keras_two_io()
    model.save(workdir / "two.keras")
    to_tflite = convert("two.keras", "tflite", "two.tflite", Options())
    assert [o.name for o in to_tflite.report.outputs] == ["o1", "o2"] and to_tflite.report.passed
    from_tflite = convert("two.tflite", "onnx", "two.onnx", Options())
    assert from_tflite.report.passed
    x = [seeded((3, 8)), seeded((3, 4), 4)]
    got = run_plain("onnx", workdir / "two.onnx", x, workdir)
    for g, w in zip(got, model(x)):
        assert models.rel_error(g, np.asarray(w)) < 1e-5


def test_two_inputs_out_of_alphabetical_order_to_tf(workdir):
    """img before ids: signature keywords sort them the other way round."""
    import torch

    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.embed = torch.nn.Embedding(10, 4)

        def forward(self, img, ids):
            return self.conv(img).mean((2, 3)) + self.embed(ids).mean(1)

    torch.manual_seed(0)
    module = TwoInputs().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2, 5))),
                                  dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, workdir / "two_inputs.pt2")
    result = convert("two_inputs.pt2", "tf", "two.savedmodel", Options())
    assert result.report.passed and [s.name for s in result.source.inputs] == ["img", "ids"]
    back = convert("two.savedmodel", "torch", "back.pt2", Options())
    assert back.report.passed


@pytest.mark.parametrize("target, name", [("tf", "again.savedmodel"), ("keras", "sm.keras"),
                                          ("h5", "sm.h5")])
def test_savedmodel_source_to_every_tf_format(target, name, workdir):
    """A SavedModel source re-saved as a SavedModel keeps its serving signature; to .keras
    and .h5 (which a restored SavedModel cannot write) it goes through ONNX."""
    model = models.small_cnn()
    convert("models:small_cnn", "tf", "cnn.savedmodel", Options())
    result = convert("cnn.savedmodel", target, name, Options())
    assert result.report.passed and (target == "tf") == (result.route == ["tf"]), result.route
    x = [seeded((2, 3, 224, 224))]
    got = run_plain(target, workdir / name, x, workdir)
    assert models.rel_error(got[0], reference(model, x)[0]) < 1e-5


@pytest.mark.parametrize("target, name", [("tf", "t.savedmodel"), ("keras", "t.keras")])
def test_tflite_source_to_tf_formats_goes_through_onnx(target, name, workdir):
    """A TFLite file cannot be re-saved by TF directly (it was an AttributeError traceback)."""
    model = models.keras_two_io()
    model.save(workdir / "two.keras")
    convert("two.keras", "tflite", "two.tflite", Options())
    result = convert("two.tflite", target, name, Options())
    assert result.report.passed and result.route[:2] == ["tf", "onnx"], result.route
    x = [seeded((2, 8)), seeded((2, 4), 4)]  # batch 2: a TFLite result may be fixed at it
    got = run_plain(target, workdir / name, x, workdir)
    want = [np.asarray(w) for w in model(x)]
    by_shape = {g.shape: g for g in got}
    for w in want:
        assert models.rel_error(by_shape[w.shape], w) < 1e-5


def test_an_output_that_cannot_be_loaded_back_is_removed(workdir, monkeypatch):
    """Nothing is left behind when the written model fails to load (only a mismatch keeps
    the output); the error says so."""
    from neuralbridge_cli import pipeline
    from neuralbridge_cli.errors import ConversionError

    models.onnx_mlp(workdir / "m.onnx")

    def unloadable(output, *args):
        raise ValueError(f"{output} is unreadable")

    monkeypatch.setattr(pipeline, "_reload", unloadable)
    with pytest.raises(ConversionError, match="could not be loaded back and run, so it was "
                                              "removed"):
        convert("m.onnx", "onnx", "out.onnx", Options())
    assert sorted(p.name for p in workdir.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("target, name", [("onnx", "s.onnx"), ("tf", "s.savedmodel"),
                                          ("tflite", "s.tflite")])
def test_static_fixes_the_batch_of_an_onnx_source(target, name, workdir):
    """--static was applied by the torch exporter only; an ONNX graph kept its symbolic
    batch in every target."""
    models.onnx_mlp(workdir / "m.onnx")
    result = convert("m.onnx", target, name, Options(static=True))
    assert result.report.passed and result.report.batch == 1
    if target == "onnx":
        import onnx

        dims = onnx.load(str(workdir / name)).graph.input[0].type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    elif target == "tf":
        import tensorflow as tf

        spec = tf.saved_model.load(str(workdir / name)).signatures["serving_default"]
        shape = list(next(iter(spec.structured_input_signature[1].values())).shape)
    else:
        from neuralbridge_cli.backends.onnx_to_tf import _tflite_interpreter

        shape = list(_tflite_interpreter(str(workdir / name)).get_input_details()[0]
                     ["shape_signature"])
    assert shape == [1, 16], shape


def test_keras_grouped_conv_to_onnx_and_torch(workdir):
    """Keras 3 runs a grouped Conv2D (ConvNeXtTiny's depthwise convs) through a nested XLA
    tf.function that tf2onnx cannot read ("variables left as inputs"): traced as a plain
    Conv2D, it becomes an ONNX Conv with `group`."""
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((9, 9, 8), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", groups=8, name="depthwise")(x)
    h = keras.layers.Conv2D(6, 1, groups=2, name="grouped")(h)
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
    model.save(workdir / "grouped.keras")
    for target, name in (("onnx", "grouped.onnx"), ("torch", "grouped.pt2")):
        result = convert("grouped.keras", target, name, Options())
        assert result.report.passed and result.report.max_rel_error < 1e-5, target
    import onnx

    groups = sorted(a.i for n in onnx.load("grouped.onnx").graph.node if n.op_type == "Conv"
                    for a in n.attribute if a.name == "group")
    assert groups == [2, 8]
    sample = [seeded((3, 9, 9, 8))]
    got = run_plain("torch", workdir / "grouped.pt2", sample, workdir)
    assert models.rel_error(got[0], np.asarray(model(sample[0]))) < 1e-5
