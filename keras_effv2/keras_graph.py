"""The one place keras_effv2 reads Keras' model internals: a functional model's graph, and the
epoch a resumed ``fit`` starts from. (The other private Keras code read is the torch
optimizer's, by the fused Adam update in ``fast/_torch_optim.py`` alone.)

Keras 3 has no public API for the execution order of a functional model's nodes, for the
nodes that feed a layer, or for a layer's nested sublayers. The fast paths and the
fine-tuning helpers need all three, so they call these functions, and only this module
touches the private attributes (``_nodes_by_depth``, ``_inbound_nodes``,
``_flatten_layers``). Resuming needs the one hook ``keras.callbacks.BackupAndRestore`` uses:
``Model._initial_epoch``, which ``fit`` reads after ``on_train_begin`` (``resume_epoch``).
Checked against Keras 3.8-3.15.

Example:
    >>> import keras_effv2
    >>> from keras_effv2.keras_graph import execution_order
    >>> model = keras_effv2.EfficientNetV2B0(weights=None)
    >>> [node.operation.name for node in execution_order(model)][:3]
    ['preprocessing', 'stem_conv', 'stem_bn']
"""

from __future__ import annotations

import keras


def is_functional(model) -> bool:
    """Whether ``model`` is a functional graph (``keras.Model(inputs, outputs)``) that
    :func:`execution_order` can walk; a ``Sequential`` or subclassed model is not."""
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")


def execution_order(model: keras.Model) -> list:
    """The functional model's computing nodes (inputs excluded) in the order Keras runs them.

    Each node has public ``operation``, ``input_tensors``, ``outputs`` and ``arguments``.
    """
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation and not node.is_input:
                nodes.append(node)
    return nodes


def node_operation(model: keras.Model, node):
    """The operation Keras calls for ``node`` (Keras' own mapping where it keeps one)."""
    return model._get_operation_for_node(node)


def inbound_tensors(layer: keras.layers.Layer) -> list:
    """Every symbolic tensor that feeds ``layer``, over all the nodes it was called at."""
    return [t for node in layer._inbound_nodes for t in node.input_tensors]


def nested_layers(layer: keras.layers.Layer) -> list:
    """Every sublayer of ``layer`` at any depth (the layer itself excluded)."""
    return list(layer._flatten_layers(include_self=False, recursive=True))


def resume_epoch(model: keras.Model) -> int | None:
    """The epoch a restoring callback told the current ``fit`` to start from (else ``None``)."""
    return getattr(model, "_initial_epoch", None)


def set_resume_epoch(model: keras.Model, epoch: int | None) -> None:
    """Make the ``fit`` now starting (``on_train_begin``) begin at ``epoch``; ``None`` clears it.

    This is how ``keras.callbacks.BackupAndRestore`` resumes a run.
    """
    model._initial_epoch = epoch
