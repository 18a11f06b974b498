"""Registry of the official EfficientNetV2 weight sets, as data.

Every entry is a frozen :class:`WeightsSpec`: where the upstream file lives, its format,
its head width, the preprocessing the weights expect (which the model builds when
``include_preprocessing=True``; each with its ``source``), train/eval sizes and published
top-1. timm's Hugging Face ``model.safetensors`` files cover B0-B2 ``in1k`` and B3/S/M/L/XL;
B0-B2 ``in21k`` and ``in21k_ft_in1k`` exist only as google/automl TF checkpoints
(docs/architecture.md §3.4). The seed model card's 15 mmpretrain checkpoints are weight sets too
(tags ``3rdparty_in1k``, ``in21k-pre_3rdparty_in1k``, ``3rdparty_in21k``; each also answers to
its model-zoo name, e.g. ``"efficientnetv2-s_3rdparty_in1k"``), with mmpretrain's eval
pipeline as their preprocessing (:mod:`keras_effv2.weights.mmpretrain_zoo`). timm's GitHub
release ``.pth`` files (the same tensors, named ``tf_efficientnetv2_<v>[_<tag>]-<sha256
prefix>.pth``) are alternative upstreams of the timm sets: ``KERAS_EFFV2_WEIGHTS_UPSTREAM=github``
tries them first, and either host is tried when the other cannot be reached (:func:`upstreams`).

Example:
    >>> from keras_effv2.weights import get_weights_spec
    >>> spec = get_weights_spec("s", "imagenet21k-ft1k")
    >>> spec.key, spec.num_classes
    ('s.in21k_ft_in1k', 1000)
"""

from __future__ import annotations

import dataclasses
import os

from keras_effv2.configs import get_variant
from keras_effv2.preprocessing import AUTOML_128, IMAGENET, INCEPTION, PreprocessingSpec
from keras_effv2.weights.mmpretrain_zoo import MMPRETRAIN_TAGS, MMPRETRAIN_ZOO, parse_zoo_name

TIMM_URL = "https://huggingface.co/timm/tf_efficientnetv2_{v}.{tag}/resolve/main/model.safetensors"
AUTOML_URL = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/v2/{file}.tgz"
AUTOML_FILES = {"in1k": "efficientnetv2-{v}", "in21k": "efficientnetv2-{v}-21k",
                "in21k_ft_in1k": "efficientnetv2-{v}-21k-ft1k"}
# User-facing aliases (keras.applications style) -> timm tags.
TAG_ALIASES = {"imagenet": "in1k", "imagenet21k": "in21k", "imagenet21k-ft1k": "in21k_ft_in1k"}
TAG_NAMES = ", ".join([*TAG_ALIASES, *TAG_ALIASES.values()]) + (  # for error messages
    ", or an mmpretrain model-zoo name efficientnetv2-<v>_{" + ",".join(MMPRETRAIN_TAGS) + "}")
# timm's GitHub release files (timm 1.0 efficientnet.py default_cfgs ``url=``): tag -> file
# name pattern and, per variant, the sha256 prefix in the released file's name.
TIMM_GITHUB_URL = ("https://github.com/rwightman/pytorch-image-models/releases/download/"
                   "v0.1-effv2-weights/{file}")
TIMM_GITHUB_FILES = {
    "b0.in1k": "tf_efficientnetv2_b0-c7cc451f.pth",
    "b1.in1k": "tf_efficientnetv2_b1-be6e41b0.pth",
    "b2.in1k": "tf_efficientnetv2_b2-847de54e.pth",
    "b3.in1k": "tf_efficientnetv2_b3-57773f13.pth",
    "s.in1k": "tf_efficientnetv2_s-eb54923e.pth",
    "m.in1k": "tf_efficientnetv2_m-cc09e0cd.pth",
    "l.in1k": "tf_efficientnetv2_l-d664b728.pth",
    "s.in21k": "tf_efficientnetv2_s_21k-6337ad01.pth",
    "m.in21k": "tf_efficientnetv2_m_21k-361418a2.pth",
    "l.in21k": "tf_efficientnetv2_l_21k-91a19ec9.pth",
    "xl.in21k": "tf_efficientnetv2_xl_in21k-fd7e8abf.pth",
    "s.in21k_ft_in1k": "tf_efficientnetv2_s_21ft1k-d7dafa41.pth",
    "m.in21k_ft_in1k": "tf_efficientnetv2_m_21ft1k-bf41664a.pth",
    "l.in21k_ft_in1k": "tf_efficientnetv2_l_21ft1k-60127a9d.pth",
    "xl.in21k_ft_in1k": "tf_efficientnetv2_xl_in21ft1k-06c35c48.pth",
}
# Upstream file format -> the converter source that reads it (keras_effv2.weights.convert).
FORMAT_SOURCES = {"timm-safetensors": "timm", "timm-pth": "timm", "automl-tgz": "automl",
                  "mmpretrain-pth": "mmpretrain"}
UPSTREAM_ENV = "KERAS_EFFV2_WEIGHTS_UPSTREAM"


@dataclasses.dataclass(frozen=True)
class Upstream:
    """One host's file of a weight set: ``name`` (``"huggingface"``, ``"github"``,
    ``"automl"``...), URL, format and full sha256 when recorded (else the hash prefix in
    the file name, if any, is checked)."""

    name: str
    url: str
    source_format: str
    sha256: str | None = None


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
    """One official weight set.

    ``source_format`` is ``"timm-safetensors"``, ``"automl-tgz"`` or ``"mmpretrain-pth"``.
    ``sha256`` is the
    upstream file's hash when known (``None``: not yet recorded; the converted file's hash
    is recorded at conversion in the cache). ``top1`` is the published ImageNet-1k top-1
    (automl README / paper), ``top1_timm`` timm's measured value; ``None`` where none exists
    (21k heads are not ImageNet-1k classifiers); the mmpretrain sets carry mmpretrain's
    published top-1/``top5``.
    """

    variant: str
    tag: str
    url: str
    source_format: str
    num_classes: int
    preprocessing: PreprocessingSpec
    train_size: int
    eval_size: int
    top1: float | None = None
    top1_timm: float | None = None
    sha256: str | None = None
    license: str = "Apache-2.0"
    top5: float | None = None
    alternatives: tuple[Upstream, ...] = ()
    upstream_name: str = "huggingface"

    @property
    def key(self) -> str:
        return f"{self.variant}.{self.tag}"

    @property
    def alias(self) -> str:
        """The user-facing name: ``imagenet``..., or the mmpretrain model-zoo name."""
        if self.tag in MMPRETRAIN_TAGS:
            return MMPRETRAIN_ZOO[(self.variant, self.tag)].name
        return {v: k for k, v in TAG_ALIASES.items()}[self.tag]

    @property
    def source(self) -> str:
        """The converter source of the upstream file: ``"timm"``, ``"automl"`` or
        ``"mmpretrain"``."""
        return FORMAT_SOURCES[self.source_format]

    @property
    def primary(self) -> Upstream:
        return Upstream(self.upstream_name, self.url, self.source_format, self.sha256)

    @property
    def converted_name(self) -> str:
        return f"efficientnetv2_{self.variant}.{self.tag}.weights.h5"

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(key=self.key, alias=self.alias)
        return d


def _pp(base: PreprocessingSpec, crop_pct: float, crop_mode: str, interpolation: str,
        resize_source: str) -> PreprocessingSpec:
    """``base``'s mean/std (what automl trained with) and the eval resize/crop of
    ``resize_source``; the ``source`` cites both."""
    return dataclasses.replace(base, crop_pct=crop_pct, crop_mode=crop_mode,
                               interpolation=interpolation,
                               source=f"mean/std: {base.source}; resize/crop: {resize_source}")


def _timm_pp(base, v, tag, crop_pct, crop_mode="center") -> PreprocessingSpec:
    """timm evaluates its copy with these (pretrained_cfg of ``tf_efficientnetv2_<v>.<tag>``)."""
    return _pp(base, crop_pct, crop_mode, "bicubic",
               f"timm pretrained_cfg tf_efficientnetv2_{v}.{tag}")


def _timm(v, tag, classes, pp, sizes, top1=None, top1_timm=None) -> WeightsSpec:
    github = TIMM_GITHUB_FILES.get(f"{v}.{tag}")
    alternatives = (Upstream("github", TIMM_GITHUB_URL.format(file=github), "timm-pth"),
                    ) if github else ()
    return WeightsSpec(v, tag, TIMM_URL.format(v=v, tag=tag), "timm-safetensors", classes, pp,
                       *sizes, top1=top1, top1_timm=top1_timm, alternatives=alternatives)


def _automl(v, tag, classes, pp, sizes) -> WeightsSpec:
    url = AUTOML_URL.format(file=AUTOML_FILES[tag].format(v=v))
    return WeightsSpec(v, tag, url, "automl-tgz", classes, pp, *sizes, upstream_name="automl")


_K21 = 21843
_SQ = "squash"
# Mean/std: what automl trained each checkpoint with (docs/architecture.md §2.1): B0-B3 1k legacy
# ImageNet mean/std; S/M/L 1k and every 21k pretraining (datasets.py ImageNet21k, augname None)
# (x - 128) / 128; every 21k-ft1k fine-tune (ImagenetFt, augname 'ft') (x / 255 - 0.5) / 0.5.
# Eval resize/crop: timm's pretrained_cfg (§2.3) for the files timm publishes (timm measured
# top1_timm so); automl's own eval for the automl-only B0-B2 21k sets.
_IN21K = dataclasses.replace(AUTOML_128, source="automl datasets.py ImageNet21k (augname None) "
                             "-> preprocessing.py: (x - 128) / 128")
_AUTOML_21K = _pp(_IN21K, 0.875, "center", "bilinear",
                  "automl datasets.py ImageNet21k (isize 224, augname None) -> preprocessing.py "
                  "preprocess_for_eval: center crop 224 / (224 + 32), bilinear tf.image.resize")
_AUTOML_FT = _pp(INCEPTION, 1.0, "squash", "bilinear",
                 "automl datasets.py ImagenetFt (augname 'ft') -> preprocessing.py "
                 "preprocess_for_finetune: whole image bilinear-resized to the eval size, no crop")
_ENTRIES = (
    _timm("b0", "in1k", 1000, _timm_pp(IMAGENET, "b0", "in1k", 0.875), (192, 224), 78.7, 78.386),
    _timm("b1", "in1k", 1000, _timm_pp(IMAGENET, "b1", "in1k", 0.882), (192, 240), 79.8, 79.518),
    _timm("b2", "in1k", 1000, _timm_pp(IMAGENET, "b2", "in1k", 0.890), (208, 260), 80.5, 80.226),
    _automl("b0", "in21k", _K21, _AUTOML_21K, (224, 224)),
    _automl("b1", "in21k", _K21, _AUTOML_21K, (224, 224)),
    _automl("b2", "in21k", _K21, _AUTOML_21K, (224, 224)),
    _automl("b0", "in21k_ft_in1k", 1000, _AUTOML_FT, (192, 224)),
    _automl("b1", "in21k_ft_in1k", 1000, _AUTOML_FT, (192, 240)),
    _automl("b2", "in21k_ft_in1k", 1000, _AUTOML_FT, (208, 260)),
    _timm("b3", "in1k", 1000, _timm_pp(IMAGENET, "b3", "in1k", 0.904), (240, 300), 82.1, 81.960),
    _timm("b3", "in21k", _K21, _timm_pp(_IN21K, "b3", "in21k", 0.904), (240, 300)),
    _timm("b3", "in21k_ft_in1k", 1000, _timm_pp(INCEPTION, "b3", "in21k_ft_in1k", 0.9, _SQ),
          (240, 300), None, 82.634),
    _timm("s", "in1k", 1000, _timm_pp(AUTOML_128, "s", "in1k", 1.0), (300, 384), 83.9, 83.900),
    _timm("s", "in21k", _K21, _timm_pp(_IN21K, "s", "in21k", 1.0), (300, 384)),
    _timm("s", "in21k_ft_in1k", 1000, _timm_pp(INCEPTION, "s", "in21k_ft_in1k", 1.0),
          (300, 384), 84.9, 84.332),
    _timm("m", "in1k", 1000, _timm_pp(AUTOML_128, "m", "in1k", 1.0, _SQ), (384, 480),
          85.2, 85.208),
    _timm("m", "in21k", _K21, _timm_pp(_IN21K, "m", "in21k", 1.0, _SQ), (384, 480)),
    _timm("m", "in21k_ft_in1k", 1000, _timm_pp(INCEPTION, "m", "in21k_ft_in1k", 1.0, _SQ),
          (384, 480), 86.2, 86.014),
    _timm("l", "in1k", 1000, _timm_pp(AUTOML_128, "l", "in1k", 1.0, _SQ), (384, 480),
          85.7, 85.660),
    _timm("l", "in21k", _K21, _timm_pp(_IN21K, "l", "in21k", 1.0, _SQ), (384, 480)),
    _timm("l", "in21k_ft_in1k", 1000, _timm_pp(INCEPTION, "l", "in21k_ft_in1k", 1.0, _SQ),
          (384, 480), 86.9, 86.802),
    _timm("xl", "in21k", _K21, _timm_pp(_IN21K, "xl", "in21k", 1.0, _SQ), (384, 512)),
    _timm("xl", "in21k_ft_in1k", 1000, _timm_pp(INCEPTION, "xl", "in21k_ft_in1k", 1.0, _SQ),
          (384, 512), 87.2, 86.754),
)
# --- the seed model card's mmpretrain checkpoints (keras_effv2.weights.mmpretrain_zoo) ------
_MMPRETRAIN_ENTRIES = tuple(
    WeightsSpec(e.variant, e.tag, e.url, "mmpretrain-pth", e.num_classes, e.preprocessing,
                e.train_size, e.eval_size, top1=e.top1, top5=e.top5, upstream_name="openmmlab")
    for e in MMPRETRAIN_ZOO.values())
WEIGHTS: dict[str, WeightsSpec] = {w.key: w for w in (*_ENTRIES, *_MMPRETRAIN_ENTRIES)}


def normalize_tag(tag: str) -> str:
    """``"imagenet21k-ft1k"`` -> ``"in21k_ft_in1k"``, ``"efficientnetv2-s_3rdparty_in1k"`` ->
    ``"3rdparty_in1k"``; timm and mmpretrain tags pass through."""
    zoo = parse_zoo_name(tag)
    if zoo is not None:
        return zoo[1]
    return TAG_ALIASES.get(str(tag).lower(), str(tag).lower())


def is_weights_tag(weights) -> bool:
    """Whether ``weights`` names a registered tag (rather than a file path)."""
    return isinstance(weights, str) and normalize_tag(weights) in {
        *TAG_ALIASES.values(), *MMPRETRAIN_TAGS}


def get_weights_spec(variant, tag: str) -> WeightsSpec:
    """The registered weight set for ``variant`` and ``tag`` (alias or timm tag).

    Raises:
        ValueError: naming the valid tags for the variant when the combination does not exist.
    """
    v = get_variant(variant).name
    zoo = parse_zoo_name(tag)
    if zoo is not None and zoo[0] != v:
        raise ValueError(f"{tag!r} is EfficientNetV2-{zoo[0].upper()}'s mmpretrain weight set, "
                         f"not EfficientNetV2-{v.upper()}'s; use "
                         f"'efficientnetv2-{v}_{zoo[1]}' if it exists.")
    key = f"{v}.{normalize_tag(tag)}"
    if key not in WEIGHTS:
        valid = [f"{w.alias!r} ({w.tag})" for w in WEIGHTS.values() if w.variant == v]
        raise ValueError(
            f"No {tag!r} weights for EfficientNetV2-{v.upper()}. Valid tags: {', '.join(valid)}."
        )
    return WEIGHTS[key]


def resolve_key(key) -> WeightsSpec:
    """A ``WeightsSpec`` from itself or a registry key such as ``"s.imagenet21k-ft1k"``."""
    if isinstance(key, WeightsSpec):
        return key
    variant, _, tag = str(key).partition(".")
    return get_weights_spec(variant, tag)


def default_weights_spec(variant) -> WeightsSpec:
    """The variant's ImageNet-1k classifier weights: ``in1k``, or ``in21k_ft_in1k`` for XL.

    Its preprocessing is what ``include_preprocessing=True`` builds when no tag is loaded.
    """
    v = get_variant(variant).name
    return WEIGHTS.get(f"{v}.in1k") or WEIGHTS[f"{v}.in21k_ft_in1k"]


def upstreams(spec: WeightsSpec) -> list[Upstream]:
    """The hosts to try for ``spec``, in order: the registry's primary first, unless
    ``KERAS_EFFV2_WEIGHTS_UPSTREAM`` names another of its upstreams (e.g. ``github``).

    Example:
        >>> [u.name for u in upstreams(WEIGHTS["s.in1k"])]  # with the variable unset
        ['huggingface', 'github']
    """
    every = [spec.primary, *spec.alternatives]
    wanted = os.environ.get(UPSTREAM_ENV, "").strip().lower()
    if not wanted:
        return every
    names = sorted({u.name for w in WEIGHTS.values() for u in (w.primary, *w.alternatives)})
    if wanted not in names:
        raise ValueError(f"{UPSTREAM_ENV}={wanted!r}: expected one of {', '.join(names)} "
                         "(or unset for each weight set's primary host).")
    return sorted(every, key=lambda u: u.name != wanted)


def list_weights(variant=None) -> list[dict]:
    """Every registered weight set as a dict (optionally for one variant).

    Example:
        >>> from keras_effv2.weights import list_weights
        >>> [w["key"] for w in list_weights("xl")]
        ['xl.in21k', 'xl.in21k_ft_in1k', 'xl.in21k-pre_3rdparty_in1k', 'xl.3rdparty_in21k']
    """
    v = get_variant(variant).name if variant is not None else None
    return [w.as_dict() for w in WEIGHTS.values() if v is None or w.variant == v]
