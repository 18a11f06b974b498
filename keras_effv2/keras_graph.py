"""The one place keras_effv2 reads Keras' model internals: a functional model's graph, and the
epoch a resumed ``fit`` starts from. (The other private Keras code read is the torch
optimizer's, by the fused Adam update in ``fast/_torch_optim.py`` alone.)

Keras 3 has no public API for the execution order of a functional model's nodes, for the
nodes that feed a layer, or for a layer's nested sublayers. The fast paths and the
fine-tuning helpers need all three, so they call these functions, and only this module
touches the private attributes (``_nodes_by_depth``, ``_inbound_nodes``,
``_flatten_layers``). Resuming needs the one hook ``keras.callbacks.BackupAndRestore`` uses:
``Model._initial_epoch``, which ``fit`` reads after ``on_train_begin`` (``resume_epoch``).
Checked against Keras 3.8-3.15 (``keras_effv2.compat.KERAS_RANGE``).

The graph attributes sit behind one feature check, :func:`graph_internals`, probed once on a
two-layer model. Without them: :func:`inbound_tensors` and :func:`nested_layers` take public
paths (``layer.input``; a walk of the layer's attributes), ``is_functional`` is False (so
``optimize_for_training`` returns the model itself and ``make_predictor`` on torch runs
``predict_on_batch``: the plain model is the public path), and ``progressive_fit`` passes the
resume epoch to ``fit`` itself.

Example:
    >>> import keras_effv2
    >>> from keras_effv2.keras_graph import execution_order
    >>> model = keras_effv2.EfficientNetV2B0(weights=None)
    >>> [node.operation.name for node in execution_order(model)][:3]
    ['preprocessing', 'stem_conv', 'stem_bn']
"""

from __future__ import annotations

import functools

import keras

# The private Keras attributes read here, by role (one table: a Keras release that renames one
# shows in graph_internals(); tests/test_guards.py simulates that by renaming an entry).
PRIVATE_ATTRS = {"nodes_by_depth": "_nodes_by_depth",
                 "operation_for_node": "_get_operation_for_node",
                 "inbound_nodes": "_inbound_nodes", "flatten_layers": "_flatten_layers"}


def _private(obj, role):
    return getattr(obj, PRIVATE_ATTRS[role])


@functools.cache
def graph_internals() -> bool:
    """Whether this Keras has the private graph attributes read here (the one feature check,
    probed on a one-layer model)."""
    try:
        inp = keras.Input((2,))
        dense = keras.layers.Dense(1)
        model = keras.Model(inp, dense(inp))
        by_depth = _private(model, "nodes_by_depth")
        nodes = [n for d in sorted(by_depth) for n in by_depth[d]]
        return (any(_private(model, "operation_for_node")(n) is dense for n in nodes)
                and _private(dense, "inbound_nodes")[0].input_tensors[0] is inp
                and hasattr(nodes[0], "arguments")
                and list(_private(model, "flatten_layers")(include_self=False,
                                                            recursive=True)) != [])
    except (AttributeError, TypeError, IndexError, KeyError):
        return False


def is_functional(model) -> bool:
    """Whether ``model`` is a functional graph (``keras.Model(inputs, outputs)``) that
    :func:`execution_order` can walk; a ``Sequential`` or subclassed model is not."""
    return (isinstance(model, keras.Model) and graph_internals()
            and hasattr(model, PRIVATE_ATTRS["nodes_by_depth"]))


def execution_order(model: keras.Model) -> list:
    """The functional model's computing nodes (inputs excluded) in the order Keras runs them.

    Each node has public ``operation``, ``input_tensors``, ``outputs`` and ``arguments``.
    """
    nodes = []
    by_depth = _private(model, "nodes_by_depth")
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation and not node.is_input:
                nodes.append(node)
    return nodes


def node_operation(model: keras.Model, node):
    """The operation Keras calls for ``node`` (Keras' own mapping where it keeps one)."""
    return _private(model, "operation_for_node")(node)


def inbound_tensors(layer: keras.layers.Layer) -> list:
    """Every symbolic tensor that feeds ``layer``, over all the nodes it was called at
    (without the graph internals: its public ``input``, the first call's)."""
    if not graph_internals():
        return list(keras.tree.flatten(layer.input))
    return [t for node in _private(layer, "inbound_nodes") for t in node.input_tensors]


def nested_layers(layer: keras.layers.Layer) -> list:
    """Every sublayer of ``layer`` at any depth (the layer itself excluded)."""
    if graph_internals():
        return list(_private(layer, "flatten_layers")(include_self=False, recursive=True))
    found, stack = {}, [layer]  # public path: the layers held in attributes, depth first
    while stack:
        for value in reversed(list(vars(stack.pop()).values())):
            for item in keras.tree.flatten(value) if isinstance(value, (list, tuple, dict)) \
                    else [value]:
                if isinstance(item, keras.layers.Layer) and item is not layer \
                        and id(item) not in found:
                    found[id(item)] = item
                    stack.append(item)
    return list(found.values())


def resume_epoch(model: keras.Model) -> int | None:
    """The epoch a restoring callback told the current ``fit`` to start from (else ``None``)."""
    return getattr(model, "_initial_epoch", None)


def set_resume_epoch(model: keras.Model, epoch: int | None) -> None:
    """Make the ``fit`` now starting (``on_train_begin``) begin at ``epoch``; ``None`` clears it.

    This is how ``keras.callbacks.BackupAndRestore`` resumes a run.
    """
    model._initial_epoch = epoch
