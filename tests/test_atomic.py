import pytest

from neuralbridge_cli.atomic import atomic_output, check_output
from neuralbridge_cli.errors import OutputExistsError, UsageError


def test_success_moves_into_place(tmp_path):
    target = tmp_path / "m.onnx"
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_failure_leaves_previous_file_and_no_temporaries(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target, force=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_folder_outputs_are_replaced_whole(tmp_path):
    target = tmp_path / "m.savedmodel"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_output(target, force=True) as tmp:
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["saved_model.pb"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.savedmodel"]


def test_existing_output_needs_force_and_folder_must_exist(tmp_path):
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="--force"):
        check_output(existing, force=False)
    with pytest.raises(UsageError, match="does not exist"):
        check_output(tmp_path / "missing" / "m.onnx", force=False)
