"""Readers that need torch: timm ``.pth`` / ``.bin`` state dicts.

Example:
    >>> from weights_tools.readers import read_torch_state_dict
    >>> # tensors = read_torch_state_dict("tf_efficientnetv2_b0.pth")
"""

from __future__ import annotations

import os

import numpy as np

from keras_effv2.porting.readers import CheckpointError, read_safetensors


def read_torch_state_dict(path) -> dict[str, np.ndarray]:
    """A torch checkpoint (``torch.load(weights_only=True)``) as float NumPy arrays."""
    import torch

    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"Cannot read torch checkpoint {os.fspath(path)!r}: {e}") from e
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"{os.fspath(path)!r} does not hold a state dict.")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def read_timm_checkpoint(path) -> dict[str, np.ndarray]:
    """timm weights from ``.safetensors`` (NumPy) or ``.pth``/``.bin`` (torch)."""
    if os.fspath(path).endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch_state_dict(path)
