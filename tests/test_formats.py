import zipfile

import pytest

from neuralbridge_cli import formats
from neuralbridge_cli.errors import SourceNotFoundError, UnknownFormatError


def test_import_path_is_detected():
    assert formats.detect("torchvision.models:resnet18").name == "torch-import"


def test_missing_file(tmp_path):
    with pytest.raises(SourceNotFoundError, match="no such file"):
        formats.detect(str(tmp_path / "nope.onnx"))


def test_empty_file_and_unknown_extension(tmp_path):
    empty = tmp_path / "m.onnx"
    empty.write_bytes(b"")
    with pytest.raises(UnknownFormatError, match="empty"):
        formats.detect(str(empty))
    odd = tmp_path / "model.xyz"
    odd.write_bytes(b"\x00\x01garbage")
    with pytest.raises(UnknownFormatError, match="--from"):
        formats.detect(str(odd))


def test_folder_without_saved_model(tmp_path):
    with pytest.raises(UnknownFormatError, match="saved_model.pb"):
        formats.detect(str(tmp_path))


def test_content_sniffing(tmp_path):
    tflite = tmp_path / "model.bin2"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 32)
    assert formats.detect(str(tflite)).name == "tflite"
    h5 = tmp_path / "noext"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 32)
    assert formats.detect(str(h5)).name == "h5"
    keras = tmp_path / "model.zip"
    with zipfile.ZipFile(keras, "w") as archive:
        archive.writestr("metadata.json", "{}")
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", "")
    assert formats.detect(str(keras)).name == "keras"


def test_from_override():
    assert formats.detect("whatever", override="onnx").name == "onnx"
    with pytest.raises(UnknownFormatError):
        formats.detect("whatever", override="nonsense")


def test_real_torch_files_are_told_apart(tmp_path):
    import torch

    module = torch.nn.Linear(3, 2)
    torch.save(module.state_dict(), tmp_path / "sd.pt")
    torch.jit.save(torch.jit.script(module), tmp_path / "ts.pt")
    program = torch.export.export(module, (torch.randn(2, 3),))
    torch.export.save(program, tmp_path / "ep.pt2")
    assert formats.detect(str(tmp_path / "sd.pt")).name == "torch-state-dict"
    assert formats.detect(str(tmp_path / "ts.pt")).name == "torchscript"
    assert formats.detect(str(tmp_path / "ep.pt2")).name == "torch-exported"
