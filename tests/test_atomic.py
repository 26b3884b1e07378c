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


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_run_are_removed_and_live_ones_kept(tmp_path):
    import os

    dead = _dead_pid()
    killed = tmp_path / f".nbtmp-0123abcd-p{dead}-m.onnx"
    killed_data = tmp_path / f".nbtmp-0123abcd-p{dead}-m.onnx.data"
    killed_folder = tmp_path / f".nbtmp-4567abcd-p{dead}-m.onnx"
    other_model = tmp_path / f".nbtmp-89abcdef-p{dead}-other-m.onnx"
    live = tmp_path / f".nbtmp-fedcba98-p{os.getppid()}-m.onnx"
    for path in (killed, killed_data, other_model, live):
        path.write_bytes(b"partial")
    killed_folder.mkdir()
    with atomic_output(tmp_path / "m.onnx") as tmp:
        tmp.write_bytes(b"new")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["m.onnx", other_model.name, live.name])
