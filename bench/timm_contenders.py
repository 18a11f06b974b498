"""timm contenders for ``bench.suite`` (torch backend only; imports torch and timm).

Example:
    >>> from bench.timm_contenders import timm_step  # KERAS_BACKEND=torch
"""

from __future__ import annotations

import numpy as np
import torch

TIMM_NAMES = {"b0": "tf_efficientnetv2_b0", "b1": "tf_efficientnetv2_b1",
              "s": "tf_efficientnetv2_s", "m": "tf_efficientnetv2_m"}


def timm_step(variant: str, mode: str, x_nhwc: np.ndarray, y: np.ndarray,
              precision: str = "float32", compile: bool = False):
    """One timm step as a closure: channels_last eager, ``inference_mode`` for forward."""
    import timm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = timm.create_model(TIMM_NAMES[variant], pretrained=False, num_classes=1000)
    model = model.to(device).to(memory_format=torch.channels_last)
    x = torch.as_tensor(x_nhwc, device=device).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    target = torch.as_tensor(y, dtype=torch.long, device=device)
    amp = precision != "float32"
    autocast = dict(device_type=device.type, dtype=torch.float16 if device.type == "cuda"
                    else torch.bfloat16, enabled=amp)
    fn = torch.compile(model) if compile else model
    if mode == "forward":
        model.eval()

        def step():
            with torch.inference_mode(), torch.autocast(**autocast):
                return fn(x).float().cpu().numpy()
        return step
    model.train()
    opt = torch.optim.Adam(model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            loss = torch.nn.functional.cross_entropy(fn(x).float(), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.item()
    return step
