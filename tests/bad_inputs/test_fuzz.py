"""Hypothesis mutation fuzzing in CI: a few hundred mutated files, zero crashes.

`make fuzz` runs 10,000 (scripts/fuzz.py).
"""
from __future__ import annotations

import pytest

from fuzzing import Tally, build_test, make_seeds

CI_EXAMPLES = 300
# convert every n-th file that inspects fine: ONNX -> ONNX is cheap, tf2onnx runs are not
CI_CONVERT_EVERY = {"onnx": 1, "keras": 8, "tflite": 8}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return make_seeds(tmp_path_factory.mktemp("seeds"))


def test_mutated_models_never_crash(seeds):
    tally = Tally()
    build_test(seeds, tally, CI_EXAMPLES, CI_CONVERT_EVERY)()
    print(tally.summary())
    assert tally.crashes == []
    assert tally.cases >= CI_EXAMPLES
