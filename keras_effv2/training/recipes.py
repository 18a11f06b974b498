"""Fine-tuning recipes as data: the paper's transfer setting per dataset, a Colab-sized variant,
and the offline main-job recipe (scikit-learn digits).

``paper-<dataset>``: paper §5.3 — ImageNet-1k initialisation, batch 512, learning rate 1e-3 with
cosine decay, 10,000 steps, no weight decay, cutout (automl ``'ft'``: flip + cutout), training at
the eval size; EMA 0.9996, label smoothing 0.1, dropout 1e-6, stochastic depth 0.2 (automl
``ImagenetFt``). ``paper_top1`` is Table 8 (mean of 5 runs, ImageNet-1k init) per model.

``colab-<dataset>``: the same at batch 64 with the learning rate scaled linearly (1.25e-4) and
mixed precision; still 10,000 steps (1/8 of the paper's examples).

Progressive learning is an option on any recipe: ``with_progressive(recipe, "paper-s")``.

Example:
    >>> from keras_effv2.training.recipes import get_recipe, scaled
    >>> r = scaled(get_recipe("paper-cifar10"), batch_size=128)
    >>> r.batch_size, r.learning_rate
    (128, 0.00025)
"""

from __future__ import annotations

import dataclasses

import keras

from keras_effv2.lr_schedules import WarmupCosineDecay
from keras_effv2.training.augment import AugmentConfig

OPTIMIZERS = ("rmsprop", "adamw", "adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")

# Paper Table 8, EfficientNetV2 rows (top-1 %, mean of 5 runs, ImageNet-1k init).
PAPER_TABLE8 = {
    "cifar10": {"s": 98.7, "m": 99.0, "l": 99.1},
    "cifar100": {"s": 91.5, "m": 92.2, "l": 92.3},
    "oxford_flowers102": {"s": 97.9, "m": 98.5, "l": 98.8},
    "cars196": {"s": 93.8, "m": 94.6, "l": 95.1},
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One training setting. ``train_size``/``eval_size``: pixels or ``"eval"`` (the variant's
    eval size). ``progressive``: a schedule preset/spec (``None``: one stage at ``train_size``).
    """

    name: str
    dataset: str
    model: str = "s"
    weights: str | None = "imagenet"
    batch_size: int = 512
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    total_steps: int = 10_000
    optimizer: str = "rmsprop"
    weight_decay: float = 0.0
    ema_momentum: float | None = 0.9996
    label_smoothing: float = 0.1
    augment: AugmentConfig = AugmentConfig(flip=True, cutout=True)
    train_size: int | str = "eval"
    eval_size: int | str = "eval"
    dropout_rate: float = 1e-6
    drop_path_rate: float = 0.2
    mixed_precision: bool = False
    progressive: str | None = None
    paper_top1: dict | None = None
    source: str = ""

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {LR_SCHEDULES}; got {self.lr_schedule!r}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_PAPER_SOURCE = ("paper §5.3 (batch 512, lr 1e-3 cosine, 10k steps, no weight decay, cutout, "
                 "eval size); EMA/label smoothing/dropout/survival from automl ImagenetFt")

RECIPES: dict[str, Recipe] = {}
for _ds, _top1 in PAPER_TABLE8.items():
    RECIPES[f"paper-{_ds}"] = Recipe(f"paper-{_ds}", _ds, paper_top1=_top1,
                                     source=_PAPER_SOURCE)
    RECIPES[f"colab-{_ds}"] = Recipe(
        f"colab-{_ds}", _ds, batch_size=64, learning_rate=1e-3 * 64 / 512,
        mixed_precision=True, paper_top1=_top1,
        source="paper recipe scaled to one GPU: batch 64, lr x 64/512, mixed precision")
RECIPES["digits"] = Recipe(
    "digits", "digits", model="b0", weights=None, batch_size=32, learning_rate=2e-3,
    warmup_steps=40, total_steps=800, optimizer="adamw", weight_decay=1e-4, ema_momentum=None,
    label_smoothing=0.1, augment=AugmentConfig(flip=False, cutout=False), train_size=64,
    eval_size=64, dropout_rate=0.2, drop_path_rate=0.1, progressive="digits",
    source="the offline main job: B0 from scratch on scikit-learn digits, 3 progressive stages")
RECIPES["shapes"] = Recipe(
    "shapes", "shapes", model="b0", weights=None, batch_size=32, learning_rate=2e-3,
    warmup_steps=40, total_steps=414, optimizer="adamw", weight_decay=1e-4, ema_momentum=None,
    label_smoothing=0.1, augment=AugmentConfig(flip=False, cutout=False), train_size=128,
    eval_size=128, dropout_rate=0.2, drop_path_rate=0.1, progressive="shapes",
    source="progressive learning where it pays offline: B0 from scratch on synthetic shapes "
           "drawn at 128 px, 64 -> 96 -> 128 px, 9 epochs")


def get_recipe(name) -> Recipe:
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; accepted: {', '.join(sorted(RECIPES))}.")
    return RECIPES[name]


def recipe_for(dataset: str) -> Recipe:
    """The paper recipe of a Table 9 dataset; the paper settings for any other dataset."""
    if f"paper-{dataset}" in RECIPES:
        return RECIPES[f"paper-{dataset}"]
    if dataset in RECIPES:
        return RECIPES[dataset]
    return dataclasses.replace(RECIPES["paper-cifar10"], name=f"paper-like-{dataset}",
                               dataset=dataset, paper_top1=None)


def scaled(recipe: Recipe, batch_size: int) -> Recipe:
    """The recipe at another batch size, learning rate scaled linearly."""
    return dataclasses.replace(recipe, batch_size=batch_size,
                               learning_rate=recipe.learning_rate * batch_size / recipe.batch_size)


def with_progressive(recipe: Recipe, schedule: str | None) -> Recipe:
    return dataclasses.replace(recipe, progressive=schedule)


def build_optimizer(recipe: Recipe, total_steps: int | None = None) -> keras.optimizers.Optimizer:
    """The recipe's optimizer with its learning-rate schedule over ``total_steps``."""
    steps = total_steps or recipe.total_steps
    warmup = min(recipe.warmup_steps, max(steps - 1, 0))
    if recipe.lr_schedule == "cosine":
        if warmup:
            lr = WarmupCosineDecay(  # CosineDecay's values without its per-variable tf.cond
                0.0, steps - warmup, warmup_target=recipe.learning_rate, warmup_steps=warmup)
        else:
            lr = keras.optimizers.schedules.CosineDecay(recipe.learning_rate, steps)
    else:
        lr = recipe.learning_rate
    common = dict(learning_rate=lr, use_ema=recipe.ema_momentum is not None,
                  ema_momentum=recipe.ema_momentum or 0.99)
    wd = recipe.weight_decay or None
    if recipe.optimizer == "rmsprop":  # automl: decay 0.9, momentum 0.9, epsilon 1e-3
        return keras.optimizers.RMSprop(rho=0.9, momentum=0.9, epsilon=1e-3, weight_decay=wd,
                                        **common)
    if recipe.optimizer == "adamw":
        return keras.optimizers.AdamW(weight_decay=recipe.weight_decay, **common)
    if recipe.optimizer == "adam":
        return keras.optimizers.Adam(weight_decay=wd, **common)
    return keras.optimizers.SGD(momentum=0.9, nesterov=True, weight_decay=wd, **common)
