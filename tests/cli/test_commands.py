"""The CLI through Typer's CliRunner: exit codes, one-line errors, JSON, real conversions."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import models
from neuralbridge_cli.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_missing_file_is_a_usage_error(workdir):
    result = invoke("convert", "nope.onnx", "--to", "tf")
    assert result.exit_code == 2
    assert "no such file" in one_line_error(result)


def test_unknown_format(workdir):
    (workdir / "weights.xyz").write_bytes(b"\x00\x01\x02 not a model")
    result = invoke("convert", "weights.xyz", "--to", "onnx")
    assert result.exit_code == 2
    assert "--from" in one_line_error(result)


def test_missing_shape_names_the_flag(workdir):
    result = invoke("convert", "torch.nn:Identity", "--to", "onnx")
    assert result.exit_code == 2
    assert "--input-shape" in one_line_error(result)


def test_state_dict_needs_model_class(workdir):
    import torch

    torch.save(models.small_cnn().state_dict(), workdir / "cnn.pt")
    result = invoke("convert", "cnn.pt", "--to", "onnx")
    assert result.exit_code == 2
    assert "--model-class" in one_line_error(result)


def test_pickled_module_is_refused_without_trust(workdir):
    import torch

    torch.save(models.small_cnn(), workdir / "whole.pt")
    result = invoke("convert", "whole.pt", "--to", "onnx")
    assert result.exit_code == 1
    assert "--trust-pickle" in one_line_error(result)


def test_existing_output_is_kept_without_force(workdir):
    (workdir / "ResNet.onnx").write_bytes(b"precious")
    result = invoke("export-onnx", "torchvision.models:resnet18")
    assert result.exit_code == 2
    assert "--force" in one_line_error(result)
    assert (workdir / "ResNet.onnx").read_bytes() == b"precious"


def test_export_onnx_names_file_after_class_and_validates(workdir):
    result = invoke("export-onnx", "torchvision.models:resnet18", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["output"] == "ResNet.onnx" and (workdir / "ResNet.onnx").stat().st_size > 4e7
    check = data["validation"]
    assert check["passed"] and check["max_rel_error"] < 1e-4
    assert data["inputs"] == [{"name": "x", "shape": [None, 3, 224, 224], "dtype": "float32"}]
    # the batch stays dynamic: onnxruntime runs batch 3
    import onnxruntime as ort

    session = ort.InferenceSession(str(workdir / "ResNet.onnx"))
    out = session.run(None, {"x": np.zeros((3, 3, 224, 224), np.float32)})[0]
    assert out.shape == (3, 1000)


def test_validation_mismatch_exits_3_and_keeps_output(workdir):
    import torch

    torch.save(models.torchvision_model("resnet18").state_dict(), workdir / "r18.pt")
    result = invoke("convert", "r18.pt", "--model-class", "torchvision.models:resnet18",
                    "--to", "onnx", "--atol", "0", "--rtol", "0")
    assert result.exit_code == 3, result.output
    assert "differ" in one_line_error(result)
    assert "FAIL" in result.stdout
    assert (workdir / "r18.onnx").exists()


def test_inspect_onnx_json(workdir):
    import torch

    torch.onnx.export(models.small_cnn(), (torch.randn(2, 3, 32, 32),), "cnn.onnx",
                      input_names=["img"], dynamic_axes={"img": {0: "n"}}, dynamo=False)
    result = invoke("inspect", "cnn.onnx", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["format"] == "onnx" and info["inputs"][0]["shape"] == ["n", 3, 32, 32]
    assert info["ops"]["Conv"] == 3 and info["parameters"] > 1000
    assert info["opset"] and info["producer"].startswith("pytorch")


def test_inspect_state_dict_lists_its_weights(workdir):
    import torch

    model = models.small_cnn()
    torch.save(model.state_dict(), "cnn.pt")
    result = invoke("inspect", "cnn.pt", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    state = model.state_dict()
    assert info["tensors"] == len(state)
    assert info["parameters"] == sum(t.numel() for t in state.values())
    assert info["weights"][0] == {"name": "0.weight", "shape": [8, 3, 3, 3], "dtype": "float32"}
    assert "--model-class" in info["class"]


def test_inspect_torchscript_and_tflite(workdir):
    import torch

    torch.jit.script(models.small_cnn()).save("cnn_ts.pt")
    info = json.loads(invoke("inspect", "cnn_ts.pt", "--json").stdout)
    assert [i["name"] for i in info["inputs"]] == ["input"]
    assert any("no shapes" in n for n in info["notes"])
    result = invoke("convert", "cnn_ts.pt", "--to", "tflite", "-o", "cnn.tflite",
                    "--input-shape", "1,3,32,32", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(invoke("inspect", "cnn.tflite", "--json").stdout)
    # batch norm folds into the convolutions: fewer weights than the torch model, not zero
    torch_params = sum(p.numel() for p in models.small_cnn().parameters())
    assert 0.9 * torch_params < info["parameters"] <= torch_params


def test_keras_two_inputs_two_outputs_to_onnx(workdir):
    model = models.keras_two_io()
    model.save(workdir / "two.keras")
    result = invoke("convert", "two.keras", "--to", "onnx", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [o["name"] for o in data["validation"]["outputs"]] == ["o1", "o2"]
    assert data["validation"]["passed"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(workdir / "two.onnx"))
    x = [np.random.default_rng(1).standard_normal((3, n)).astype(np.float32) for n in (8, 4)]
    got = session.run(None, {"a": x[0], "b": x[1]})
    want = model([x[0], x[1]])
    for g, w in zip(got, want):
        assert models.rel_error(g, np.asarray(w)) < 1e-5


class _Payload:
    """Unpickling this creates the file named in `marker` (the attack being refused)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_pt2_weights_and_forced_pickle_format_are_refused(workdir):
    import io
    import zipfile

    import torch

    module = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    torch.export.save(torch.export.export(module, (torch.randn(2, 4),)), workdir / "ok.pt2")
    marker = workdir / "PAYLOAD_RAN"
    payload = io.BytesIO()
    torch.save(_Payload(str(marker)), payload)
    with zipfile.ZipFile(workdir / "ok.pt2") as src, \
            zipfile.ZipFile(workdir / "evil.pt2", "w", zipfile.ZIP_STORED) as out:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(config).encode()
                weight_file = first["path_name"]
            out.writestr(name, data)
    with zipfile.ZipFile(workdir / "evil.pt2") as archive:  # put the payload in that weight
        entries = {n: archive.read(n) for n in archive.namelist()}
    with zipfile.ZipFile(workdir / "evil.pt2", "w", zipfile.ZIP_STORED) as out:
        for name, data in entries.items():
            out.writestr(name, payload.getvalue() if name.endswith("/" + weight_file) else data)
    result = invoke("convert", "evil.pt2", "--to", "onnx")
    assert result.exit_code == 1 and "--trust-pickle" in one_line_error(result)
    torch.save(_Payload(str(marker)), workdir / "evil.pt")
    result = invoke("convert", "evil.pt", "--from", "torch-pickle", "--to", "onnx")
    assert result.exit_code == 1 and "--trust-pickle" in one_line_error(result)
    assert not marker.exists()
    assert not (workdir / "evil.onnx").exists()


def test_keras_weights_only_writes_a_weights_file_that_loads(workdir):
    import keras
    import torch

    torch.save(models.small_cnn().state_dict(), "cnn.pt")
    base = ["convert", "cnn.pt", "--model-class", "models:small_cnn", "--input-shape",
            "1,3,32,32", "--to", "keras"]
    refused = invoke(*base, "--weights-only", "-o", "w.keras")
    assert refused.exit_code == 2 and "-o w.weights.h5" in one_line_error(refused)
    assert invoke(*base, "--weights-only", "-o", "w.weights.h5").exit_code == 0
    assert invoke(*base, "-o", "full.keras").exit_code == 0
    full = keras.saving.load_model("full.keras")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32")
    want = np.asarray(full(x))
    for w in full.weights:  # the weights file alone restores them
        w.assign(np.zeros(w.shape, w.dtype))
    full.load_weights("w.weights.h5")
    assert np.abs(np.asarray(full(x)) - want).max() < 1e-6


@pytest.mark.parametrize("args, phrase", [
    (["--to", "tf", "--weights-only"], "not tf"),
    (["--to", "tf", "-o", "r.keras"], "says keras"),
])
def test_outputs_that_would_not_load_as_named_are_refused(workdir, args, phrase):
    import torch

    torch.save(models.small_cnn().state_dict(), "cnn.pt")
    result = invoke("convert", "cnn.pt", "--model-class", "models:small_cnn", *args)
    assert result.exit_code == 2
    assert phrase in one_line_error(result)
    assert sorted(p.name for p in workdir.iterdir()) == ["cnn.pt"]
