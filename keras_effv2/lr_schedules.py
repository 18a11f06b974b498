"""``WarmupCosineDecay``: Keras' ``CosineDecay`` with warmup, without a conditional.

Keras' ``CosineDecay(..., warmup_steps=w)`` picks the warmup or the cosine branch with
``ops.cond``, and Keras' optimizers evaluate ``learning_rate`` once per variable when they
apply weight decay (``BaseOptimizer._apply_weight_decay``, and TensorFlow's distributed
version). On TensorFlow every evaluation traces a ``tf.cond`` with two branch graphs: B0's 243
weights made AdamW's train step take 21 s of its 64 s trace in conds alone (docs/training.md,
"The first step of a stage"). This class computes both branches and selects with
``ops.where``: the same values as ``CosineDecay`` (tested against it at every step), the same
config, and a few elementwise ops per evaluation.

Example:
    >>> import keras
    >>> from keras_effv2.lr_schedules import WarmupCosineDecay
    >>> lr = WarmupCosineDecay(0.0, 1000, warmup_target=2e-3, warmup_steps=40)
    >>> opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=1e-4)
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_effv2")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """``keras.optimizers.schedules.CosineDecay`` (same arguments and values), branch-free."""

    def __call__(self, step):
        if self.warmup_target is None:
            return super().__call__(step)  # no warmup: Keras has no conditional there
        with keras.name_scope(self.name):
            initial = ops.convert_to_tensor(self.initial_learning_rate)
            dtype = initial.dtype
            decay_steps = ops.cast(self.decay_steps, dtype)
            target = ops.cast(self.warmup_target, dtype)
            warmup_steps = ops.cast(self.warmup_steps, dtype)
            step = ops.minimum(ops.cast(step, dtype), decay_steps + warmup_steps)
            # Keras' two branches, written out with public ops only (same operation order).
            warm = (target - initial) * (step / warmup_steps) + initial
            fraction = ops.divide(step - warmup_steps, decay_steps)
            cosine = 0.5 * (1.0 + ops.cos(ops.multiply(ops.array(math.pi, dtype=dtype), fraction)))
            decayed = ops.multiply(target, (1 - self.alpha) * cosine + self.alpha)
            return ops.where(step < warmup_steps, warm, decayed)
