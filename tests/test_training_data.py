"""Datasets (tfds mock data, image folders, Stanford Cars manual copy, digits), pipelines and
augmentation: shapes, label counts, per-stage augmentation settings, bad input."""

import dataclasses
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the tf.data pipelines need tensorflow")
tfds = pytest.importorskip("tensorflow_datasets", reason="the loaders need tensorflow-datasets")

from keras_effv2.training import (  # noqa: E402
    AugmentConfig,
    StageAugmenter,
    StageSettings,
    cars196_manual_dir,
    cutout,
    eval_dataset,
    get_schedule,
    load_dataset,
    train_dataset,
)

N = 6  # mock examples per split


def _stage(size=40, ra=None, mixup=0.0, cutmix=0.0, dropout=None):
    return StageSettings(0, 2, size, ra, mixup, cutmix, dropout)


def _check_pipelines(splits, size=40, batch=4):
    images, labels = next(iter(train_dataset(splits, _stage(size, ra=5.0), batch,
                                             AugmentConfig(flip=True, cutout=True))))
    assert images.shape == (batch, size, size, 3) and images.dtype == tf.float32
    assert labels.shape == (batch, splits.num_classes)
    np.testing.assert_allclose(labels.numpy().sum(-1), 1.0, rtol=1e-6)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    n_test = 0
    for images, labels in eval_dataset(splits, size + 8, batch):
        assert images.shape[1:] == (size + 8, size + 8, 3)
        assert labels.shape[1:] == (splits.num_classes,)
        n_test += images.shape[0]
    assert n_test == splits.test_examples


@pytest.mark.parametrize("name,classes,train_split", [
    ("cifar10", 10, "train"), ("cifar100", 100, "train"),
    ("oxford_flowers102", 102, "train+validation"), ("cars196", 196, "train")])
def test_tfds_datasets_through_mock_data(name, classes, train_split, tmp_path, monkeypatch):
    requested = []
    with tfds.testing.mock_data(num_examples=N):
        as_dataset = tfds.core.DatasetBuilder.as_dataset

        def spy(self, split=None, **kwargs):
            requested.append(split)
            return as_dataset(self, split=split, **kwargs)

        monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", spy)
        splits = load_dataset(name, data_dir=str(tmp_path))
        assert requested == [train_split, "test"]  # flowers: train+validation (the paper)
        assert splits.num_classes == classes
        assert (splits.train_examples, splits.test_examples) == (N, N)
        image, label = next(iter(splits.train))
        assert image.dtype == tf.uint8 and image.shape[-1] == 3 and image.shape.rank == 3
        labels = [int(y) for _, y in splits.train]
        assert len(labels) == N and all(0 <= y < classes for y in labels)
        _check_pipelines(splits)


def test_digits_offline():
    splits = load_dataset("digits")
    assert (splits.num_classes, splits.train_examples, splits.test_examples) == (10, 1437, 360)
    image, _ = next(iter(splits.train))
    assert image.shape == (64, 64, 3) and image.dtype == tf.uint8
    counts = np.bincount([int(y) for _, y in splits.test], minlength=10)
    assert counts.sum() == 360 and counts.min() >= 35  # stratified
    _check_pipelines(splits, size=32, batch=16)


def _write_images(root, classes, per_class, rng):
    from PIL import Image

    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            hw = rng.integers(20, 60, size=2)
            pixels = rng.integers(0, 255, size=(*hw, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, c, f"{i}.png"))


def test_image_folder_layouts_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    flat = tmp_path / "flat"
    _write_images(str(flat), ["cat", "dog", "fox"], 10, rng)
    splits = load_dataset(f"folder:{flat}")
    assert splits.num_classes == 3 and (splits.train_examples, splits.test_examples) == (27, 3)
    assert sorted(int(y) for _, y in splits.test) == [0, 1, 2]  # stratified hold-out
    _check_pipelines(splits, batch=8)

    split = tmp_path / "split"
    _write_images(str(split / "train"), ["a", "b"], 5, rng)
    _write_images(str(split / "test"), ["a", "b"], 2, rng)
    splits = load_dataset(str(split))
    assert (splits.num_classes, splits.train_examples, splits.test_examples) == (2, 10, 4)

    one = tmp_path / "one"
    _write_images(str(one), ["only"], 4, rng)
    with pytest.raises(ValueError, match="at least 2 subfolders, one per class"):
        load_dataset(f"folder:{one}")
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; accepted: cars196, cifar10"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="batch_size 64 is larger than the 27 training"):
        train_dataset(load_dataset(f"folder:{flat}"), _stage(), 64)
    with pytest.raises(ValueError, match="below the minimum 32"):
        eval_dataset(splits, 24, 4)


def test_cars196_manual_copy(tmp_path):
    from PIL import Image
    from scipy.io import savemat

    manual = cars196_manual_dir(str(tmp_path))
    assert manual == os.path.join(str(tmp_path), "downloads", "manual")
    rng = np.random.default_rng(1)
    for split, n, mat in [("cars_train", 5, "cars_train_annos.mat"),
                          ("cars_test", 3, "cars_test_annos_withlabels.mat")]:
        os.makedirs(os.path.join(manual, split))
        rows = []
        for i in range(n):
            fname = f"{i:05d}.jpg"
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
                os.path.join(manual, split, fname))
            rows.append((0, 0, 39, 29, 196 if i == 0 else i + 1, fname))
        dtype = [(k, "O") for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class",
                                    "fname")]
        savemat(os.path.join(manual, mat), {"annotations": np.array(rows, dtype=dtype)[None]})
    splits = load_dataset("cars196", data_dir=str(tmp_path))
    assert (splits.num_classes, splits.train_examples, splits.test_examples) == (196, 5, 3)
    assert [int(y) for _, y in splits.train] == [195, 1, 2, 3, 4]  # 1-based in the .mat
    _check_pipelines(splits, batch=2)


def test_cars196_missing_copy_says_where(tmp_path, monkeypatch):
    def dead(*args, **kwargs):
        raise OSError("404")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", dead)
    with pytest.raises(FileNotFoundError, match=r"downloads/manual.*cars_train_annos\.mat"):
        load_dataset("cars196", data_dir=str(tmp_path))


def test_stage_augmenters_follow_the_schedule():
    schedule = get_schedule("paper-l")
    augs = [StageAugmenter(s, AugmentConfig()) for s in schedule.stages()]
    assert [a.resize.height for a in augs] == [128, 212, 296, 380]
    np.testing.assert_allclose([a.randaug.factor[1] for a in augs],
                               [0.05, 0.1167, 0.1833, 0.25], atol=1e-4)
    assert augs[0].mixup is None and augs[0].cutmix is None
    np.testing.assert_allclose([a.mixup.alpha for a in augs[1:]], [0.1333, 0.2667, 0.4],
                               atol=1e-4)


def test_cutout_square_and_mixing():
    image = tf.fill((40, 40, 3), 7.0)
    changed = (cutout(image).numpy() != 7.0).any(-1)
    side = 2 * (40 // 4)
    assert 0 < changed.sum() <= side * side
    rows, cols = np.nonzero(changed)
    assert rows.max() - rows.min() < side and cols.max() - cols.min() < side

    labels = tf.constant([0, 1] * 8)
    images = tf.cast(labels, tf.float32)[:, None, None, None] * tf.fill((16, 32, 32, 3), 255.0)
    onehot = tf.one_hot(labels, 2)
    both = StageAugmenter(_stage(32, mixup=0.4, cutmix=0.4), seed=3)
    mixed_images, mixed = both.batch_fn(images, onehot)
    assert mixed_images.shape == images.shape
    np.testing.assert_allclose(mixed.numpy().sum(-1), 1.0, rtol=1e-5)
    soft = (mixed.numpy()[:, 0] > 0.01) & (mixed.numpy()[:, 0] < 0.99)
    assert soft[:8].any()  # mixup on the first half: soft labels, blended pixels
    # a mixed-up image is a blend (grey); a cut-mixed one has a pasted box (0 and 255 only)
    first, second = mixed_images.numpy()[:8], mixed_images.numpy()[8:]
    assert np.any((first > 1) & (first < 254))
    assert not np.any((second > 1) & (second < 254))
    assert any(np.any(im == 0) and np.any(im == 255) for im in second)
    none = StageAugmenter(_stage(32))
    out, labels = none.batch_fn(images, onehot)
    assert out is images and labels is onehot


def test_randaug_changes_images_by_magnitude():
    splits = load_dataset("digits")
    base = _stage(32)
    diffs = []
    for magnitude in (None, 2.0, 30.0):
        st = dataclasses.replace(base, randaug_magnitude=magnitude)
        a = StageAugmenter(st, AugmentConfig(flip=False), seed=0)
        pairs = splits.train.take(32).map(lambda x, y, a=a: (a.image_fn(x), a.resize_only(x)))
        out, ref = next(iter(pairs.batch(32)))
        diffs.append(float(tf.reduce_mean(tf.abs(out - ref))))
    assert diffs[0] == 0.0 and 0.0 < diffs[1] < diffs[2]


@pytest.mark.parametrize("mixup", [0.0, 0.4])
def test_cutmix_label_weight_is_pasted_area(mixup):
    """Half the batch black (class 0), half white (class 1): after CutMix, an image's class-1
    weight must equal its fraction of white pixels, whatever box Keras drew (inside tf.data)."""
    n, h, w = 32, 24, 40
    labels = tf.constant([0, 1] * (n // 2))
    images = tf.cast(labels, tf.float32)[:, None, None, None] * tf.fill((n, h, w, 3), 255.0)
    aug = StageAugmenter(_stage(h, mixup=mixup, cutmix=1.0), seed=11)
    ds = tf.data.Dataset.from_tensors((images, tf.one_hot(labels, 2))).repeat(4)
    cut = slice(n // 2, n) if mixup else slice(0, n)  # with mixup too: the second half is cutmix
    pasted, weights = [], []
    for mixed_images, mixed in ds.map(aug.batch_fn):
        x = mixed_images.numpy()[cut]
        assert set(np.unique(x)) <= {0.0, 255.0}  # pasted pixels, no blending
        assert (x == x[..., :1]).all()  # the same box on every channel
        pasted.append((x[..., 0] == 255.0).mean(axis=(1, 2)))
        weights.append(mixed.numpy()[cut, 1])
    pasted, weights = np.concatenate(pasted), np.concatenate(weights)
    assert ((pasted > 0.02) & (pasted < 0.98)).sum() >= 8  # real boxes, not only no-ops
    np.testing.assert_allclose(weights, pasted, rtol=0, atol=1e-6)
