"""A small Keras classifier converted by tf2onnx, with its oracle; run as a script in its own process
(TensorFlow is kept out of the pytest process, which holds torch).

``python tests/keras_model.py OUT_DIR`` writes ``OUT_DIR/keras.onnx`` (opset 17; input ``image`` NHWC
[N, 32, 32, 3], output ``softmax``), ``OUT_DIR/keras_opset13.onnx`` (the same model at opset 13) and ``OUT_DIR/reference.npz`` with ``x`` (3 samples), ``classes``
(the arg-max) and ``relevance``: input × gradient of the pre-softmax logit in TensorFlow, computed on a
twin of the model (same weights) whose gates are wrapped in ``stop_gradient`` (shared/RLRP.md, "An exact
oracle").

The model: Conv-BN-swish, depthwise Conv-ReLU6, sigmoid squeeze-excitation (Multiply), Conv-hard_swish
(Keras writes x·relu6(x+3)/6), max pool, Flatten, Dense-GELU (tanh form; Keras' exact GELU uses Erfc,
which tf2onnx cannot convert), Dense logits, Softmax.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(detach: bool):
    import keras
    import numpy as np

    layers = keras.layers
    hold = keras.ops.stop_gradient if detach else (lambda t: t)
    k = np.float32(np.sqrt(2 / np.pi))

    def gated(gate):
        return lambda x: x * hold(gate(x))

    swish = "swish" if not detach else gated(keras.ops.sigmoid)
    hard_swish = "hard_swish" if not detach else gated(keras.ops.hard_sigmoid)
    gelu = gated(lambda x: 0.5 * (1.0 + keras.ops.tanh(k * (x + 0.044715 * x**3))))
    if not detach:
        gelu = lambda x: keras.activations.gelu(x, approximate=True)  # noqa: E731

    image = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(image)
    x = layers.BatchNormalization()(x)
    x = layers.Activation(swish)(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.ReLU(6.0)(x)
    se = layers.GlobalAveragePooling2D(keepdims=True)(x)
    se = layers.Conv2D(4, 1, activation="relu")(se)
    se = layers.Conv2D(8, 1, activation="sigmoid")(se)
    if detach:
        se = layers.Lambda(keras.ops.stop_gradient)(se)
    x = layers.Multiply()([x, se])
    x = layers.Conv2D(12, 3, padding="same")(x)
    x = layers.Activation(hard_swish)(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Activation(gelu)(layers.Dense(16)(x))
    logits = layers.Dense(10)(x)
    return keras.Model(image, layers.Softmax()(logits)), keras.Model(image, logits)


def main(out_dir: str) -> None:
    import keras
    import numpy as np
    import onnx
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(0)
    model, _ = build(detach=False)
    rng = np.random.default_rng(0)
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    _, twin = build(detach=True)
    twin.set_weights(model.get_weights())

    spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="image"),)
    for opset, name in ((17, "keras.onnx"), (13, "keras_opset13.onnx")):
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        onnx.save(proto, os.path.join(out_dir, name))

    save_reference(twin, rng.standard_normal((3, 32, 32, 3)).astype(np.float32), os.path.join(out_dir, "reference.npz"))


def save_reference(twin, x, path: str) -> None:
    """Save ``x``, the arg-max classes of ``twin`` and the relevance: input × gradient of their logits."""
    import numpy as np
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = twin(x)
        classes = tf.argmax(logits, axis=1)
        selected = tf.reduce_sum(tf.gather(logits, classes, batch_dims=1))
    relevance = (x * tape.gradient(selected, x)).numpy()
    np.savez(path, x=x.numpy(), classes=classes.numpy(), relevance=relevance)


if __name__ == "__main__":
    main(sys.argv[1])
