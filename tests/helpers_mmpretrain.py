"""mmpretrain's own EfficientNetV2 models as test fixtures: random, well-conditioned weights,
checkpoints written with mmengine's ``save_checkpoint`` (plain and as a training snapshot).

As :mod:`helpers_timm` does for timm: BN affines randomised (small scales on each block's last
BN, so the identity path dominates where there is one), BN running statistics calibrated on
random images (so every BN really normalises), the classifier scaled to logits of std ~8
(max ~10-20; 32 calibration images keep the 2x2 final maps' statistics representative).
mmpretrain imports torchvision when it builds a model: import this module's users only where
torchvision may be imported (before TensorFlow ran ops; tests/conftest.py imports it first).
"""

from __future__ import annotations

import os

import numpy as np

MM_NAME = "efficientnetv2-{}_3rdparty_in1k"
LOGIT_STD = 8.0


def make_mmpretrain_model(variant: str, num_classes: int = 1000, image_size: int = 64,
                          seed: int = 0):
    """``mmpretrain.get_model("efficientnetv2-<v>_3rdparty_in1k")`` in eval mode, weights
    random and well-conditioned (see the module docstring)."""
    import mmpretrain
    import torch

    torch.manual_seed(seed)
    model = mmpretrain.get_model(MM_NAME.format(variant), pretrained=False,
                                 head=dict(num_classes=num_classes))
    gen = torch.Generator().manual_seed(seed + 1)
    block_ends = set()
    for layer in list(model.backbone.layers)[1:-1]:
        for block in layer:
            bns = [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            block_ends.add(id(bns[-1]))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                low, high = (0.1, 0.4) if id(module) in block_ends else (0.6, 1.4)
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen)
                                    * (high - low) + low)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
                module.reset_running_stats()
                module.momentum = None  # running stats = the calibration batch's statistics
            elif isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
        model.train()
        model.extract_feat(torch.randn(32, 3, image_size, image_size, generator=gen))
        model.eval()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 0.1
        feats = model.extract_feat(torch.randn(4, 3, image_size, image_size, generator=gen))[-1]
        fc = model.head.fc
        fc.weight.copy_(torch.randn(fc.weight.shape, generator=gen))
        fc.weight.mul_(LOGIT_STD / (feats @ fc.weight.T).std())
        fc.bias.copy_(torch.randn(fc.bias.shape, generator=gen) * 0.5)
    return model


def mmpretrain_logits(model, images_nhwc: np.ndarray, features: bool = False) -> np.ndarray:
    """Eval-mode float64 logits (or pooled backbone features) for channels-last images."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).double()
        model.double()
        out = model.extract_feat(x)[-1] if features else model(x, mode="tensor")
        model.float()
        return out.numpy()


def save_mm_checkpoint(model, path, snapshot: bool = False) -> str:
    """mmengine's ``save_checkpoint`` of ``{"meta", "state_dict"}`` as mmengine's Runner
    builds it; ``snapshot=True`` adds what a training snapshot holds (``message_hub`` with
    ``HistoryBuffer`` objects, ``optimizer`` from an ``OptimWrapper``, ``param_schedulers``)
    and numpy values in ``meta``."""
    import mmengine
    import torch
    from mmengine.logging import MessageHub
    from mmengine.optim import CosineAnnealingLR, OptimWrapper
    from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu

    checkpoint = {"meta": {"mmengine_version": mmengine.__version__, "epoch": 3, "iter": 120},
                  "state_dict": weights_to_cpu(get_state_dict(model))}
    if snapshot:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        wrapper = OptimWrapper(optimizer)
        hub = MessageHub.get_instance(f"effv2-test-{os.getpid()}")
        hub.update_scalar("train/loss", 1.25)
        hub.update_info("epoch", 3)
        scheduler = CosineAnnealingLR(optimizer, T_max=10)
        checkpoint["meta"].update(seed=np.int64(7), mean=np.arange(3.0))
        checkpoint.update(message_hub=hub.state_dict(), optimizer=wrapper.state_dict(),
                          param_schedulers=[scheduler.state_dict()])
    save_checkpoint(checkpoint, os.fspath(path))
    return os.fspath(path)
