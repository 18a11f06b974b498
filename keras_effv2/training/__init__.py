"""Training: datasets, augmentation, progressive learning, recipes, fine-tuning helpers.

Example:
    >>> from keras_effv2.training import get_schedule, make_plan
    >>> [s.image_size for s in get_schedule("automl-s").stages()]
    [171, 214, 257, 300]
"""

from keras_effv2.training.augment import AugmentConfig, StageAugmenter, cutout
from keras_effv2.training.backup import TrainingBackup
from keras_effv2.training.data import (
    DATASETS,
    DatasetSpec,
    Splits,
    cars196_manual_dir,
    eval_dataset,
    load_dataset,
    load_digits,
    load_image_folder,
    train_dataset,
)
from keras_effv2.training.distribution import data_parallel_scope
from keras_effv2.training.finetune import freeze_backbone, set_bn_trainable, unfreeze
from keras_effv2.training.plotting import plot_history
from keras_effv2.training.progressive import (
    ProgressiveResult,
    StageCSVLogger,
    progressive_fit,
    set_dropout_rate,
    split_epochs,
)
from keras_effv2.training.recipes import (
    PAPER_TABLE8,
    RECIPES,
    Recipe,
    build_optimizer,
    get_recipe,
    scaled,
    with_progressive,
)
from keras_effv2.training.runner import (
    ResolvedRecipe,
    make_plan,
    resolve,
    resolve_recipe,
    run_recipe,
)
from keras_effv2.training.schedule import (
    PRESETS,
    ProgressiveSchedule,
    StageSettings,
    constant_schedule,
    get_schedule,
)

__all__ = [
    "DATASETS", "PAPER_TABLE8", "PRESETS", "RECIPES", "AugmentConfig", "DatasetSpec",
    "ProgressiveResult", "ProgressiveSchedule", "Recipe", "Splits", "StageAugmenter",
    "StageCSVLogger", "StageSettings", "TrainingBackup", "build_optimizer", "cars196_manual_dir",
    "constant_schedule", "cutout", "data_parallel_scope", "eval_dataset", "freeze_backbone",
    "get_recipe", "get_schedule", "load_dataset", "load_digits", "load_image_folder",
    "make_plan", "plot_history", "progressive_fit", "resolve", "resolve_recipe",
    "ResolvedRecipe", "run_recipe", "scaled",
    "set_bn_trainable", "set_dropout_rate", "split_epochs", "train_dataset", "unfreeze",
    "with_progressive",
]
