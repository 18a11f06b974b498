"""Variant definitions for EfficientNetV2, as data.

Every number here comes from google/automl ``effnetv2_configs.py`` and timm's
``_gen_efficientnetv2_*`` (see ``docs/architecture.md`` §1). A variant is
a frozen :class:`VariantSpec`; :func:`resolve_blocks` expands it into the per-block
list the model builder consumes.

Example:
    >>> from keras_effv2.configs import VARIANTS, resolve_blocks
    >>> len(resolve_blocks(VARIANTS["s"]))
    40
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Literal

BlockType = Literal["fused", "mbconv"]


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage before width/depth scaling (automl's block string, as fields)."""

    block: BlockType
    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int
    se_ratio: float = 0.0

    def to_automl_str(self) -> str:
        """Return automl's notation, e.g. ``r2_k3_s1_e1_i24_o24_c1``."""
        s = (
            f"r{self.repeats}_k{self.kernel}_s{self.stride}_e{self.expand_ratio}"
            f"_i{self.in_channels}_o{self.out_channels}"
        )
        if self.se_ratio:
            s += f"_se{self.se_ratio:g}"
        if self.block == "fused":
            s += "_c1"
        return s


def _stages(*rows: str) -> tuple[StageSpec, ...]:
    """Parse compact rows such as ``"mbconv r3 k3 s2 e4 i48 o96 se0.25"`` into StageSpecs."""
    out = []
    for row in rows:
        block, *fields = row.split()
        vals = dict(re.fullmatch(r"([a-z]+)([\d.]+)", f).groups() for f in fields)
        out.append(
            StageSpec(
                block=block,  # type: ignore[arg-type]
                repeats=int(vals["r"]),
                kernel=int(vals["k"]),
                stride=int(vals["s"]),
                expand_ratio=int(vals["e"]),
                in_channels=int(vals["i"]),
                out_channels=int(vals["o"]),
                se_ratio=float(vals.get("se", 0.0)),
            )
        )
    return tuple(out)


_BASE = _stages(
    "fused r1 k3 s1 e1 i32 o16",
    "fused r2 k3 s2 e4 i16 o32",
    "fused r2 k3 s2 e4 i32 o48",
    "mbconv r3 k3 s2 e4 i48 o96 se0.25",
    "mbconv r5 k3 s1 e6 i96 o112 se0.25",
    "mbconv r8 k3 s2 e6 i112 o192 se0.25",
)
_S = _stages(
    "fused r2 k3 s1 e1 i24 o24",
    "fused r4 k3 s2 e4 i24 o48",
    "fused r4 k3 s2 e4 i48 o64",
    "mbconv r6 k3 s2 e4 i64 o128 se0.25",
    "mbconv r9 k3 s1 e6 i128 o160 se0.25",
    "mbconv r15 k3 s2 e6 i160 o256 se0.25",
)
_M = _stages(
    "fused r3 k3 s1 e1 i24 o24",
    "fused r5 k3 s2 e4 i24 o48",
    "fused r5 k3 s2 e4 i48 o80",
    "mbconv r7 k3 s2 e4 i80 o160 se0.25",
    "mbconv r14 k3 s1 e6 i160 o176 se0.25",
    "mbconv r18 k3 s2 e6 i176 o304 se0.25",
    "mbconv r5 k3 s1 e6 i304 o512 se0.25",
)
_L = _stages(
    "fused r4 k3 s1 e1 i32 o32",
    "fused r7 k3 s2 e4 i32 o64",
    "fused r7 k3 s2 e4 i64 o96",
    "mbconv r10 k3 s2 e4 i96 o192 se0.25",
    "mbconv r19 k3 s1 e6 i192 o224 se0.25",
    "mbconv r25 k3 s2 e6 i224 o384 se0.25",
    "mbconv r7 k3 s1 e6 i384 o640 se0.25",
)
_XL = _stages(
    "fused r4 k3 s1 e1 i32 o32",
    "fused r8 k3 s2 e4 i32 o64",
    "fused r8 k3 s2 e4 i64 o96",
    "mbconv r16 k3 s2 e4 i96 o192 se0.25",
    "mbconv r24 k3 s1 e6 i192 o256 se0.25",
    "mbconv r32 k3 s2 e6 i256 o512 se0.25",
    "mbconv r8 k3 s1 e6 i512 o640 se0.25",
)


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """Everything that defines one EfficientNetV2 variant.

    ``dropout_rate`` is automl's per-variant default; ``train_size``/``eval_size`` the
    train/test resolutions; ``params_*`` the exact counts asserted by the tests
    (docs/architecture.md §5.1).
    """

    name: str
    stages: tuple[StageSpec, ...]
    width: float
    depth: float
    train_size: int
    eval_size: int
    dropout_rate: float
    randaug_magnitude: int
    mixup_alpha: float
    params_trainable: int
    params_total: int
    head_channels_base: int = 1280
    drop_path_rate: float = 0.2

    @property
    def model_name(self) -> str:
        return f"efficientnetv2_{self.name}"

    @property
    def stem_channels(self) -> int:
        return round_filters(self.stages[0].in_channels, self.width)

    @property
    def head_channels(self) -> int:
        return round_filters(self.head_channels_base, self.width)

    @property
    def num_blocks(self) -> int:
        return sum(round_repeats(s.repeats, self.depth) for s in self.stages)


VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in (
        VariantSpec("b0", _BASE, 1.0, 1.0, 192, 224, 0.2, 0, 0.0, 7_139_704, 7_200_312),
        VariantSpec("b1", _BASE, 1.0, 1.1, 192, 240, 0.2, 0, 0.0, 8_141_052, 8_212_124),
        VariantSpec("b2", _BASE, 1.1, 1.2, 208, 260, 0.3, 0, 0.0, 10_096_086, 10_178_374),
        VariantSpec("b3", _BASE, 1.2, 1.4, 240, 300, 0.3, 0, 0.0, 14_358_406, 14_467_622),
        VariantSpec("s", _S, 1.0, 1.0, 300, 384, 0.2, 10, 0.0, 21_458_488, 21_612_360),
        VariantSpec("m", _M, 1.0, 1.0, 384, 480, 0.3, 15, 0.2, 54_139_356, 54_431_388),
        VariantSpec("l", _L, 1.0, 1.0, 384, 480, 0.4, 20, 0.5, 118_515_272, 119_027_848),
        VariantSpec("xl", _XL, 1.0, 1.0, 384, 512, 0.4, 20, 0.5, 208_119_808, 208_896_832),
    )
}


def get_variant(name: str | VariantSpec) -> VariantSpec:
    """Look a variant up by name (``"b0"``, ``"S"``, ``"efficientnetv2-s"``...)."""
    if isinstance(name, VariantSpec):
        return name
    key = str(name).lower().replace("efficientnetv2", "").strip("-_ ")
    if key not in VARIANTS:
        raise ValueError(
            f"Unknown EfficientNetV2 variant {name!r}. Accepted: {', '.join(VARIANTS)}."
        )
    return VARIANTS[key]


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """automl/keras.applications channel rounding (no 10% guard, as timm round_limit=0)."""
    return max(divisor, int(channels * width + divisor / 2) // divisor * divisor)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's repeat count, rounding up (timm ``depth_trunc='ceil'``)."""
    return int(math.ceil(depth * repeats))


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One resolved block: what the builder instantiates at ``s{stage}_b{index:02d}``."""

    stage: int
    index: int
    global_index: int
    block: BlockType
    kernel: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int
    se_channels: int
    drop_path_rate: float

    @property
    def name(self) -> str:
        return f"s{self.stage}_b{self.index:02d}"

    @property
    def mid_channels(self) -> int:
        return self.in_channels * self.expand_ratio

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def resolve_blocks(variant: VariantSpec, drop_path_rate: float | None = None) -> list[BlockSpec]:
    """Expand a variant into its blocks with scaled channels and the drop-path ramp.

    Block ``i`` of ``N`` gets drop rate ``drop_path_rate * i / N`` (automl/timm), which the
    builder applies on residual blocks only.
    """
    rate = variant.drop_path_rate if drop_path_rate is None else drop_path_rate
    total = variant.num_blocks
    blocks: list[BlockSpec] = []
    for s_idx, stage in enumerate(variant.stages):
        in_ch = round_filters(stage.in_channels, variant.width)
        out_ch = round_filters(stage.out_channels, variant.width)
        for j in range(round_repeats(stage.repeats, variant.depth)):
            cin = in_ch if j == 0 else out_ch
            se = max(1, int(cin * stage.se_ratio)) if stage.se_ratio else 0
            g = len(blocks)
            blocks.append(
                BlockSpec(
                    stage=s_idx,
                    index=j,
                    global_index=g,
                    block=stage.block,
                    kernel=stage.kernel,
                    stride=stage.stride if j == 0 else 1,
                    expand_ratio=stage.expand_ratio,
                    in_channels=cin,
                    out_channels=out_ch,
                    se_channels=se,
                    drop_path_rate=rate * g / total,
                )
            )
    return blocks
