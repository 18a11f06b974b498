"""What ``keras-effv2 predict --weights`` names, resolved to a model and its eval preprocessing.

Accepted:

* a registered tag (``imagenet``, ``imagenet21k``, ``imagenet21k-ft1k`` or timm's ``in1k``...)
  or an mmpretrain model-zoo name (``efficientnetv2-s_3rdparty_in1k``: its variant is the
  default ``--model``): the weight set's own normalisation and eval resize/crop;
* a ``.weights.h5`` file (weights only, as ``keras-effv2 convert`` or ``model.save_weights``
  write): ``--model`` names its variant; the head width (1000 or 21843 classes) is read from
  the file. The file holds no preprocessing, so ``--preprocessing TAG`` names the weight set
  whose normalisation and eval transform to use; without it the variant's built-in default
  (what ``include_preprocessing=True`` builds, e.g. ``b0.in1k``) is used and a note says so;
* a ``.keras`` model file: its own normalisation layer if it has one (else the chosen weight
  set's), a softmax if it outputs logits, its fixed input size if it has one; the variant comes
  from ``--model`` or the model's name (``efficientnetv2_<variant>``).

Example:
    >>> src = resolve("imagenet", "b0")  # nothing loaded until src.load()
    >>> src.name, src.eval_size
    ('b0.in1k', 224)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from keras_effv2.cli.errors import FAILURE, CliError

ACCEPTED = ("accepted: a registered tag (imagenet, imagenet21k, imagenet21k-ft1k or in1k, in21k, "
            "in21k_ft_in1k), an mmpretrain model-zoo name (efficientnetv2-s_3rdparty_in1k...), "
            "a path to a '.weights.h5' file (with --model) or a '.keras' model "
            "file")
SUFFIXES = (".weights.h5", ".keras")
DEFAULT_VARIANT = "s"


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved ``--weights``: ``load()`` returns the model (softmax or logits, see below).

    ``spec`` is the weight set whose eval resize/crop (and, where ``normalize``, mean/std)
    the images get; ``softmax`` when the model outputs logits.
    """

    name: str
    variant: str
    spec: object
    num_classes: int
    eval_size: int
    load: Callable
    normalize: bool = False
    softmax: bool = False
    notes: tuple[str, ...] = ()

    def transform(self, image):
        """PIL image -> ``(eval_size, eval_size, 3)`` float32 in ``[0, 255]``."""
        from keras_effv2.eval_transforms import pil_eval_transform

        pp = self.spec.preprocessing
        return pil_eval_transform(image, self.eval_size, pp.crop_pct, pp.crop_mode,
                                  pp.interpolation)


def _variant(name) -> str:
    from keras_effv2.configs import get_variant

    try:
        return get_variant(name).name
    except ValueError as e:
        raise CliError(str(e)) from e


def _spec(variant: str, tag: str):
    from keras_effv2.weights import get_weights_spec

    try:
        return get_weights_spec(variant, tag)
    except ValueError as e:
        raise CliError(str(e)) from e


def _check_classes(n, what: str) -> int:
    from keras_effv2.labels import CLASS_FILES

    if n not in CLASS_FILES:
        raise CliError(f"{what} has a {n}-class output; predict names ImageNet-1k (1000) or "
                       "ImageNet-21k (21843) classes only.")
    return n


def _preprocessing_spec(variant: str, preprocessing, path: str, has_normalisation: bool = False):
    """``(spec, notes)``: the named weight set's, or the variant's default with a note."""
    from keras_effv2.weights import default_weights_spec

    if preprocessing is not None:
        return _spec(variant, preprocessing), ()
    spec = default_weights_spec(variant)
    pp = spec.preprocessing
    missing = "eval resize/crop"
    used = f"{pp.crop_mode} crop, crop_pct {pp.crop_pct}, {pp.interpolation}"
    if not has_normalisation:
        missing, used = "preprocessing", f"mean {pp.mean}, std {pp.std}; {used}"
    return spec, (f"{path!r} records no {missing}; using the variant's built-in default, "
                  f"{spec.key}'s ({used}). Pass --preprocessing TAG to use another weight "
                  "set's.",)


def _from_tag(weights: str, model, preprocessing) -> Source:
    if preprocessing is not None:
        raise CliError(f"--preprocessing applies to a .weights.h5 or .keras file; the weight tag "
                       f"{weights!r} always uses its own preprocessing.")
    from keras_effv2.weights import get_weights_spec
    from keras_effv2.weights.mmpretrain_zoo import parse_zoo_name

    zoo = parse_zoo_name(weights)
    variant = _variant(model or (zoo[0] if zoo else DEFAULT_VARIANT))
    try:
        spec = get_weights_spec(variant, weights)
    except ValueError as e:
        raise CliError(f"{e} Or pass a path to a '.weights.h5' or '.keras' file.") from e

    def load():
        import contextlib
        import sys

        from keras_effv2.applications import EfficientNetV2
        from keras_effv2.weights import CheckpointError, PortingError, WeightsDownloadError

        try:  # download progress goes to stderr: stdout holds the results (maybe JSON) only
            with contextlib.redirect_stdout(sys.stderr):
                return EfficientNetV2(spec.variant, weights=spec.alias)
        except (WeightsDownloadError, PortingError, CheckpointError) as e:
            raise CliError(f"could not load weights {spec.key!r}: {e}", FAILURE) from e

    return Source(spec.key, spec.variant, spec, spec.num_classes, spec.eval_size, load)


def read_layout(path: str):
    """What the ``.weights.h5`` file holds (:class:`keras_effv2.weights.keras_h5.FileSummary`);
    :class:`CliError` when it is not a weights file of an EfficientNetV2 with its head."""
    from keras_effv2.weights import CheckpointError
    from keras_effv2.weights.keras_h5 import summarize

    try:
        layout = summarize(path)
    except CheckpointError as e:
        raise CliError(f"{e} {ACCEPTED[0].upper()}{ACCEPTED[1:]}.") from e
    if layout.classes is None:
        raise CliError(f"{path!r} holds no classifier (weights saved with include_top=False?); "
                       "predict needs a model with its head.")
    return layout


def _from_weights_file(path: str, model, preprocessing) -> Source:
    if model is None:
        raise CliError(f"{path!r} holds weights only: name its variant with --model "
                       "(b0 b1 b2 b3 s m l xl).")
    variant = _variant(model)
    layout = read_layout(path)
    fits = layout.variants()
    if variant not in fits:
        found = (f"EfficientNetV2-{fits[0].upper()} (--model {fits[0]})" if fits
                 else "no EfficientNetV2 variant")
        raise CliError(f"{path!r} does not fit EfficientNetV2-{variant.upper()}: it holds "
                       f"{layout.blocks} blocks, a {layout.stem}-channel stem and a "
                       f"{layout.head}-channel head, which is {found}.")
    classes = _check_classes(layout.classes, repr(path))
    spec, notes = _preprocessing_spec(variant, preprocessing, path)

    def load():
        from keras_effv2.applications import EfficientNetV2

        try:
            return EfficientNetV2(variant, weights=path, classes=classes,
                                  include_preprocessing=spec.preprocessing)
        except ValueError as e:
            first = str(e).strip().splitlines()[0].rstrip(":")
            raise CliError(f"{path!r} does not load into EfficientNetV2-{variant.upper()} "
                           f"({first}).") from e

    return Source(path, variant, spec, classes, spec.eval_size, load, notes=notes)


def _keras_model_variant(keras_model, model, path: str) -> str:
    from keras_effv2.configs import VARIANTS

    named = next((v for v, s in VARIANTS.items() if keras_model.name == s.model_name), None)
    if model is None and named is None:
        raise CliError(f"cannot tell the variant of {path!r} (model name "
                       f"{keras_model.name!r}): name it with --model (b0 b1 b2 b3 s m l xl).")
    variant = _variant(model) if model is not None else named
    if named is not None and named != variant:
        raise CliError(f"{path!r} is EfficientNetV2-{named.upper()} (model name "
                       f"{keras_model.name!r}), not --model {model!r}.")
    return variant


def _from_keras_file(path: str, model, preprocessing) -> Source:
    import keras

    import keras_effv2.layers  # noqa: F401  (registers the custom layers for loading)

    try:
        keras_model = keras.saving.load_model(path)
    except Exception as e:  # Keras raises many types for a bad archive
        raise CliError(f"cannot load {path!r} as a Keras model ({type(e).__name__}: {e}); "
                       f"{ACCEPTED}.") from e
    variant = _keras_model_variant(keras_model, model, path)
    shape_in, shape_out = keras_model.input_shape, keras_model.output_shape
    if not (isinstance(shape_in, tuple) and len(shape_in) == 4):
        raise CliError(f"{path!r} takes input {shape_in}; predict needs one image input.")
    if not (isinstance(shape_out, tuple) and len(shape_out) == 2):
        raise CliError(f"{path!r} outputs shape {shape_out}; predict needs a classifier with "
                       "one (batch, classes) output.")
    classes = _check_classes(shape_out[-1], repr(path))
    layer = next((lay for lay in keras_model.layers if lay.name == "preprocessing"), None)
    normalize = type(layer).__name__ != "InputNormalization"
    spec, notes = _preprocessing_spec(variant, preprocessing, path, not normalize)
    softmax = getattr(keras_model.layers[-1], "activation", None) is not keras.activations.softmax
    if normalize:
        notes += (f"{path!r} has no normalisation layer: images are normalised with "
                  f"{spec.key}'s mean/std before the model.",)
    if softmax:
        notes += (f"{path!r} outputs logits: scores are their softmax.",)
    size = shape_in[1] if keras.config.image_data_format() == "channels_last" else shape_in[2]
    return Source(path, variant, spec, classes, size or spec.eval_size, lambda: keras_model,
                  normalize=normalize, softmax=softmax, notes=notes)


def resolve(weights: str, model=None, preprocessing=None) -> Source:
    """Resolve ``--weights`` (tag or path), ``--model`` and ``--preprocessing``."""
    from keras_effv2.weights import is_weights_tag

    weights = os.fspath(weights)
    suffix = next((s for s in SUFFIXES if weights.endswith(s)), None)
    if suffix is None:
        if is_weights_tag(weights) or (os.sep not in weights and not os.path.exists(weights)
                                       and "." not in weights):
            return _from_tag(weights, model, preprocessing)
        raise CliError(f"--weights {weights!r} is neither a registered tag nor a file ending in "
                       f"'.weights.h5' or '.keras'; {ACCEPTED}.")
    if not os.path.isfile(weights):
        raise CliError(f"{suffix} file {weights!r} not found; {ACCEPTED}.")
    if suffix == ".keras":
        return _from_keras_file(weights, model, preprocessing)
    return _from_weights_file(weights, model, preprocessing)
