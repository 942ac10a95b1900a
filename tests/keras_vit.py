"""A small Keras vision transformer converted by tf2onnx, with its oracle; run as a script in its own
process (TensorFlow is kept out of the pytest process, which holds torch).

``python tests/keras_vit.py OUT_DIR`` writes ``OUT_DIR/vit_opset15.onnx`` (tf2onnx's default opset),
``OUT_DIR/vit_opset17.onnx`` and ``OUT_DIR/vit_opset13.onnx`` (input ``image`` NHWC [N, 16, 16, 3],
output ``softmax``; at 13 the attention's Reshape targets are products of the batch size, which ONNX
shape inference does not follow before Reshape-14) and
``OUT_DIR/vit_reference.npz`` with ``x`` (3 samples), ``classes`` and ``relevance``: input × gradient of
the pre-softmax logit in TensorFlow on a twin (same weights) whose gates are held with stop_gradient —
the attention weights, the GELU gate and every LayerNormalization's mean and variance (shared/RLRP.md,
"An exact oracle").

The model: 4x4 patches by a strided Conv2D, a learned position embedding, one pre-norm block
(LayerNormalization → keras.layers.MultiHeadAttention → skip; LayerNormalization → Dense-GELU(tanh)-Dense
→ skip), LayerNormalization, token average, Dense logits, Softmax. tf2onnx writes the LayerNorms out in
arithmetic (Reciprocal of Sqrt) at every opset and the attention as MatMuls around a Softmax.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_model import save_reference  # noqa: E402  (this script's folder is on sys.path)


def build(detach: bool):
    import keras
    import numpy as np
    from keras import layers, ops

    hold = ops.stop_gradient if detach else (lambda t: t)
    k = np.float32(np.sqrt(2 / np.pi))

    class Position(layers.Layer):
        def build(self, shape):
            self.position = self.add_weight(name="position", shape=(1, *shape[1:]), initializer="random_normal")

        def call(self, x):
            return x + self.position

    class HeldLayerNorm(layers.LayerNormalization):
        def call(self, x):
            mean, variance = ops.moments(x, axes=[-1], keepdims=True)
            return (x - hold(mean)) * hold(ops.rsqrt(variance + self.epsilon)) * self.gamma + self.beta

    class HeldAttention(layers.MultiHeadAttention):
        def _compute_attention(self, query, key, value, attention_mask=None, training=None, *args, **kwargs):
            scores = ops.einsum("BTNH,BSNH->BNTS", query, key) * ops.cast(self._inverse_sqrt_key_dim, query.dtype)
            return ops.einsum("BNTS,BSNH->BTNH", hold(ops.softmax(scores, axis=-1)), value), None

    def gelu(x):
        return x * hold(0.5 * (1.0 + ops.tanh(k * (x + 0.044715 * x**3))))

    norm = HeldLayerNorm if detach else layers.LayerNormalization
    attention = HeldAttention if detach else layers.MultiHeadAttention
    image = keras.Input((16, 16, 3), name="image")
    x = Position()(layers.Reshape((16, 16))(layers.Conv2D(16, 4, strides=4)(image)))
    y = norm(epsilon=1e-6)(x)
    x = layers.Add()([x, attention(num_heads=2, key_dim=8)(y, y)])
    y = layers.Dense(16)(layers.Activation(gelu)(layers.Dense(32)(norm(epsilon=1e-6)(x))))
    x = layers.GlobalAveragePooling1D()(norm(epsilon=1e-6)(layers.Add()([x, y])))
    logits = layers.Dense(10)(x)
    return keras.Model(image, layers.Softmax(name="softmax")(logits)), keras.Model(image, logits)


def main(out_dir: str) -> None:
    import keras
    import numpy as np
    import onnx
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(0)
    model, _ = build(detach=False)
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape) if "gamma" in w.path else
                       rng.normal(0, 0.1, w.shape) if "beta" in w.path else w.numpy() for w in model.weights])
    _, twin = build(detach=True)
    twin.set_weights(model.get_weights())

    spec = (tf.TensorSpec((None, 16, 16, 3), tf.float32, name="image"),)
    for opset in (13, 15, 17):
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        onnx.save(proto, os.path.join(out_dir, f"vit_opset{opset}.onnx"))

    save_reference(twin, rng.standard_normal((3, 16, 16, 3)).astype(np.float32),
                   os.path.join(out_dir, "vit_reference.npz"))


if __name__ == "__main__":
    main(sys.argv[1])
