"""Datasets for fine-tuning: tfds loaders, image folders, scikit-learn digits; tf.data pipelines.

``load_dataset(name)`` returns ``Splits``: ``train`` and ``test`` ``tf.data.Dataset`` of
``(uint8 HxWx3 image, int64 label)`` plus the class and example counts. Names:

- ``cifar10``, ``cifar100``, ``oxford_flowers102`` (train+validation / test, as the paper),
  ``cars196`` (tensorflow-datasets; ``data_dir`` as tfds);
- ``digits``: scikit-learn's 1,797 handwritten digits upscaled to 64x64 RGB, split 80/20
  (stratified, seed 0); no download;
- ``shapes``: 2,000 synthetic figures in 10 classes drawn anti-aliased at 128 px, random size,
  place and rotation (:mod:`keras_effv2.training.shapes`); no download;
- ``folder:PATH`` (or an existing directory): one subfolder per class; with ``train/`` and
  ``test/`` subfolders those are the splits, else a stratified 10 % is held out.

Stanford Cars (``cars196``): the upstream download has been dead for years. Put a manual copy in
``DATA_DIR/downloads/manual/`` (``DATA_DIR`` is ``--data-dir``, default
``~/tensorflow_datasets``): the folders ``cars_train/`` and ``cars_test/`` (the JPEGs), and the
files ``cars_train_annos.mat`` (from ``car_devkit.tgz``'s ``devkit/``) and
``cars_test_annos_withlabels.mat``. An already prepared tfds ``cars196`` is used first.

``train_dataset(splits, stage, ...)`` / ``eval_dataset(splits, size, ...)`` build the batched
pipelines that ``model.fit`` / ``evaluate`` read on any backend.

Example:
    >>> from keras_effv2.training.data import load_dataset
    >>> splits = load_dataset("digits")
    >>> splits.num_classes, splits.train_examples
    (10, 1437)
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np

from keras_effv2.training import shapes
from keras_effv2.training.augment import AugmentConfig, StageAugmenter
from keras_effv2.training.schedule import MIN_IMAGE_SIZE, StageSettings

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
FOLDER_PREFIX = "folder:"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: where it comes from, its splits, and the paper's Table 9 counts."""

    name: str
    source: str  # "tfds" | "sklearn" | "synthetic"
    num_classes: int
    train_split: str = "train"
    test_split: str = "test"
    train_examples: int | None = None
    test_examples: int | None = None
    tfds_name: str | None = None


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", "tfds", 10, train_examples=50_000, test_examples=10_000,
                           tfds_name="cifar10"),
    "cifar100": DatasetSpec("cifar100", "tfds", 100, train_examples=50_000,
                            test_examples=10_000, tfds_name="cifar100"),
    "oxford_flowers102": DatasetSpec("oxford_flowers102", "tfds", 102, "train+validation",
                                     "test", 2_040, 6_149, tfds_name="oxford_flowers102"),
    "cars196": DatasetSpec("cars196", "tfds", 196, train_examples=8_144, test_examples=8_041,
                           tfds_name="cars196"),
    "digits": DatasetSpec("digits", "sklearn", 10, train_examples=1_437, test_examples=360),
    "shapes": DatasetSpec("shapes", "synthetic", 10, train_examples=1_500, test_examples=500),
}


@dataclasses.dataclass(frozen=True)
class Splits:
    """Unbatched ``(uint8 image, label)`` train and test datasets with their counts."""

    name: str
    train: object
    test: object
    num_classes: int
    train_examples: int
    test_examples: int


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0) -> Splits:
    """Load a named dataset or an image folder as ``Splits`` (see the module doc)."""
    name = os.fspath(name)
    if name.startswith(FOLDER_PREFIX):
        return load_image_folder(name[len(FOLDER_PREFIX):], seed=seed)
    if name not in DATASETS and os.path.isdir(name):
        return load_image_folder(name, seed=seed)
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; accepted: {', '.join(sorted(DATASETS))}, "
            f"or '{FOLDER_PREFIX}PATH' / an existing directory with one subfolder per class."
        )
    spec = DATASETS[name]
    if spec.source == "sklearn":
        return load_digits(seed=seed)
    if spec.source == "synthetic":
        return load_shapes(seed=seed)
    if name == "cars196":
        return _load_cars196(spec, data_dir)
    return _load_tfds(spec, data_dir)


def _count(ds) -> int:
    import tensorflow as tf

    n = int(ds.cardinality())
    if n < 0:
        n = int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))
    return n


def _load_tfds(spec: DatasetSpec, data_dir):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    builder.download_and_prepare()
    info = builder.info
    num_classes = info.features["label"].num_classes

    def as_pairs(split):
        ds = builder.as_dataset(split=split, shuffle_files=False)
        return ds.map(lambda e: (e["image"], tf.cast(e["label"], tf.int64)),
                      num_parallel_calls=tf.data.AUTOTUNE)

    train, test = as_pairs(spec.train_split), as_pairs(spec.test_split)
    return Splits(spec.name, train, test, num_classes, _count(train), _count(test))


def cars196_manual_dir(data_dir=None) -> str:
    """Where a manual copy of Stanford Cars is read from (see the module doc)."""
    root = data_dir or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    return os.path.join(root, "downloads", "manual")


def _load_cars196(spec: DatasetSpec, data_dir):
    import tensorflow_datasets as tfds

    builder = tfds.builder("cars196", data_dir=data_dir)
    manual = cars196_manual_dir(data_dir)
    needed = ["cars_train", "cars_test", "cars_train_annos.mat",
              "cars_test_annos_withlabels.mat"]
    missing = [n for n in needed if not os.path.exists(os.path.join(manual, n))]
    if builder.is_prepared() or missing:
        try:
            return _load_tfds(spec, data_dir)
        except Exception as e:  # the upstream download is dead
            raise FileNotFoundError(
                f"cars196: no prepared tfds copy under {builder.data_dir!r} ({e.__class__.__name__}"
                f" while preparing it) and the manual copy in {manual!r} lacks {missing}. "
                "Stanford Cars' upstream download is gone: put cars_train/ and cars_test/ "
                "(JPEGs), cars_train_annos.mat (from car_devkit.tgz's devkit/) and "
                f"cars_test_annos_withlabels.mat in {manual!r}."
            ) from e

    def read(annos, folder):
        from scipy.io import loadmat

        rows = loadmat(os.path.join(manual, annos), squeeze_me=True)["annotations"]
        files = [os.path.join(manual, folder, str(r["fname"])) for r in rows]
        labels = [int(r["class"]) - 1 for r in rows]  # 1-based in the .mat files
        return _files_dataset(files, labels)

    train = read("cars_train_annos.mat", "cars_train")
    test = read("cars_test_annos_withlabels.mat", "cars_test")
    return Splits("cars196", train, test, 196, _count(train), _count(test))


def _files_dataset(files, labels):
    import tensorflow as tf

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((list(files), np.asarray(labels, "int64")))
    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def _list_classes(root: str):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(root, c, f))
                labels.append(i)
    return classes, files, labels


def load_image_folder(path: str, seed: int = 0, test_fraction: float = 0.1) -> Splits:
    """An image folder: ``PATH/<class>/*.jpg``, or ``PATH/{train,test}/<class>/*.jpg``."""
    if not os.path.isdir(path):
        raise ValueError(f"image folder {path!r} does not exist or is not a directory.")
    name = FOLDER_PREFIX + path
    if os.path.isdir(os.path.join(path, "train")) and os.path.isdir(os.path.join(path, "test")):
        classes, files, labels = _list_classes(os.path.join(path, "train"))
        test_classes, test_files, test_labels = _list_classes(os.path.join(path, "test"))
        if test_classes != classes:
            raise ValueError(f"image folder {path!r}: train/ and test/ have different classes.")
    else:
        classes, files, labels = _list_classes(path)
        test_files = test_labels = None
    counts = np.bincount(labels, minlength=len(classes)) if labels else np.zeros(0)
    if len(classes) < 2 or np.count_nonzero(counts) < 2:
        found = dict(zip(classes, counts.tolist(), strict=False))
        raise ValueError(
            f"image folder {path!r}: found {len(classes)} class folder(s) with images "
            f"({found}); classification needs at least 2 "
            f"subfolders, one per class, each holding {'/'.join(IMAGE_EXTENSIONS)} files."
        )
    if test_files is None:
        from sklearn.model_selection import train_test_split

        n_test = max(1, round(test_fraction * len(files)))
        stratify = min(counts) >= 2 and len(files) - len(classes) >= len(classes)
        if stratify:
            n_test = max(n_test, len(classes))  # at least one test image per class
        files, test_files, labels, test_labels = train_test_split(
            files, labels, test_size=n_test, random_state=seed,
            stratify=labels if stratify else None)
    return Splits(name, _files_dataset(files, labels), _files_dataset(test_files, test_labels),
                  len(classes), len(files), len(test_files))


def load_shapes(seed: int = 0) -> Splits:
    """The synthetic ``shapes`` figures drawn from ``seed`` (:mod:`keras_effv2.training.shapes`)."""
    import tensorflow as tf

    (x_tr, y_tr), (x_te, y_te) = shapes.draw_splits(seed)
    return Splits("shapes", tf.data.Dataset.from_tensor_slices((x_tr, y_tr)),
                  tf.data.Dataset.from_tensor_slices((x_te, y_te)), len(shapes.CLASSES),
                  len(x_tr), len(x_te))


def load_digits(image_size: int = 64, seed: int = 0) -> Splits:
    """scikit-learn digits as 64x64 uint8 RGB, split 80/20 (stratified, fixed seed)."""
    import tensorflow as tf
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    images = digits.images.astype("float32")[..., None] * (255.0 / 16.0)
    images = tf.image.resize(images, (image_size, image_size), method="bilinear").numpy()
    images = np.repeat(np.clip(np.round(images), 0, 255).astype("uint8"), 3, axis=-1)
    x_tr, x_te, y_tr, y_te = train_test_split(images, digits.target.astype("int64"),
                                              test_size=0.2, random_state=seed,
                                              stratify=digits.target)
    return Splits("digits", tf.data.Dataset.from_tensor_slices((x_tr, y_tr)),
                  tf.data.Dataset.from_tensor_slices((x_te, y_te)), 10, len(x_tr), len(x_te))


def _finish(ds):
    import tensorflow as tf

    if keras.config.image_data_format() == "channels_first":
        ds = ds.map(lambda x, y: (tf.transpose(x, (0, 3, 1, 2)), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def check_batch_size(splits: Splits, batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    if batch_size > splits.train_examples:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {splits.train_examples} training "
            f"examples of {splits.name!r}; use a batch size <= {splits.train_examples}."
        )


def train_dataset(splits: Splits, stage: StageSettings, batch_size: int,
                  augment: AugmentConfig | None = None, seed: int = 0,
                  shuffle_buffer: int = 10_000):
    """Shuffled, repeated, augmented ``(images, one-hot labels)`` batches for ``stage``."""
    import tensorflow as tf

    check_batch_size(splits, batch_size)
    if stage.image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {stage.image_size} is below the minimum "
                         f"{MIN_IMAGE_SIZE} px.")
    aug = StageAugmenter(stage, augment or AugmentConfig(), seed=seed)
    n = splits.num_classes
    buffer = min(shuffle_buffer, splits.train_examples)
    # The shuffle is built inside flat_map, so each iterator gets its own reshuffle seed
    # generator: every iterator yields the same sequence whatever another one prefetched
    # (Keras under a strategy peeks a batch, then restarts), and the processes of a
    # multi-process run agree on every global batch.
    ds = tf.data.Dataset.range(1).flat_map(
        lambda _: splits.train.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        .repeat())
    ds = ds.map(lambda x, y: (aug.image_fn(x), tf.one_hot(y, n)),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True)
    if aug.mixes:
        ds = ds.map(aug.batch_fn, num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds)


def eval_dataset(splits: Splits, image_size: int, batch_size: int, split: str = "test"):
    """Resized (no augmentation) ``(images, one-hot labels)`` batches of ``split``."""
    import tensorflow as tf

    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is below the minimum {MIN_IMAGE_SIZE} px.")
    resize = keras.layers.Resizing(image_size, image_size, data_format="channels_last")
    n = splits.num_classes
    ds = getattr(splits, split).map(lambda x, y: (resize(tf.cast(x, tf.float32)),
                                                  tf.one_hot(y, n)),
                                    num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds.batch(batch_size))
