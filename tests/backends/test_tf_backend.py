"""TensorFlow backend (neuralbridge_cli.backends.tf_backend): the tf2onnx side, on real
Keras models and the real tf2onnx."""
from __future__ import annotations

import gc

import numpy as np

import models
from neuralbridge_cli.backends import tf_backend


def test_tf2onnx_passes_collect_the_graph_copies_they_drop():
    """tf2onnx deep-copies the graph before each optimizer pass; the dropped copies are cyclic
    garbage that large weights do not get collected for (VGG16 reached 21 GB). Inside the
    context every pass starts with a collection, and tf2onnx's table is restored after."""
    from neuralbridge_cli import lazy

    tf = lazy.tensorflow()
    keras = lazy.require("keras")
    tf2onnx = lazy.require("tf2onnx")
    from tf2onnx import optimizer

    original = dict(optimizer._optimizers)
    collections = []
    gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info["generation"]))
    try:
        keras.utils.set_random_seed(0)
        x = keras.Input((32,), name="x")
        model = keras.Model(x, keras.layers.Dense(4)(keras.layers.Dense(64, activation="relu")(x)))
        spec = [tf.TensorSpec((None, 32), tf.float32, name="x")]
        function = tf.function(lambda v: model(v, training=False), input_signature=spec)
        with tf_backend._tf2onnx_collecting_garbage():
            assert set(optimizer._optimizers) == set(original)
            assert all(f is not original[k] for k, f in optimizer._optimizers.items())
            proto = tf2onnx.convert.from_function(function, input_signature=spec, opset=17)[0]
    finally:
        gc.callbacks.pop()
    assert dict(optimizer._optimizers) == original
    assert collections.count(2) >= len(original)  # full collections, one per pass at least
    sample = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: sample})[0]
    assert models.rel_error(got, np.asarray(model(sample))) < 1e-5
