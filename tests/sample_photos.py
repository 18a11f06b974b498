"""Real sample photos for the tests, taken from an installed package (scikit-learn).

scikit-learn ships two photos in ``sklearn/datasets/images`` (see the ``README.txt``
there), both released under Creative Commons Attribution 2.0
(https://creativecommons.org/licenses/by/2.0/):

* ``china.jpg``: a Chinese temple, by danielbuechele on Flickr
  (https://www.flickr.com/photos/danielbuechele/6061409035);
* ``flower.jpg``: a flower, by vultilion on Flickr
  (https://www.flickr.com/photos/vultilion/6056698931).

The project does not copy them; it only finds them. The notebooks find them the same way.

Example:
    >>> from sample_photos import sample_image_paths
    >>> sorted(sample_image_paths())
    ['china', 'flower']
"""

from __future__ import annotations

import os

SAMPLES = ("china", "flower")
LICENSE = "CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/)"
CREDITS = {
    "china": "danielbuechele, https://www.flickr.com/photos/danielbuechele/6061409035",
    "flower": "vultilion, https://www.flickr.com/photos/vultilion/6056698931",
}


def sample_image_paths() -> dict[str, str]:
    """``{"china": path, "flower": path}`` of scikit-learn's bundled JPEGs.

    Raises:
        ImportError: when scikit-learn is not installed (``pip install scikit-learn``).
    """
    try:
        import sklearn.datasets
    except ImportError as e:
        raise ImportError("The sample photos come with scikit-learn: pip install scikit-learn"
                          ) from e
    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    paths = {name: os.path.join(folder, f"{name}.jpg") for name in SAMPLES}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"scikit-learn's sample photos are missing: {missing}")
    return paths
