"""TensorFlow: one traced train step for every progressive stage.

A traced TensorFlow train step bakes in two things a progressive stage changes:

- the dropout rate: Keras' ``Dropout`` passes ``self.rate``, a Python float, to the op. While
  installed, :class:`VariableDropoutRate` makes the layer read it from a ``tf.Variable``
  instead (the same op and seed, so the same masks as ``Dropout.call``; tested);
- the image size: ``tf.function`` traces for the dataset's element spec. :func:`any_size`
  leaves height and width out of the spec, so the step is traced once for every size (for a
  model that takes any size, :func:`takes_any_size`).

Together they save a trace and graph optimization of 20-35 s per stage for B0 on a 2-core CPU,
with the same step time (docs/training.md, "One traced step for every stage on TensorFlow").
Only TensorFlow and only outside a ``tf.distribute`` strategy (:func:`available`): JAX compiles
a new step for each image size anyway, torch runs eagerly, and a strategy would mirror the
variable. Elsewhere ``progressive_fit`` rebuilds the train function when the rate changes.
The driver sets ``layer.rate`` and then :meth:`~VariableDropoutRate.sync`, so ``get_config``
and saving see the rate in effect; :meth:`~VariableDropoutRate.remove` gives the layer its own
``call`` back.

Example:
    >>> layer = model.get_layer("head_dropout")  # doctest: +SKIP
    >>> holder = VariableDropoutRate(layer)  # doctest: +SKIP
    >>> layer.rate = 0.3; holder.sync()  # the next step drops 30 %, no retrace  # doctest: +SKIP
    >>> model.fit(any_size(dataset))  # doctest: +SKIP
    >>> holder.remove()  # doctest: +SKIP
"""

from __future__ import annotations

import keras


def available(model: keras.Model) -> bool:
    """Whether ``model`` trains through a traced TensorFlow step outside a ``tf.distribute``
    strategy: where a variable rate and a shape-generic spec let one step serve every stage."""
    if keras.backend.backend() != "tensorflow" or model.run_eagerly:
        return False
    import tensorflow as tf

    return not tf.distribute.has_strategy()


def takes_any_size(model: keras.Model) -> bool:
    """Whether ``model``'s (first) image input has unknown height and width."""
    inputs = getattr(model, "inputs", None)  # a functional model's; None for a subclass
    if not inputs:
        return False
    shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        return False
    spatial = shape[1:3] if keras.config.image_data_format() == "channels_last" else shape[2:4]
    return all(d is None for d in spatial)


def any_size(dataset):
    """``dataset`` of ``(images, ...)`` batches with height and width left out of its spec;
    anything else (not a ``tf.data`` dataset, not 4-D images first) is returned as it is."""
    import tensorflow as tf

    spec = getattr(dataset, "element_spec", None)
    if not (isinstance(spec, tuple) and spec and isinstance(spec[0], tf.TensorSpec)
            and spec[0].shape.rank == 4):
        return dataset
    first = 1 if keras.config.image_data_format() == "channels_last" else 2

    def loosen(images, *rest):
        shape = images.shape.as_list()
        shape[first:first + 2] = [None, None]
        return (tf.compat.v1.placeholder_with_default(images, shape), *rest)

    return dataset.map(loosen)


class VariableDropoutRate:
    """Hold a ``keras.layers.Dropout``'s rate in a ``tf.Variable`` (see the module doc)."""

    def __init__(self, layer: keras.layers.Dropout):
        import tensorflow as tf

        if not isinstance(layer, keras.layers.Dropout):
            raise TypeError(f"layer {layer.name!r} is a {type(layer).__name__}, not a "
                            "keras.layers.Dropout.")
        if not hasattr(layer, "seed_generator"):  # Keras makes none for a layer built at 0
            raise ValueError(f"dropout layer {layer.name!r} was built with rate 0 and has no "
                             "seed generator; build it with a rate > 0.")
        self.layer = layer
        self.variable = tf.Variable(float(layer.rate), trainable=False, dtype=tf.float32,
                                    name=f"{layer.name}_rate")

        def call(inputs, training=False):
            if not training:
                return inputs
            # Keras' TensorFlow dropout, with the rate a tensor: the same seed, the same op,
            # so the same mask as Dropout.call at the same rate (tested).
            seed = layer.seed_generator.next()
            if seed.dtype != tf.int32:
                seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
            noise_shape = None
            if layer.noise_shape is not None:
                dynamic = tf.shape(inputs)
                noise_shape = [dynamic[i] if d is None else d
                               for i, d in enumerate(layer.noise_shape)]
            return tf.nn.experimental.stateless_dropout(
                inputs, rate=tf.cast(self.variable, inputs.dtype), noise_shape=noise_shape,
                seed=seed)

        layer.call = call  # the instance attribute shadows Dropout.call

    def sync(self) -> None:
        """The next steps use ``layer.rate`` (set it first, e.g. with ``set_dropout_rate``)."""
        self.variable.assign(float(self.layer.rate))

    def remove(self) -> None:
        """Give the layer back its own ``Dropout.call`` (a new trace reads ``layer.rate``)."""
        if "call" in vars(self.layer):
            del self.layer.call
