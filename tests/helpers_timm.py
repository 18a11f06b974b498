"""Randomly initialised, well-conditioned timm reference models (test fixtures).

timm's default init with BN statistics (0, 1) makes deep EfficientNets explode or vanish,
and a parity check on such activations proves nothing. ``make_timm_model`` randomises the
BN affine parameters (small scales where a residual branch ends), then calibrates the BN
running statistics on random images (so every BN really normalises), and scales the
classifier so logits have a standard deviation of a few units.
"""

from __future__ import annotations

import numpy as np

TIMM_NAME = "tf_efficientnetv2_{}"
# Logits of magnitude 1-10: large enough to mean something, small enough that float32
# rounding through 100 blocks (about 5e-6 relative, timm itself included) stays below 1e-4.
LOGIT_STD = 2.0


def make_timm_model(variant: str, num_classes: int = 1000, image_size: int = 64, seed: int = 0):
    """A timm ``tf_efficientnetv2_<variant>`` in eval mode with well-conditioned weights."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(TIMM_NAME.format(variant), pretrained=False, num_classes=num_classes)
    gen = torch.Generator().manual_seed(seed + 1)
    # BNs that close a residual branch get small scales, so the identity path dominates and
    # inputs stay distinguishable through 100 blocks (as in trained networks).
    branch_ends = {id(_branch_end_bn(b)) for stage in model.blocks for b in stage if b.has_skip}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                low, high = (0.1, 0.4) if id(module) in branch_ends else (0.6, 1.4)
                scale = torch.rand(module.weight.shape, generator=gen)
                module.weight.copy_(scale * (high - low) + low)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
                module.reset_running_stats()
                module.momentum = None  # running stats = the calibration batch's statistics
            if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
        calibration = torch.randn(8, 3, image_size, image_size, generator=gen)
        model.train()
        model(calibration)
        model.eval()
        fresh = torch.randn(4, 3, image_size, image_size, generator=gen)
        feats = model.forward_head(model.forward_features(fresh), pre_logits=True)
        w = model.classifier.weight
        w.copy_(torch.randn(w.shape, generator=gen))
        w.mul_(LOGIT_STD / (feats @ w.T).std())
        model.classifier.bias.copy_(torch.randn(model.classifier.bias.shape, generator=gen) * 0.5)
    return model


# The BatchNorm whose output is added to the residual, per timm block class.
_BRANCH_END_BN = {"ConvBnAct": "bn1", "EdgeResidual": "bn2", "InvertedResidual": "bn3"}


def _branch_end_bn(block):
    return getattr(block, _BRANCH_END_BN[type(block).__name__])


def timm_state_dict(model) -> dict[str, np.ndarray]:
    """The model's state_dict as float32 NumPy arrays."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def timm_logits(model, images_nhwc: np.ndarray) -> np.ndarray:
    """Eval-mode logits for channels-last images, computed in float64.

    The float64 reference is the exact value of the float32 weights, so the comparison
    measures our float32 error alone rather than the sum of two float32 roundings.
    """
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
        out = model.double()(x.double()).numpy()
        model.float()
        return out


def one_torch_thread_fixture():
    """An autouse module fixture running torch on one intra-op thread, restored afterwards:
    timm's float64 reference forwards with 2+ threads crawl on a busy 2-core machine.

    Example (in a test module): ``one_torch_thread = helpers_timm.one_torch_thread_fixture()``
    """
    import pytest

    @pytest.fixture(scope="module", autouse=True)
    def one_torch_thread():
        import torch

        n = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(n)

    return one_torch_thread
