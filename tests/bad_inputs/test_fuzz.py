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


def test_tflite_with_a_non_utf8_tensor_name_is_a_clean_error(seeds, tmp_path):
    """Found by `make fuzz`: a flatbuffer whose signatures read but one tensor name is not
    UTF-8 made the interpreter raise UnicodeDecodeError from inspect and from loading."""
    from fuzzing import run_case

    from neuralbridge_cli.backends.onnx_to_tf import _tflite_interpreter

    seed = tmp_path / "seed.tflite"
    seed.write_bytes(seeds["tflite"])
    names = {d["name"].encode() for d in _tflite_interpreter(str(seed)).get_tensor_details()}
    names = sorted(n for n in names if n and seeds["tflite"].count(n) == 1)
    assert names
    for name in names:
        at = seeds["tflite"].index(name)
        data = seeds["tflite"][:at] + b"\xc9" + seeds["tflite"][at + 1:]
        tally = Tally()
        assert run_case("tflite", data, 1, tally) is None, tally.crashes[0][3]
