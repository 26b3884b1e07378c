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
    (target / "saved_model.pb").write_text("old")  # an earlier SavedModel, with a stale file
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


def test_force_never_replaces_a_folder_that_holds_no_savedmodel(tmp_path):
    """photos.savedmodel/ with the user's files: --force used to delete them."""
    from neuralbridge_cli.atomic import check_output
    from neuralbridge_cli.errors import UsageError

    folder = tmp_path / "photos.savedmodel"
    (folder / "sub").mkdir(parents=True)
    (folder / "precious.txt").write_text("keep")
    with pytest.raises(UsageError, match="holds no SavedModel; not replacing it, even with"):
        check_output(folder, force=True)
    saved = tmp_path / "real.savedmodel"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"pb")
    assert check_output(saved, force=True) == saved
    empty = tmp_path / "empty.savedmodel"
    empty.mkdir()
    assert check_output(empty, force=True) == empty


def test_an_output_folder_holding_the_source_is_refused(tmp_path, monkeypatch):
    """-o t.savedmodel --force for the source t.savedmodel/model.onnx deleted the source."""
    import models
    from neuralbridge_cli.errors import UsageError
    from neuralbridge_cli.options import Options
    from neuralbridge_cli.pipeline import convert

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "t.savedmodel"
    out.mkdir()
    (out / "saved_model.pb").write_bytes(b"pb")
    models.onnx_mlp(out / "model.onnx")
    with pytest.raises(UsageError, match="contains the source"):
        convert(str(out / "model.onnx"), "tf", str(out), Options(force=True))
    assert (out / "model.onnx").is_file()
    with pytest.raises(UsageError, match="is the output itself"):
        convert(str(out / "model.onnx"), "onnx", "a.onnx", Options(save_onnx="a.onnx"))
    assert not (tmp_path / "a.onnx").exists()
