"""The Python API on live models: convert_model both ways, and the load_as_* loaders."""
from __future__ import annotations

import numpy as np
import pytest

import models
from neuralbridge_cli import convert_model, export_onnx, load_as_onnx, load_as_tf, load_as_torch


def seeded(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def keras_cnn():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))


def test_convert_torch_module_to_tf_callable():
    import tensorflow as tf
    import torch

    module = models.small_cnn()
    tf_model = convert_model(module, input_shape=(1, 3, 32, 32))
    x = seeded((3, 3, 32, 32))  # another batch size than the validation's
    got = tf_model(tf.constant(x))
    assert isinstance(got, tf.Tensor)
    with torch.inference_mode():
        want = module(torch.from_numpy(x))
    assert models.rel_error(got.numpy(), want) < 1e-5


def test_convert_keras_model_to_torch_module():
    import torch

    model = keras_cnn()
    torch_model = convert_model(model)
    assert isinstance(torch_model, torch.nn.Module)
    x = seeded((3, 16, 16, 3))
    with torch.inference_mode():
        got = torch_model(torch.from_numpy(x))
    assert isinstance(got, torch.Tensor)
    assert models.rel_error(got, np.asarray(model(x))) < 1e-5


def test_load_as_torch_from_keras_file_and_tf_from_onnx(tmp_path):
    import torch

    model = keras_cnn()
    model.save(tmp_path / "cnn.keras")
    module = load_as_torch(tmp_path / "cnn.keras")
    x = seeded((2, 16, 16, 3))
    with torch.inference_mode():
        assert models.rel_error(module(torch.from_numpy(x)), np.asarray(model(x))) < 1e-5

    proto = export_onnx(models.small_cnn(), tmp_path / "cnn.onnx", input_shape=(1, 3, 32, 32))
    assert proto.graph.input[0].name == "input"
    assert load_as_onnx(tmp_path / "cnn.onnx").graph.node  # already ONNX: loaded as is
    tf_model = load_as_tf(tmp_path / "cnn.onnx")
    x = seeded((2, 3, 32, 32))
    import onnxruntime as ort

    want = ort.InferenceSession(str(tmp_path / "cnn.onnx")).run(None, {"input": x})[0]
    assert models.rel_error(np.asarray(tf_model(x)), want) < 1e-5


def test_validation_mismatch_raises():
    from neuralbridge_cli.errors import ValidationMismatch

    with pytest.raises(ValidationMismatch) as info:
        convert_model(models.torchvision_model("resnet18"), to="onnx", atol=0.0, rtol=0.0)
    assert info.value.exit_code == 3
    assert info.value.report.max_abs_error > 0


def test_keras_imported_before_neuralbridge_does_not_crash(tmp_path):
    """TensorFlow loaded first, then torch's triton: a segfault unless triton is kept out."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("import sys\n"
              f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "import models\n"
              "model = models.keras_two_io()\n"
              "from neuralbridge_cli import ValidationMismatch, convert_model\n"
              "print(type(convert_model(model)).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GraphModule" in proc.stdout


@pytest.mark.parametrize("imports", ["tensorflow, torch", "torch, tensorflow",
                                     "neuralbridge_cli, tensorflow, torch"])
def test_torch_module_converts_when_the_user_imported_tensorflow(imports):
    """The user's code imported TensorFlow and torch (in any order) before convert_model:
    torch's exporter must not load triton after TensorFlow (it segfaulted, exit 139)."""
    import subprocess
    import sys

    script = (f"import {imports}\n"
              "import numpy as np\n"
              "from neuralbridge_cli import convert_model\n"
              "m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()\n"
              "x = torch.randn(1, 3, 16, 16)\n"
              "out = np.asarray(convert_model(m, input_shape=(1, 3, 16, 16))(x.numpy()))\n"
              "print(float(np.abs(out - m(x).detach().numpy()).max()))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) < 1e-4


def test_cli_model_module_that_imports_tensorflow(tmp_path):
    """An import path whose module imports TensorFlow first, converted by the CLI."""
    import subprocess
    import sys

    (tmp_path / "tfmods.py").write_text(
        "import tensorflow\nimport torch\n\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 4, 3)\n\n"
        "    def forward(self, x):\n"
        "        return self.conv(x).relu()\n")
    proc = subprocess.run([sys.executable, "-m", "neuralbridge_cli", "-q", "convert",
                           "tfmods:Tiny", "--input-shape", "1,3,16,16", "--to", "onnx", "-o",
                           "t.onnx"], capture_output=True, text=True, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "t.onnx").stat().st_size > 0


def test_tf_results_convert_back_to_torch(tmp_path):
    """What convert_model / load_as_tf / tf.saved_model.load return converts back: the live
    converted module (its variables do not freeze in place), the loaded `serve` function
    (which alone would not keep the restored variables alive) and the loaded object."""
    import tensorflow as tf
    import torch

    model = models.small_cnn()
    x = models.seeded_input((3, 3, 32, 32), seed=5)
    with torch.no_grad():
        want = model(x).numpy()
    live = convert_model(model, input_shape=(1, 3, 32, 32), save=tmp_path / "cnn.savedmodel")
    for tf_side in (live, load_as_tf(tmp_path / "cnn.savedmodel"),
                    tf.saved_model.load(str(tmp_path / "cnn.savedmodel"))):
        back = convert_model(tf_side)
        assert isinstance(back, torch.nn.Module)
        with torch.no_grad():
            assert models.rel_error(back(x), want) < 1e-5
