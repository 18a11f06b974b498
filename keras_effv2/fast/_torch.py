"""The torch-backend half of the fast inference path (its training half: ``_torch_train.py``).

``predictor(model)`` returns ``f(x) -> np.ndarray`` that runs a functional model under
``torch.inference_mode()``, node by node in Keras' own order, and drops each intermediate
tensor right after its last consumer. Keras' ``Functional`` call keeps every intermediate
tensor of the forward pass in one dict until the output is returned, which in eager torch
holds all activations at once (keras.applications B0 at 224, batch 32: ~2.9 GB peak RSS
against timm's ~1.2 GB).

The layers of a BN-folded graph (:func:`keras_effv2.fast.optimize_for_inference`) are
lowered once to direct ``torch.nn.functional`` calls on weights prepared in torch's layout:
``conv2d`` with the bias inside the call (Keras' torch backend re-permutes the kernel and
adds the bias as a separate op on every call), in-place ``silu``/``sigmoid`` where the input
has no other consumer, and the activations in channels_last memory (what oneDNN and cuDNN
run fastest; the logical layout stays NCHW). Layers without a lowering run through Keras.
With ``compile=True`` the plain Keras call goes through ``torch.compile`` instead (slow first
call; measure).

Example:
    >>> from keras_effv2.fast._torch import predictor  # KERAS_BACKEND=torch only
"""

from __future__ import annotations

import keras
import numpy as np
import torch
import torch.nn.functional as F

from keras_effv2.keras_graph import execution_order, node_operation


def _plan(model):
    """Nodes in Keras' execution order, and after which step each tensor can be dropped."""
    steps = execution_order(model)
    keep = {id(t) for t in model.outputs} | {id(t) for t in model.inputs}
    last_use = {}
    for i, node in enumerate(steps):
        for t in node.input_tensors:
            last_use[id(t)] = i
    drops = [[] for _ in steps]
    for tid, i in last_use.items():
        if tid not in keep:
            drops[i].append(tid)
    plan, fresh = [], set()
    for i, node in enumerate(steps):
        # An input may be overwritten in place when a lowered op made it (its own storage,
        # no view of anything else), this node is its last use (every other consumer already
        # ran), it is no model output, and it has the output's shape.
        ids = [id(t) for t in node.input_tensors]
        out_shape = tuple(node.outputs[0].shape)
        inplace = [t in fresh and last_use[t] == i and t not in keep and ids.count(t) == 1
                   and tuple(x.shape) == out_shape
                   for t, x in zip(ids, node.input_tensors, strict=True)]
        op = node_operation(model, node)
        lowered = _lower(op, node, inplace)
        if lowered is not None:
            fresh.update(id(t) for t in node.outputs)
        plan.append((lowered or op, node, drops[i]))
    return plan


def _weight(variable, dtype):
    return variable.value.detach().to(dtype)


def _same_pads(size, k, s):
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def torch_kernel(layer, kernel):
    """``(weight, groups)``: a Keras conv ``layer``'s ``kernel`` (HWIO, depthwise
    ``(kh, kw, in, mult)``) as torch's OIHW ``conv2d`` weight (a view, no copy)."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (kh, kw, in, mult) -> (in*mult, 1, ..)
        kh, kw, cin, mult = kernel.shape
        return kernel.reshape(kh, kw, cin * mult, 1).permute(2, 3, 0, 1), cin
    return kernel.permute(3, 2, 0, 1), layer.groups


def conv2d(x, weight, bias, strides, groups, same):
    """``F.conv2d`` on NCHW ``x`` with Keras' ``"same"`` padding (``same=True``, padded
    asymmetrically like TF when the total is odd) or ``"valid"``."""
    if not same:
        return F.conv2d(x, weight, bias, strides, 0, 1, groups)
    (kh, kw), (sh, sw) = weight.shape[2:], strides
    top, bottom = _same_pads(x.shape[2], kh, sh)
    left, right = _same_pads(x.shape[3], kw, sw)
    if top == bottom and left == right:
        return F.conv2d(x, weight, bias, strides, (top, left), 1, groups)
    x = F.pad(x, (left, right, top, bottom))
    return F.conv2d(x, weight, bias, strides, 0, 1, groups)


def _lower_conv(layer):
    """``conv2d(x, w, b)`` with the kernel in OIHW and Keras' "same" padding."""
    dtype = getattr(torch, layer.compute_dtype)
    weight, groups = torch_kernel(layer, _weight(layer.kernel, dtype))
    weight = weight.contiguous(memory_format=torch.channels_last)
    bias = _weight(layer.bias, dtype).contiguous() if layer.use_bias else None
    strides, same = tuple(layer.strides), layer.padding == "same"

    def conv(x):
        if x.dtype != dtype:
            x = x.to(dtype)
        return conv2d(x, weight, bias, strides, groups, same)
    return conv


def _lower_activation(layer, inplace):
    name = getattr(layer.activation, "__name__", "")
    if name in ("silu", "swish", "plain_silu"):
        return (lambda x: F.silu(x, inplace=True)) if inplace else F.silu
    if name == "sigmoid":
        return torch.sigmoid_ if inplace else torch.sigmoid
    return None


def _lower_dense(layer):
    dtype = getattr(torch, layer.compute_dtype)
    weight = _weight(layer.kernel, dtype).t().contiguous()
    bias = _weight(layer.bias, dtype) if layer.use_bias else None
    act = getattr(layer.activation, "__name__", "")
    if act not in ("linear", "softmax"):
        return None

    def dense(x):
        y = F.linear(x.to(dtype), weight, bias)
        return torch.softmax(y, dim=-1) if act == "softmax" else y
    return dense


def _lower_binary(torch_op, inplace):
    """``torch_op(a, b)``, written into ``a`` or ``b`` when ``inplace`` allows it."""
    method = torch_op.__name__ + "_"
    if inplace[0]:
        return lambda xs: getattr(xs[0], method)(xs[1])
    if inplace[1]:
        return lambda xs: getattr(xs[1], method)(xs[0])
    return lambda xs: torch_op(*xs)


def _lower(layer, node, inplace):
    """A direct torch function for a channels_first fused-graph layer, or None (use Keras)."""
    if getattr(layer, "data_format", "channels_first") != "channels_first":
        return None
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and \
            tuple(layer.dilation_rate) == (1, 1) and len(layer.kernel.shape) == 4:
        return _lower_conv(layer)
    if isinstance(layer, keras.layers.Activation):
        return _lower_activation(layer, inplace[0])
    binary = {keras.layers.Multiply: torch.mul, keras.layers.Add: torch.add}.get(type(layer))
    if binary is not None and len(node.input_tensors) == 2:
        return _lower_binary(binary, inplace)
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        keep = layer.keepdims
        return lambda x: x.mean((2, 3), keepdim=keep)
    if isinstance(layer, keras.layers.Dense) and len(node.input_tensors[0].shape) == 2:
        return _lower_dense(layer)
    if isinstance(layer, keras.layers.Permute) and layer.dims == (3, 1, 2):  # NHWC -> NCHW
        return lambda x: x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    return None


def _run(model, plan, x):
    values = {id(model.inputs[0]): x}
    for op, node, drop in plan:
        args, kwargs = node.arguments.fill_in(values)
        for ref, value in zip(node.outputs, [op(*args, **kwargs)], strict=False):
            values[id(ref)] = value
        for tid in drop:
            del values[tid]
    return values[id(model.outputs[0])]


def predictor(model, compile: bool = False):
    """``f(images) -> np.ndarray`` for a one-input, one-output functional ``model``."""
    model.eval()
    device = next((v.value.device for v in model.weights), torch.device("cpu"))
    if compile:
        compiled = torch.compile(lambda t: model(t, training=False), dynamic=False)
        run = compiled
    else:
        plan = _plan(model)

        def run(t):
            return _run(model, plan, t)

    def predict(x) -> np.ndarray:
        with torch.inference_mode():
            t = torch.as_tensor(np.asarray(x), device=device)
            return run(t).detach().float().cpu().numpy()

    return predict
