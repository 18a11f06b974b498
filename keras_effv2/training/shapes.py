"""``shapes``: a synthetic, offline dataset with natural scale, drawn anti-aliased at 128 px.

Ten classes of filled figures (:data:`CLASSES`), each image a random size (circumradius 22–42 %
of the side), position, rotation and grey levels, drawn with Pillow at 4x the stored size and
downsampled with a Lanczos filter. Smaller stage sizes are then made by the pipeline's resize,
as photographs are: a figure looks the same at 64 and 128 px, only sharper. That is what the
scikit-learn digits lack (8x8 originals upsampled: features learned at one size do not carry
to the next, docs/training.md), and what progressive learning needs to pay off.

The images depend only on ``seed`` (train and test from separate random streams), so a
``--seeds`` comparison draws a new dataset per seed. 1,500 training and 500 test images (150
and 50 per class) take about 8 s to draw on a 2-core CPU.

Example:
    >>> from keras_effv2.training.data import load_dataset
    >>> from keras_effv2.training.shapes import draw_shape
    >>> splits = load_dataset("shapes", seed=0)  # Splits of (128x128x3 uint8, label)
    >>> image = draw_shape("square", size=64, radius=0.4, center=(0.5, 0.5), angle=0.0)
"""

from __future__ import annotations

import math

import numpy as np

CLASSES = ("disk", "ring", "ellipse", "half_disk", "crescent", "triangle", "square", "hexagon",
           "star", "cross")
IMAGE_SIZE = 128
TRAIN_EXAMPLES = 1_500
TEST_EXAMPLES = 500
SUPERSAMPLE = 4
RADIUS_RANGE = (0.22, 0.42)  # circumradius, fraction of the side

RING_INNER = 0.6  # inner / outer radius
ELLIPSE_MINOR = 0.5  # minor / major semi-axis
CRESCENT_CUT = (0.45, 0.85)  # the cut-out disk: centre offset and radius, in units of r
STAR_INNER = 0.45  # 5-pointed star: inner / outer vertex radius
CROSS_ARM = 0.3  # half-width of a cross arm / r


def _regular(k: int, radius: float, phase: float = 0.0):
    return [(radius * math.cos(phase + 2 * math.pi * i / k),
             radius * math.sin(phase + 2 * math.pi * i / k)) for i in range(k)]


def _outline(name: str) -> list[tuple[float, float]] | None:
    """The polygon of ``name`` for circumradius 1 at the origin (``None``: drawn with arcs)."""
    if name == "triangle":
        return _regular(3, 1.0)
    if name == "square":
        return _regular(4, 1.0)
    if name == "hexagon":
        return _regular(6, 1.0)
    if name == "star":
        outer, inner = _regular(5, 1.0), _regular(5, STAR_INNER, math.pi / 5)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if name == "cross":
        a = CROSS_ARM
        b = math.sqrt(1.0 - a * a)  # arm ends on the unit circle
        return [(a, a), (b, a), (b, -a), (a, -a), (a, -b), (-a, -b), (-a, -a), (-b, -a),
                (-b, a), (-a, a), (-a, b), (a, b)]
    if name == "ellipse":
        return [(math.cos(t), ELLIPSE_MINOR * math.sin(t))
                for t in np.linspace(0, 2 * math.pi, 256, endpoint=False)]
    if name == "half_disk":
        return [(math.cos(t), math.sin(t)) for t in np.linspace(0, math.pi, 129)]
    return None


def draw_shape(name: str, size: int, radius: float, center=(0.5, 0.5), angle: float = 0.0,
               foreground=(255, 255, 255), background=(0, 0, 0)) -> np.ndarray:
    """One figure as a ``(size, size, 3)`` uint8 array.

    ``radius`` (circumradius) and ``center`` are fractions of ``size``; ``angle`` in radians.
    """
    from PIL import Image, ImageDraw

    if name not in CLASSES:
        raise ValueError(f"unknown shape {name!r}; accepted: {', '.join(CLASSES)}.")
    s = size * SUPERSAMPLE
    r, cx, cy = radius * s, center[0] * s, center[1] * s
    image = Image.new("RGB", (s, s), tuple(background))
    draw = ImageDraw.Draw(image)
    fg, bg = tuple(foreground), tuple(background)

    def disk(x, y, rad, fill):
        draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=fill)

    outline = _outline(name)
    if outline is not None:
        c, si = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + r * (x * c - y * si), cy + r * (x * si + y * c)) for x, y in outline],
                     fill=fg)
    elif name == "disk":
        disk(cx, cy, r, fg)
    elif name == "ring":
        disk(cx, cy, r, fg)
        disk(cx, cy, RING_INNER * r, bg)
    else:  # crescent
        offset, cut = CRESCENT_CUT
        disk(cx, cy, r, fg)
        disk(cx + offset * r * math.cos(angle), cy + offset * r * math.sin(angle), cut * r, bg)
    return np.asarray(image.resize((size, size), Image.LANCZOS))


def draw_dataset(n: int, rng: np.random.Generator, size: int = IMAGE_SIZE):
    """``n`` random figures (classes in turn) as ``(images uint8 (n, size, size, 3), labels)``."""
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    for i, label in enumerate(labels):
        radius = rng.uniform(*RADIUS_RANGE)
        center = 0.5 + rng.uniform(-1, 1, 2) * (0.45 - radius)  # whole figure inside
        background = rng.integers(0, 90) + rng.integers(-15, 16, 3)
        foreground = rng.integers(150, 256) + rng.integers(-15, 16, 3)
        images[i] = draw_shape(CLASSES[label], size, radius, center, rng.uniform(0, 2 * math.pi),
                               np.clip(foreground, 0, 255), np.clip(background, 0, 255))
    order = rng.permutation(n)
    return images[order], labels[order]


def draw_splits(seed: int = 0):
    """``((train images, labels), (test images, labels))``: 1,500 and 500 figures at 128 px,
    drawn from ``seed`` (train and test from separate random streams)."""
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    return draw_dataset(TRAIN_EXAMPLES, train_rng), draw_dataset(TEST_EXAMPLES, test_rng)
