"""The shared comparison engine's new metrics, tolerances parsing, layout mapping; light --help."""
from __future__ import annotations

import numpy as np
import pytest

from neuralbridge_cli.compare import layout_perm
from neuralbridge_cli.errors import UsageError
from neuralbridge_cli.specs import TensorSpec
from neuralbridge_cli.validate import compare_outputs, parse_tolerances


def test_mean_cosine_and_top1():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]], np.float32)
    cand = np.array([[3.0, 1.0, 0.5], [0.0, 2.5, 2.0]], np.float32)  # row 2 flips its top-1
    row = compare_outputs([ref], [cand], ["logits"], atol=1e-4, rtol=1e-3).outputs[0]
    assert row.mean_abs_error == pytest.approx(2.0 / 6)
    assert row.top1_agreement == 0.5
    expected = float(ref.ravel() @ cand.ravel() / np.linalg.norm(ref) / np.linalg.norm(cand))
    assert row.cosine == pytest.approx(expected)


def test_top1_only_for_classifier_like_outputs():
    feats = np.ones((2, 4, 8), np.float32)
    assert compare_outputs([feats], [feats], atol=0, rtol=0).outputs[0].top1_agreement is None


def test_per_output_tolerances():
    ref = [np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)]
    cand = [ref[0] + 1e-2, ref[1] + 1e-2]
    report = compare_outputs(ref, cand, ["logits", "aux"], atol=1e-4, rtol=0,
                             atols={"logits": 0.1})
    assert [o.passed for o in report.outputs] == [True, False]
    assert report.outputs[0].atol == 0.1 and report.outputs[1].atol == 1e-4


def test_parse_tolerances():
    assert parse_tolerances(["1e-3", "logits:0.5"], 1e-4) == (1e-3, {"logits": 0.5})
    assert parse_tolerances(None, 1e-4) == (1e-4, {})
    with pytest.raises(UsageError):
        parse_tolerances(["logits:x"], 1e-4)
    with pytest.raises(UsageError):
        parse_tolerances(["-1"], 1e-4)


def test_layout_perm():
    nchw = TensorSpec("x", (None, 3, 32, 32))
    nhwc = TensorSpec("x", (None, 32, 32, 3))
    assert layout_perm(nchw, nhwc) == (0, 2, 3, 1)
    assert layout_perm(nhwc, nchw) == (0, 3, 1, 2)
    assert layout_perm(nchw, nchw) is None
    assert layout_perm(TensorSpec("t", (None, 16)), TensorSpec("t", (None, 16))) is None


@pytest.mark.parametrize("command", ["validate", "compare-precision", "diff", "check-input"])
def test_help_is_light(command):
    from cli.test_startup import heavy_modules

    assert heavy_modules(command, "--help") == []
