"""Progressive learning schedules (paper Table 6 and what Google's released code runs).

A ``ProgressiveSchedule`` holds, for each regularisation knob, a ``(min, max)`` pair; stage ``i``
of ``n`` takes values interpolated linearly between them. Two size rules exist:

- ``"linspace"`` (the paper, §4.2): both endpoints included, sizes truncated to int;
- ``"automl"`` (``main_tf2.py``): ``int(min + (max - min) * (i + 1) / n)``, so stage 0 is not
  ``min`` (S: 171, 214, 257, 300).

``None`` for a knob means "not scheduled" (dropout in the released code, RandAugment for B0-B3,
which use AutoAugment there).

Example:
    >>> from keras_effv2.training.schedule import get_schedule
    >>> [s.image_size for s in get_schedule("paper-s").stages()]
    [128, 185, 242, 300]
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

SIZE_RULES = ("linspace", "automl")
MIN_IMAGE_SIZE = 32

Range = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """The settings of one progressive stage (0-based ``index`` of ``num_stages``)."""

    index: int
    num_stages: int
    image_size: int
    randaug_magnitude: float | None
    mixup_alpha: float
    cutmix_alpha: float
    dropout_rate: float | None

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in dataclasses.asdict(self).items()}


def _check_range(name: str, value, lo: float, hi: float | None = None):
    if value is None:
        return None
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"{name} must be a (min, max) pair or None; got {value!r}.")
    a, b = float(value[0]), float(value[1])
    if a < lo or b < lo or (hi is not None and (a >= hi or b >= hi)):
        bound = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}={value!r}: both values must be in {bound}.")
    return (a, b)


@dataclasses.dataclass(frozen=True)
class ProgressiveSchedule:
    """Per-stage image size, RandAugment magnitude, mixup/cutmix alpha and dropout.

    Args:
        num_stages: number of stages (>= 1).
        image_size: ``(min, max)`` training image size in pixels (>= 32).
        randaug_magnitude: ``(min, max)`` RandAugment magnitude (automl scale, 10 = the
            standard maximum) or ``None`` for no RandAugment.
        mixup_alpha, cutmix_alpha: ``(min, max)`` Beta-distribution alphas; 0 disables.
        dropout_rate: ``(min, max)`` rate of the ``head_dropout`` layer, or ``None`` to keep
            the model's own rate (the released code does not schedule it).
        size_rule: ``"linspace"`` (paper) or ``"automl"`` (released code), see module doc.
        name: a label for logs.
    """

    num_stages: int
    image_size: Range
    randaug_magnitude: Range | None = None
    mixup_alpha: Range = (0.0, 0.0)
    cutmix_alpha: Range = (0.0, 0.0)
    dropout_rate: Range | None = None
    size_rule: str = "linspace"
    name: str = "custom"

    def __post_init__(self):
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"num_stages must be an int >= 1; got {self.num_stages!r}.")
        if self.size_rule not in SIZE_RULES:
            raise ValueError(f"size_rule must be one of {SIZE_RULES}; got {self.size_rule!r}.")
        size = _check_range("image_size", self.image_size, 0)
        if size is None or min(size) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"image_size={self.image_size!r}: EfficientNetV2 needs images of at least "
                f"{MIN_IMAGE_SIZE} px."
            )
        object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "randaug_magnitude",
                           _check_range("randaug_magnitude", self.randaug_magnitude, 0))
        object.__setattr__(self, "mixup_alpha", _check_range("mixup_alpha", self.mixup_alpha, 0))
        object.__setattr__(self, "cutmix_alpha",
                           _check_range("cutmix_alpha", self.cutmix_alpha, 0))
        object.__setattr__(self, "dropout_rate",
                           _check_range("dropout_rate", self.dropout_rate, 0, 1))

    def _ratio(self, i: int) -> float:
        n = self.num_stages
        if self.size_rule == "automl":
            return (i + 1) / n
        return i / (n - 1) if n > 1 else 1.0

    def _linspace(self, pair: Range | None, i: int) -> float | None:
        if pair is None:
            return None
        n = self.num_stages
        return float(np.linspace(pair[0], pair[1], n)[i]) if n > 1 else float(pair[1])

    def stage(self, i: int) -> StageSettings:
        """Settings of stage ``i`` (0-based)."""
        if not 0 <= i < self.num_stages:
            raise IndexError(f"stage {i} out of range for {self.num_stages} stages.")
        lo, hi = self.image_size
        size = int(lo + (hi - lo) * self._ratio(i))
        return StageSettings(
            index=i, num_stages=self.num_stages, image_size=size,
            randaug_magnitude=self._linspace(self.randaug_magnitude, i),
            mixup_alpha=self._linspace(self.mixup_alpha, i),
            cutmix_alpha=self._linspace(self.cutmix_alpha, i),
            dropout_rate=self._linspace(self.dropout_rate, i),
        )

    def stages(self) -> list[StageSettings]:
        return [self.stage(i) for i in range(self.num_stages)]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "stages": [s.to_dict() for s in self.stages()]}


def constant_schedule(image_size: int, *, randaug_magnitude=None, mixup_alpha=0.0,
                      cutmix_alpha=0.0, dropout_rate=None) -> ProgressiveSchedule:
    """One stage with fixed settings (a non-progressive run)."""
    def pair(v):
        return None if v is None else (v, v)
    return ProgressiveSchedule(1, (image_size, image_size), pair(randaug_magnitude),
                               pair(mixup_alpha), pair(cutmix_alpha), pair(dropout_rate),
                               name="constant")


# Paper Table 6 (4 stages; mixup only, no cutmix).
_PAPER = {
    "s": dict(image_size=(128, 300), randaug_magnitude=(5, 15), mixup_alpha=(0, 0),
              dropout_rate=(0.1, 0.3)),
    "m": dict(image_size=(128, 380), randaug_magnitude=(5, 20), mixup_alpha=(0, 0.2),
              dropout_rate=(0.1, 0.4)),
    "l": dict(image_size=(128, 380), randaug_magnitude=(5, 25), mixup_alpha=(0, 0.4),
              dropout_rate=(0.1, 0.5)),
}
# automl main_tf2.py: ibase 128 -> train_size, RA linspace(5, ram), mixup = cutmix alpha,
# dropout not scheduled; B0-B3 use AutoAugment (no magnitude), so only the size is scheduled.
_AUTOML = {
    "b0": (192, None, 0.0), "b1": (192, None, 0.0), "b2": (208, None, 0.0),
    "b3": (240, None, 0.0), "s": (300, 10, 0.0), "m": (384, 15, 0.2), "l": (384, 20, 0.5),
    "xl": (384, 20, 0.5),
}

PRESETS: dict[str, ProgressiveSchedule] = {
    **{f"paper-{k}": ProgressiveSchedule(4, name=f"paper-{k}", **v) for k, v in _PAPER.items()},
    **{
        f"automl-{k}": ProgressiveSchedule(
            4, (128, size), None if ram is None else (5, ram), (0, mix), (0, mix), None,
            size_rule="automl", name=f"automl-{k}")
        for k, (size, ram, mix) in _AUTOML.items()
    },
    # The main job: sklearn digits (8x8 upsampled), 3 stages 40 -> 52 -> 64 px, dropout 0.1 ->
    # 0.3, no RandAugment or mixup. Not 32 px: there B0's last stage runs on 1x1 maps, where a
    # 3x3 depthwise kernel trains only its centre tap; at the next size the 8 untrained taps
    # come into play and the network restarts from chance (docs/training.md, "Main job").
    "digits": ProgressiveSchedule(3, (40, 64), None, (0, 0), (0, 0), (0.1, 0.3),
                                  name="digits"),
    # Synthetic shapes drawn at 128 px (natural scale: a figure looks the same at every size),
    # 3 stages 64 -> 96 -> 128 px, dropout 0.1 -> 0.3 (docs/training.md, "shapes").
    "shapes": ProgressiveSchedule(3, (64, 128), None, (0, 0), (0, 0), (0.1, 0.3),
                                  name="shapes"),
}

_SPEC_RE = re.compile(r"^(\w+)=([\d.]+)(?::([\d.]+))?$")
_SPEC_KEYS = {"stages": "num_stages", "size": "image_size", "randaug": "randaug_magnitude",
              "mixup": "mixup_alpha", "cutmix": "cutmix_alpha", "dropout": "dropout_rate",
              "rule": "size_rule"}


def parse_schedule(text: str) -> ProgressiveSchedule:
    """A preset name, or ``"stages=3,size=32:64,randaug=2:6,mixup=0:0.2,dropout=0.1:0.3"``."""
    if text in PRESETS:
        return PRESETS[text]
    if "=" not in text:
        raise ValueError(
            f"unknown progressive schedule {text!r}; presets: {', '.join(sorted(PRESETS))}, "
            "or a spec like 'stages=3,size=32:64,randaug=2:6,mixup=0:0.2,dropout=0.1:0.3'."
        )
    kwargs: dict = {}
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        if key not in _SPEC_KEYS:
            raise ValueError(f"schedule spec key {key!r} unknown; accepted: {sorted(_SPEC_KEYS)}.")
        if key == "rule":
            kwargs["size_rule"] = value
            continue
        m = _SPEC_RE.match(part.strip())
        if not m:
            raise ValueError(f"schedule spec entry {part!r}: expected key=MIN:MAX or key=VALUE.")
        lo = float(m.group(2))
        hi = float(m.group(3)) if m.group(3) is not None else lo
        kwargs[_SPEC_KEYS[key]] = int(lo) if key == "stages" else (lo, hi)
    if "num_stages" not in kwargs or "image_size" not in kwargs:
        raise ValueError(f"schedule spec {text!r} needs at least 'stages=' and 'size='.")
    return ProgressiveSchedule(name="custom", **kwargs)


def get_schedule(name) -> ProgressiveSchedule:
    """A ``ProgressiveSchedule`` from a preset name, a spec string or a schedule."""
    if isinstance(name, ProgressiveSchedule):
        return name
    return parse_schedule(str(name))
