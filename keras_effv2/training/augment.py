"""Training augmentation for one stage, built from Keras 3 preprocessing layers.

Keras layers used as they are: ``Resizing``, ``RandomFlip``, ``RandAugment``, ``MixUp`` (they
run inside ``tf.data`` on every backend); ``CutMix`` through :class:`PixelCutMix`, which fixes
its label weights. Hand-written, because Keras has no equivalent: automl's ``'ft'`` cutout (one
fixed ``2*(size//4)`` square, clipped at the border, filled with uniform noise), and the automl
rule that, with both mixup and cutmix on, half of the batch gets each.

RandAugment magnitude uses automl's scale (10 = the standard maximum); Keras' ``factor`` is
``magnitude / 100`` (so rotation spans about +-3.6 degrees per magnitude unit, automl's is 3).

Example:
    >>> from keras_effv2.training.augment import AugmentConfig, StageAugmenter
    >>> from keras_effv2.training.schedule import get_schedule
    >>> aug = StageAugmenter(get_schedule("paper-m").stage(1), AugmentConfig(flip=True))
"""

from __future__ import annotations

import dataclasses

import keras

from keras_effv2.training.schedule import StageSettings

MAGNITUDE_TO_FACTOR = 0.01


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What a recipe turns on besides the scheduled knobs.

    Args:
        flip: random horizontal flips.
        cutout: automl ``'ft'`` cutout (the paper's fine-tuning augmentation).
        randaug_layers: RandAugment ``num_ops`` (automl: 2).
    """

    flip: bool = True
    cutout: bool = False
    randaug_layers: int = 2


def cutout(image, seed=None):
    """automl ``'ft'`` cutout of one HxWxC float image in ``[0, 255]`` (a ``tf`` op)."""
    import tensorflow as tf

    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    pad = tf.minimum(h, w) // 4
    cy = tf.random.uniform([], 0, h, dtype=tf.int32, seed=seed)
    cx = tf.random.uniform([], 0, w, dtype=tf.int32, seed=seed)
    y0, y1 = tf.maximum(0, cy - pad), tf.minimum(h, cy + pad)
    x0, x1 = tf.maximum(0, cx - pad), tf.minimum(w, cx + pad)
    rows = tf.logical_and(tf.range(h) >= y0, tf.range(h) < y1)
    cols = tf.logical_and(tf.range(w) >= x0, tf.range(w) < x1)
    mask = tf.logical_and(rows[:, None], cols[None, :])[..., None]
    noise = tf.random.uniform(tf.shape(image), 0.0, 255.0, dtype=image.dtype, seed=seed)
    return tf.where(mask, noise, image)


@keras.saving.register_keras_serializable(package="keras_effv2")
class PixelCutMix(keras.layers.CutMix):
    """Keras ``CutMix`` whose label weights equal the pasted pixel fraction.

    Keras (3.15) draws the box with fractional corners, pastes the pixels whose integer
    coordinates fall inside it, but weights the labels by the box's fractional area: up to
    one row and one column off (6.6% of a 24x40 image). Here the weight of the pasted image's
    label is the fraction of pixels actually pasted, as in the CutMix paper (which adjusts
    lambda to the exact pixel ratio).

    Example:
        >>> layer = PixelCutMix(factor=1.0, seed=0, data_format="channels_last")
    """

    def transform_labels(self, labels, transformation, training=True):
        if training and transformation is not None:
            masks = self.backend.cast(transformation["batch_masks"], self.compute_dtype)
            pasted = self.backend.numpy.mean(masks, axis=(1, 2, 3))
            transformation = {**transformation, "mix_weight": 1.0 - pasted}
        return super().transform_labels(labels, transformation, training)


class StageAugmenter:
    """Per-image and per-batch transforms of one stage (call inside ``tf.data``).

    ``image_fn(image)`` resizes a ``[0, 255]`` HxWx3 image to the stage size and applies flip,
    RandAugment and cutout; ``batch_fn(images, onehot)`` applies mixup/cutmix.
    """

    def __init__(self, stage: StageSettings, config: AugmentConfig = AugmentConfig(),
                 seed: int | None = None):
        size = stage.image_size
        self.stage = stage
        self.config = config
        self.resize = keras.layers.Resizing(size, size, data_format="channels_last")
        self.flip = (keras.layers.RandomFlip("horizontal", seed=seed,
                                             data_format="channels_last")
                     if config.flip else None)
        m = stage.randaug_magnitude
        self.randaug = None
        if m is not None and m > 0:
            self.randaug = keras.layers.RandAugment(
                value_range=(0, 255), num_ops=config.randaug_layers,
                factor=min(1.0, m * MAGNITUDE_TO_FACTOR), seed=seed, data_format="channels_last")
        self.mixup = (keras.layers.MixUp(alpha=stage.mixup_alpha, seed=seed,
                                         data_format="channels_last")
                      if stage.mixup_alpha > 0 else None)
        self.cutmix = (PixelCutMix(factor=stage.cutmix_alpha, seed=seed,
                                   data_format="channels_last")
                       if stage.cutmix_alpha > 0 else None)
        self.seed = seed

    def resize_only(self, image):
        import tensorflow as tf

        return self.resize(tf.cast(image, tf.float32))

    def image_fn(self, image):
        x = self.resize_only(image)
        if self.flip is not None:
            x = self.flip(x)
        if self.randaug is not None:
            x = self.randaug(x)
        if self.config.cutout:
            x = cutout(x, self.seed)
        return x

    @property
    def mixes(self) -> bool:
        return self.mixup is not None or self.cutmix is not None

    def batch_fn(self, images, onehot):
        import tensorflow as tf

        if self.mixup is not None and self.cutmix is not None:  # automl: half and half
            half = tf.shape(images)[0] // 2
            a = self.mixup({"images": images[:half], "labels": onehot[:half]})
            b = self.cutmix({"images": images[half:], "labels": onehot[half:]})
            return (tf.concat([a["images"], b["images"]], 0),
                    tf.concat([a["labels"], b["labels"]], 0))
        layer = self.mixup or self.cutmix
        if layer is None:
            return images, onehot
        out = layer({"images": images, "labels": onehot})
        return out["images"], out["labels"]
