"""Batch conversion of a folder of models: discovery, sharding, worker processes, reports.

    from neuralbridge_cli.batch import BatchSpec, run_batch
    report = run_batch(BatchSpec("models", "out", to="onnx", jobs=2), options_for)

Nothing here imports torch or TensorFlow in the calling process: the frameworks are
imported once per worker process (see workers.py).
"""
from __future__ import annotations

from .discovery import Model, discover, is_batch_source
from .reports import BatchReport, ModelResult
from .runner import BatchSpec, run_batch

__all__ = ["BatchReport", "BatchSpec", "Model", "ModelResult", "discover", "is_batch_source",
           "run_batch"]
