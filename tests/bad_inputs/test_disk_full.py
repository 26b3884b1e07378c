"""A full disk: one clean error, nothing left behind (real tmpfs of 2 MB; needs root)."""
from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from neuralbridge_cli.cli.app import app

LINEAR = ["torch.nn:Linear", "--model-args", '{"in_features": 1024, "out_features": 1024}']


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def run(args):
    result = CliRunner().invoke(app, ["convert", *map(str, args)], catch_exceptions=False)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return result.exit_code, errors[0]


@pytest.mark.parametrize("suffix,target", [
    pytest.param(".onnx", "onnx", marks=pytest.mark.slow),  # covered in CI by --save-onnx below
    (".pt2", "torch")])
def test_disk_full(workdir, tiny_disk, suffix, target):
    code, line = run([*LINEAR, "--to", target, "-o", tiny_disk / f"model{suffix}"])
    assert code == 1
    assert "space" in line and f"model{suffix}" in line and "free some disk space" in line
    assert list(tiny_disk.iterdir()) == []


def test_save_onnx_failure_leaves_no_main_output(workdir, tiny_disk):
    code, line = run([*LINEAR, "--to", "onnx", "-o", workdir / "main.onnx",
                      "--save-onnx", tiny_disk / "copy.onnx"])
    assert code == 1 and "copy.onnx" in line
    assert not (workdir / "main.onnx").exists()
    assert list(tiny_disk.iterdir()) == [] and not list(workdir.glob(".nbtmp-*"))
