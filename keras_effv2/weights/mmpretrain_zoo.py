"""The seed model card's 15 mmpretrain checkpoints, as data (the registry makes weight sets).

Every fact is from mmpretrain 1.2.0's ``configs/efficientnet_v2/metafile.yml`` and
``efficientnetv2-*_8xb32_*.py`` configs (tested against the installed package by
``tests/test_weights_mmpretrain.py``): the model-zoo name, the file under OpenMMLab's
``mmclassification/v0/efficientnetv2/`` (``<8 hex>`` = the start of its sha256), the
published ImageNet-1k top-1/top-5 (``None`` for the 21k heads), the train crop and eval
size, and the normalisation of the config's ``data_preprocessor``.

Each is a conversion of timm's original GitHub release (``Converted From`` in the metafile),
so the tensors are expected to equal the timm-hosted sets' (``efficientnetv2-s_3rdparty_in1k``
~ ``s.in1k``, ``..._in21k-pre_3rdparty_in1k`` ~ ``in21k_ft_in1k``, ``..._3rdparty_in21k`` ~
``in21k``); they are separate weight sets because they were evaluated with mmpretrain's
pipeline (another normalisation and resize/crop), and preprocessing belongs to the weight set.

Eval transform (``EfficientNetCenterCrop(crop_size=<eval size>, crop_padding=0)``): the
centred square of the short side, resized to the eval size with cv2's bicubic
(``crop_mode="crop_resize"``, ``interpolation="cv2_bicubic"``,
:mod:`keras_effv2.eval_transforms`).

Example:
    >>> from keras_effv2.weights.mmpretrain_zoo import MMPRETRAIN_ZOO, zoo_name
    >>> zoo_name("s", "3rdparty_in1k")
    'efficientnetv2-s_3rdparty_in1k'
    >>> MMPRETRAIN_ZOO[("s", "3rdparty_in1k")].eval_size
    384
"""

from __future__ import annotations

import dataclasses
import re

from keras_effv2.preprocessing import PreprocessingSpec

MMPRETRAIN_URL = ("https://download.openmmlab.com/mmclassification/v0/efficientnetv2/"
                  "{file}.pth")
# Tags: the model-zoo name after ``efficientnetv2-<v>_``.
IN1K, IN21K_PRE_IN1K, IN21K = "3rdparty_in1k", "in21k-pre_3rdparty_in1k", "3rdparty_in21k"
MMPRETRAIN_TAGS = (IN1K, IN21K_PRE_IN1K, IN21K)
ZOO_NAME = re.compile(r"efficientnetv2-(b0|b1|b2|b3|s|m|l|xl)_(" + "|".join(
    re.escape(t) for t in MMPRETRAIN_TAGS) + r")")
CONFIGS = "mmpretrain 1.2.0 configs/efficientnet_v2/"
_CROP = "EfficientNetCenterCrop(crop_size={size}, crop_padding=0), cv2 bicubic"


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One mmpretrain checkpoint: its file (without ``.pth``), sizes, results and config."""

    variant: str
    tag: str
    file: str
    train_size: int
    eval_size: int
    top1: float | None
    top5: float | None
    config: str

    @property
    def name(self) -> str:
        return zoo_name(self.variant, self.tag)

    @property
    def url(self) -> str:
        return MMPRETRAIN_URL.format(file=self.file)

    @property
    def num_classes(self) -> int:
        return 21843 if self.tag == IN21K else 1000

    @property
    def preprocessing(self) -> PreprocessingSpec:
        """The config's ``data_preprocessor`` mean/std (0..255 units, here / 255) and eval
        crop; B0-B3 ImageNet mean/std, S-XL 127.5 / 127.5."""
        if self.variant.startswith("b"):
            mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
        else:
            mean, std = (127.5,) * 3, (127.5,) * 3
        return PreprocessingSpec(
            tuple(m / 255 for m in mean), tuple(s / 255 for s in std),
            interpolation="cv2_bicubic", crop_pct=1.0, crop_mode="crop_resize",
            source=f"mean/std: {CONFIGS}{self.config} data_preprocessor "
                   f"{list(mean)} / {list(std)}; resize/crop: test_pipeline "
                   + _CROP.format(size=self.eval_size))


def zoo_name(variant: str, tag: str) -> str:
    """``efficientnetv2-<variant>_<tag>``, mmpretrain's model-zoo name."""
    return f"efficientnetv2-{variant}_{tag}"


def parse_zoo_name(name) -> tuple[str, str] | None:
    """``(variant, tag)`` of a model-zoo name such as ``efficientnetv2-s_3rdparty_in1k``."""
    match = ZOO_NAME.fullmatch(str(name).lower()) if isinstance(name, str) else None
    return (match.group(1), match.group(2)) if match else None


def _e(v, tag, date_hash, sizes, top=(None, None), config=None):
    kind = {IN1K: "3rdparty_in1k", IN21K_PRE_IN1K: "in21k-pre-3rdparty_in1k",
            IN21K: "3rdparty_in21k"}[tag]  # the file names write 'in21k-pre-3rdparty'
    return ZooEntry(v, tag, f"efficientnetv2-{v}_{kind}_{date_hash}", *sizes, *top,
                    config or f"efficientnetv2-{v}_8xb32_in21k.py")


_1K = {"b0": "efficientnetv2-b0_8xb32_in1k.py", "b1": "efficientnetv2-b1_8xb32_in1k.py",
       "b2": "efficientnetv2-b2_8xb32_in1k.py", "b3": "efficientnetv2-b3_8xb32_in1k.py",
       "s": "efficientnetv2-s_8xb32_in1k-384px.py", "m": "efficientnetv2-m_8xb32_in1k-480px.py",
       "l": "efficientnetv2-l_8xb32_in1k-480px.py", "xl": "efficientnetv2-xl_8xb32_in1k-512px.py"}
_ENTRIES = (
    _e("b0", IN1K, "20221221-9ef6e736", (192, 224), (78.52, 94.44), _1K["b0"]),
    _e("b1", IN1K, "20221221-6955d9ce", (192, 240), (79.80, 94.89), _1K["b1"]),
    _e("b2", IN1K, "20221221-74f7d493", (208, 260), (80.63, 95.30), _1K["b2"]),
    _e("b3", IN1K, "20221221-b6f07a36", (240, 300), (82.03, 95.88), _1K["b3"]),
    _e("s", IN1K, "20221220-f0eaff9d", (300, 384), (83.82, 96.67), _1K["s"]),
    _e("m", IN1K, "20221220-9dc0c729", (384, 480), (85.01, 97.26), _1K["m"]),
    _e("l", IN1K, "20221220-5c3bac0f", (384, 480), (85.43, 97.31), _1K["l"]),
    _e("s", IN21K_PRE_IN1K, "20221220-7a7c8475", (300, 384), (84.29, 97.26), _1K["s"]),
    _e("m", IN21K_PRE_IN1K, "20221220-a1013a04", (384, 480), (85.47, 97.76), _1K["m"]),
    _e("l", IN21K_PRE_IN1K, "20221220-63df0efd", (384, 480), (86.31, 97.99), _1K["l"]),
    _e("xl", IN21K_PRE_IN1K, "20221220-583ac18b", (384, 512), (86.39, 97.83), _1K["xl"]),
    _e("s", IN21K, "20221220-c0572b56", (224, 224)),
    _e("m", IN21K, "20221220-073e944c", (224, 224)),
    _e("l", IN21K, "20221220-f28f91e1", (224, 224)),
    _e("xl", IN21K, "20221220-b2c9329c", (224, 224)),
)
MMPRETRAIN_ZOO: dict[tuple[str, str], ZooEntry] = {(e.variant, e.tag): e for e in _ENTRIES}
