"""ImageNet-1k top-1/top-5 of a registered weight set, with its own eval preprocessing.

Each weight set is measured at its ``eval_size`` with its resize/crop (``crop_pct``,
``crop_mode``, interpolation: :mod:`keras_effv2.eval_transforms`) and its normalisation
(the model is built with ``include_preprocessing=True``, which takes the weight set's).

Data sources (``--data``):

* ``tfds`` or ``tfds:DATA_DIR``: TensorFlow Datasets ``imagenet2012``, split ``validation``
  (manual download: ``ILSVRC2012_img_val.tar`` in ``DATA_DIR/downloads/manual/``);
* a folder in the standard synset layout, ``DIR/n01440764/*.JPEG``: each sub-folder is a
  WordNet id of ImageNet-1k, labelled with its standard index (the sorted synsets); a
  subset of the 1000 classes is allowed.

Example:
    $ python -m weights_tools evaluate --variant b0 --weights imagenet \\
        --data /data/imagenet/val --limit 5000 --batch-size 64
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


class DatasetError(RuntimeError):
    """The evaluation data cannot be found or read."""


@dataclasses.dataclass(frozen=True)
class EvalResult:
    key: str
    count: int
    top1: float
    top5: float
    eval_size: int
    crop_pct: float
    crop_mode: str
    interpolation: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _standard_wnids() -> list[str]:
    from keras_effv2.labels import class_names

    return [wnid for wnid, _ in class_names(1000)]


def image_folder_files(root, limit: int | None = None, seed: int = 0):
    """``(paths, labels)`` of a synset-layout folder; a fixed-seed sample of ``limit``."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"{root!r} is not a folder (expected DIR/<wnid>/*.JPEG).")
    index = {w: i for i, w in enumerate(_standard_wnids())}
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise DatasetError(
            f"{root!r}: sub-folders {unknown[:5]} are not ImageNet-1k synsets; the layout is "
            "DIR/<wnid>/*.JPEG with the 1000 standard WordNet ids (e.g. n01440764)."
        )
    paths, labels = [], []
    for c in classes:
        folder = os.path.join(root, c)
        for f in sorted(os.listdir(folder)):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(folder, f))
                labels.append(index[c])
    if not paths:
        raise DatasetError(f"No images (.JPEG/.jpg/.png) under {root!r}/<wnid>/.")
    if limit is not None and limit < len(paths):
        keep = np.sort(np.random.default_rng(seed).permutation(len(paths))[:limit])
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    return paths, np.asarray(labels, np.int64)


def image_folder_dataset(root, limit: int | None = None):
    """``tf.data.Dataset`` of ``(uint8 HxWx3 image, label)`` from a synset-layout folder."""
    import tensorflow as tf

    paths, labels = image_folder_files(root, limit)

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def tfds_manual_dir(data_dir=None) -> str:
    base = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
    return os.path.join(os.path.expanduser(base), "downloads", "manual")


def tfds_dataset(data_dir=None, limit: int | None = None):
    """TFDS ``imagenet2012`` validation as ``(uint8 image, label)`` pairs."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DatasetError("--data tfds needs tensorflow-datasets (pip install "
                           "tensorflow-datasets), or pass an image folder.") from e
    split = "validation" if limit is None else f"validation[:{int(limit)}]"
    try:
        builder = tfds.builder("imagenet2012", data_dir=data_dir)
        builder.download_and_prepare()
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except Exception as e:  # tfds raises AssertionError when the manual files are missing
        manual = tfds_manual_dir(data_dir)
        hint = ""
        if isinstance(e, ModuleNotFoundError):
            hint = (f" TFDS itself could not run: install the missing module {e.name!r} "
                    f"(pip install {e.name}).")
        raise DatasetError(
            "TFDS imagenet2012 (validation) is not prepared. ImageNet needs a manual download: "
            f"put ILSVRC2012_img_val.tar (from image-net.org) in {manual}/ and run again (the "
            "train tar is optional); or pass --data DIR with DIR/<wnid>/*.JPEG." + hint +
            f" TFDS said: {type(e).__name__}: {e}"
        ) from e
    return ds.map(lambda ex: (ex["image"], ex["label"]))


def open_dataset(data: str, limit: int | None = None):
    """``--data`` value -> dataset of ``(uint8 image, label)``."""
    if data == "tfds" or data.startswith("tfds:"):
        return tfds_dataset(data.partition(":")[2] or None, limit)
    return image_folder_dataset(data, limit)


def build_eval_model(spec):
    """Logits model with the weight set's own normalisation, weights loaded."""
    from keras_effv2.applications import EfficientNetV2

    return EfficientNetV2(spec.variant, weights=spec.tag, classifier_activation=None,
                          include_preprocessing=True)


def evaluate(variant, weights, data: str, limit: int | None = None, batch_size: int = 32,
             model=None) -> EvalResult:
    """Top-1/top-5 (fractions) of weight set ``variant``/``weights`` on ``data``.

    ``model`` (optional) replaces the model built from the registry (tests).
    """
    import keras
    import tensorflow as tf

    from keras_effv2.eval_transforms import eval_transform_for
    from keras_effv2.weights import get_weights_spec

    spec = get_weights_spec(variant, weights)
    if spec.num_classes != 1000:
        raise ValueError(
            f"{spec.key} has a {spec.num_classes}-class ImageNet-21k head, which is not an "
            "ImageNet-1k classifier: top-1/top-5 on ImageNet-1k validation are undefined for "
            f"it. Evaluate '{spec.variant}' with weights 'imagenet21k-ft1k' (in21k_ft_in1k) "
            "instead."
        )
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be positive; got {limit}.")
    ds = open_dataset(data, limit)
    if limit is not None:
        ds = ds.take(limit)
    transform = eval_transform_for(spec)
    ds = ds.map(lambda image, label: (transform(image), label),
                num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(1)
    if model is None:
        model = build_eval_model(spec)
    channels_first = keras.config.image_data_format() == "channels_first"
    count = correct1 = correct5 = 0
    for images, labels in ds.as_numpy_iterator():
        n = len(labels)
        if n < batch_size:  # one input shape for every batch: no retracing / recompiling
            images = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]),
                                                      images.dtype)])
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2)) if channels_first else images
        logits = keras.ops.convert_to_numpy(model(x, training=False))[:n]
        top5 = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
        correct1 += int(np.sum(top5[:, 0] == labels))
        correct5 += int(np.sum(np.any(top5 == labels[:, None], axis=-1)))
        count += len(labels)
    if not count:
        raise DatasetError(f"No images were read from {data!r}.")
    pp = spec.preprocessing
    return EvalResult(spec.key, count, correct1 / count, correct5 / count, spec.eval_size,
                      pp.crop_pct, pp.crop_mode, pp.interpolation)
