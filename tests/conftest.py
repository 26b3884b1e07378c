"""Test set-up: quiet TensorFlow, and the import order that avoids the triton-after-TF crash."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).parent))  # `import models`


@pytest.fixture(scope="session", autouse=True)
def _framework_import_order():
    """Import triton (via neuralbridge's lazy loader) before any test imports TensorFlow."""
    from neuralbridge_cli import lazy

    lazy._prepare_tensorflow_import()
    yield


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run the test inside a fresh folder (default outputs land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
