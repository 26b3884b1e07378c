import numpy as np
import pytest

from neuralbridge_cli.errors import InputSpecError
from neuralbridge_cli.specs import (TensorSpec, dummy_inputs, fixed_batch, normalize_dtype,
                                    parse_shape, reconcile, specs_from_flags)


@pytest.mark.parametrize("text, expected", [
    ("1,3,224,224", (None, (1, 3, 224, 224))),
    ("[1, 3, 224, 224]", (None, (1, 3, 224, 224))),
    ("x:1,3,32,32", ("x", (1, 3, 32, 32))),
    ("ids:?,16", ("ids", (None, 16))),
    ("-1,8", (None, (None, 8))),
])
def test_parse_shape(text, expected):
    assert parse_shape(text) == expected


@pytest.mark.parametrize("text", ["", "1,,3", "a,b", "1,3,0", "x:"])
def test_parse_shape_rejects_bad_syntax(text):
    with pytest.raises(InputSpecError):
        parse_shape(text)


def test_dtypes_and_aliases():
    assert normalize_dtype("torch.float32") == "float32"
    assert normalize_dtype("long") == "int64"
    with pytest.raises(InputSpecError, match="unknown dtype"):
        normalize_dtype("float13")


def test_specs_from_flags_applies_named_dtypes():
    specs = specs_from_flags(["ids:2,16", "mask:2,16"], ["ids:int64"])
    assert [(s.name, s.dtype) for s in specs] == [("ids", "int64"), ("mask", "float32")]


def test_reconcile_checks_rank_and_count():
    model = [TensorSpec("x", (None, 3, 224, 224))]
    merged = reconcile(model, [TensorSpec("input_0", (1, 3, 64, 64))])
    assert merged[0].name == "x" and merged[0].shape == (1, 3, 64, 64)
    with pytest.raises(InputSpecError, match="rank 4"):
        reconcile(model, [TensorSpec("input_0", (1, 3, 64))])
    with pytest.raises(InputSpecError, match="1 input"):
        reconcile(model, [TensorSpec("a", (1, 3)), TensorSpec("b", (1, 3))])


def test_dummy_inputs_are_seeded_and_typed():
    specs = [TensorSpec("x", (None, 3, 8, 8)), TensorSpec("ids", (None, 5), "int64", (0, 7))]
    a1, i1 = dummy_inputs(specs, batch=2, seed=0)
    a2, _ = dummy_inputs(specs, batch=2, seed=0)
    assert a1.shape == (2, 3, 8, 8) and a1.dtype == np.float32
    np.testing.assert_array_equal(a1, a2)
    assert i1.dtype == np.int64 and i1.min() >= 0 and i1.max() < 7


def test_fixed_batch_dynamic_unless_static():
    specs = [TensorSpec("x", (1, 3, 8, 8))]
    assert fixed_batch(specs, static=False)[0].shape == (None, 3, 8, 8)
    assert fixed_batch(specs, static=True)[0].shape == (1, 3, 8, 8)


def test_unnamed_shapes_take_the_forward_parameter_names():
    """forward(self, x, y) with --input-shape 1,4 --input-shape 1,6: inputs x and y, not
    input_0 and input_1; named shapes and count mismatches are left alone."""
    from neuralbridge_cli.pipeline import _name_unnamed

    unnamed = specs_from_flags(["1,4", "1,6"])
    assert [s.name for s in _name_unnamed(unnamed, None, ["x", "y"])] == ["x", "y"]
    assert [s.name for s in _name_unnamed(unnamed, None, ["x"])] == ["input_0", "input_1"]
    named = specs_from_flags(["a:1,4", "b:1,6"])
    assert [s.name for s in _name_unnamed(named, None, ["x", "y"])] == ["a", "b"]
