"""Conversion of an image model works with networking blocked in the process.

onnx2tf downloads calibration images for models whose inputs look like 3-channel images;
the converter must never need the network.
"""
from __future__ import annotations

import socket

import numpy as np
import pytest

import builders
from neuralbridge_cli.options import Options
from neuralbridge_cli.pipeline import convert


class NoNetwork(socket.socket):
    def __init__(self, *args, **kwargs):
        raise OSError("network access is blocked in this test")


def _blocked(*args, **kwargs):
    raise OSError("network access is blocked in this test")


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setattr(socket, "socket", NoNetwork)
    monkeypatch.setattr(socket, "create_connection", _blocked)
    monkeypatch.setattr(socket, "getaddrinfo", _blocked)
    with pytest.raises(OSError):
        socket.create_connection(("example.com", 80))
    yield


def test_image_model_onnx_to_tf_offline(workdir, no_network):
    source = builders.onnx_conv(workdir / "conv.onnx", size=16, batch=1)
    result = convert(str(source), "tf", str(workdir / "conv.savedmodel"), Options())
    assert (workdir / "conv.savedmodel" / "saved_model.pb").is_file()
    assert result.report is not None and result.report.passed
    assert result.report.max_abs_error < 1e-3


def test_socket_patch_blocks_the_download_path(no_network):
    """The guard itself: the HTTP client onnx2tf would use cannot connect."""
    import urllib.request

    with pytest.raises(OSError):
        urllib.request.urlopen("http://example.com", timeout=1)
    assert np.isfinite(1.0)
