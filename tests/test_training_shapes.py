"""The synthetic ``shapes`` dataset: each figure's drawn area against its geometric formula,
determinism per seed, class balance, and the ``shapes`` recipe's stages."""

import math

import numpy as np
import pytest

from keras_effv2.training import shapes
from keras_effv2.training.shapes import CLASSES, draw_dataset, draw_shape


def _lens(big: float, small: float, d: float) -> float:
    """Area shared by two disks of radii ``big`` and ``small`` whose centres are ``d`` apart."""
    return (small ** 2 * math.acos((d * d + small ** 2 - big ** 2) / (2 * d * small))
            + big ** 2 * math.acos((d * d + big ** 2 - small ** 2) / (2 * d * big))
            - 0.5 * math.sqrt((-d + small + big) * (d + small - big) * (d - small + big)
                              * (d + small + big)))


# Area of each figure with circumradius 1, from textbook formulas and the documented proportions
# (regular n-gon: n/2 sin(2 pi / n); 5-pointed star: 10 triangles with sides 1 and q and angle
# pi/5; cross: two 2b x 2a bars sharing a 2a x 2a square, b = sqrt(1 - a^2)).
_A, _Q = 0.3, 0.45
_OFFSET, _CUT = 0.45, 0.85
EXPECTED_AREA = {
    "disk": math.pi,
    "ring": math.pi * (1 - 0.6 ** 2),
    "ellipse": math.pi * 0.5,
    "half_disk": math.pi / 2,
    "crescent": math.pi - _lens(1.0, _CUT, _OFFSET),
    "triangle": 1.5 * math.sin(2 * math.pi / 3),
    "square": 2.0,
    "hexagon": 3 * math.sin(math.pi / 3),
    "star": 5 * _Q * math.sin(math.pi / 5),
    "cross": 8 * _A * math.sqrt(1 - _A ** 2) - 4 * _A ** 2,
}


@pytest.mark.parametrize("name", CLASSES)
def test_each_figure_covers_its_geometric_area(name):
    size, radius = 128, 0.4
    image = draw_shape(name, size, radius, center=(0.5, 0.5), angle=0.7)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    covered = image[..., 0].astype(np.float64).sum() / 255.0  # anti-aliased: partial pixels
    expected = EXPECTED_AREA[name] * (radius * size) ** 2
    # Pillow fills the pixels its edges cross: up to 0.75 % over (star, cross: the longest
    # edges). A wrong proportion is far outside: star inner radius 0.45 -> 0.5 moves it 11 %.
    assert covered == pytest.approx(expected, rel=1e-2), name


def test_figures_rotate_about_their_centre():
    a = draw_shape("triangle", 64, 0.4, angle=0.0)[..., 0].astype(float)
    b = draw_shape("triangle", 64, 0.4, angle=math.pi)[..., 0].astype(float)
    assert abs(a.sum() - b.sum()) / a.sum() < 5e-3
    assert np.abs(a - b[:, ::-1]).max() < 40  # a half turn of a triangle mirrors it left-right


def test_unknown_shape_is_refused_with_the_accepted_names():
    with pytest.raises(ValueError, match="accepted: disk, ring"):
        draw_shape("heart", 32, 0.4)


def test_draws_are_balanced_inside_the_frame_and_fixed_by_the_seed():
    x, y = draw_dataset(40, np.random.default_rng(3), size=48)
    assert x.shape == (40, 48, 48, 3) and x.dtype == np.uint8
    assert np.bincount(y, minlength=len(CLASSES)).tolist() == [4] * len(CLASSES)
    x2, y2 = draw_dataset(40, np.random.default_rng(3), size=48)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = draw_dataset(40, np.random.default_rng(4), size=48)
    assert np.abs(x.astype(int) - x3).mean() > 10
    # The whole figure is inside: the one-pixel border holds only the background grey.
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1).astype(int)
    spread = border.max(axis=1) - border.min(axis=1)
    assert spread.max() <= 6  # Lanczos ringing; a figure at the edge gives 60+


def test_load_dataset_shapes_has_the_documented_splits(monkeypatch):
    from keras_effv2.training.data import DATASETS, load_dataset

    monkeypatch.setattr(shapes, "TRAIN_EXAMPLES", 30)
    monkeypatch.setattr(shapes, "TEST_EXAMPLES", 20)
    splits = load_dataset("shapes", seed=1)
    assert (splits.num_classes, splits.train_examples, splits.test_examples) == (10, 30, 20)
    images, labels = next(iter(splits.train.batch(30)))
    assert images.shape == (30, 128, 128, 3) and str(images.dtype) == "<dtype: 'uint8'>"
    assert np.bincount(labels.numpy(), minlength=10).tolist() == [3] * 10
    test_images, _ = next(iter(splits.test.batch(20)))
    assert not np.array_equal(images.numpy()[:20], test_images.numpy())  # separate streams
    spec = DATASETS["shapes"]
    assert (spec.train_examples, spec.test_examples) == (1_500, 500)


def test_shapes_recipe_trains_64_96_128_then_evaluates_at_128():
    from keras_effv2.training.recipes import get_recipe
    from keras_effv2.training.schedule import get_schedule

    recipe = get_recipe("shapes")
    assert (recipe.dataset, recipe.model, recipe.weights) == ("shapes", "b0", None)
    assert (recipe.train_size, recipe.eval_size) == (128, 128)
    stages = get_schedule(recipe.progressive).stages()
    assert [s.image_size for s in stages] == [64, 96, 128]
    assert [s.dropout_rate for s in stages] == pytest.approx([0.1, 0.2, 0.3])
    assert recipe.total_steps == 9 * (1_500 // recipe.batch_size)
