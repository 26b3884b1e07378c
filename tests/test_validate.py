import numpy as np
import pytest

from neuralbridge_cli.errors import ValidationMismatch
from neuralbridge_cli.validate import check, compare_outputs


def test_pass_is_relative_to_scale():
    ref = np.array([[100.0, -50.0]], dtype=np.float32)
    close = ref + np.float32(0.05)  # 5e-4 of the scale
    report = compare_outputs([ref], [close], ["logits"], atol=1e-4, rtol=1e-3)
    assert report.passed
    assert report.outputs[0].max_rel_error == pytest.approx(5e-4, rel=1e-3)


def test_mismatch_raises_with_exit_code_3():
    ref = np.ones((2, 4), np.float32)
    report = compare_outputs([ref], [ref * 1.1], atol=1e-4, rtol=1e-3)
    assert not report.passed
    with pytest.raises(ValidationMismatch) as info:
        check(report, "out.onnx")
    assert info.value.exit_code == 3 and "out.onnx" in str(info.value)


def test_near_zero_outputs_are_flagged():
    ref = np.full((2, 3), 1e-15, np.float32)
    report = compare_outputs([ref], [ref * 3], atol=1e-4, rtol=1e-3)
    assert report.passed and "near zero" in report.outputs[0].note
    assert report.outputs[0].max_rel_error == pytest.approx(2.0)


def test_constant_outputs_are_flagged():
    """Keras MobileNetV2 with weights=None gives 0.001 everywhere: error 0 proves nothing."""
    ref = np.full((2, 1000), 0.001, np.float32)
    report = compare_outputs([ref], [ref.copy()], atol=1e-4, rtol=1e-3)
    assert report.passed and "constant (0.001 everywhere)" in report.outputs[0].note
    varied = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    assert compare_outputs([varied], [varied], atol=1e-4, rtol=1e-3).outputs[0].note == ""


def test_nan_in_the_same_places_is_agreement():
    """A Log model on negative inputs: NaN in both at the same positions (was exit 3 with
    'max abs error 0'); NaN in one only still fails."""
    ref = np.array([[np.nan, 1.0, 2.0], [0.5, np.nan, -np.inf]], np.float32)
    report = compare_outputs([ref], [ref + 1e-7], atol=1e-4, rtol=1e-3)
    assert report.passed and "3 NaN/inf values, the same in both" in report.outputs[0].note
    other = ref.copy()
    other[0, 0] = 0.0
    assert not compare_outputs([ref], [other], atol=1e-4, rtol=1e-3).passed


def test_shape_count_and_nan_failures():
    ref = np.ones((2, 3), np.float32)
    assert not compare_outputs([ref], [np.ones((2, 4))], atol=1, rtol=1).passed
    assert not compare_outputs([ref, ref], [ref], atol=1, rtol=1).passed
    assert not compare_outputs([ref], [ref * np.nan], atol=1, rtol=1).passed


def test_integer_outputs_compare_exactly():
    ref = np.array([1, 2, 3])
    assert compare_outputs([ref], [ref.copy()], atol=0, rtol=0).passed
    assert not compare_outputs([ref], [ref + 1], atol=10, rtol=10).passed
