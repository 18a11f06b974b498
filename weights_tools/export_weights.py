"""``python -m weights_tools export``: a keras_effv2 model's weights as a timm or mmpretrain
state dict (:func:`keras_effv2.weights.export`), from a ``.weights.h5`` file, a registered
weight set or a ``.keras`` model file.

Example:
    $ python -m weights_tools export --weights b0_pets.weights.h5 --variant b0 \\
        --format timm --output b0_pets.safetensors
    $ python -m weights_tools export --weights finetuned.keras --format mmpretrain \\
        --output finetuned.pth
"""

from __future__ import annotations

import os

from keras_effv2.weights.mmpretrain_zoo import parse_zoo_name


def load_model(weights: str, variant: str | None):
    """The logits model (no preprocessing) holding ``weights``: a ``.keras`` file, a
    ``.weights.h5`` file (``variant`` needed; head width from the file) or a tag."""
    import keras

    import keras_effv2
    from keras_effv2.weights import file_classes, is_weights_tag

    if weights.endswith(".keras"):
        import keras_effv2.layers  # noqa: F401  (registers the custom layers)

        return keras.saving.load_model(weights)
    zoo = parse_zoo_name(weights)
    variant = variant or (zoo[0] if zoo else None)
    if variant is None:
        raise ValueError(f"--weights {weights!r}: name the variant with --variant "
                         "(b0 b1 b2 b3 s m l xl).")
    if is_weights_tag(weights):
        return keras_effv2.EfficientNetV2(variant, weights=weights, include_preprocessing=False,
                                          classifier_activation=None)
    if not os.path.isfile(weights):
        raise ValueError(f"--weights {weights!r} is neither a registered tag nor an existing "
                         "'.weights.h5' or '.keras' file.")
    classes = file_classes(weights)
    return keras_effv2.EfficientNetV2(variant, weights=weights, include_top=classes is not None,
                                      classes=classes or 1000, include_preprocessing=False,
                                      classifier_activation=None)


def run(args) -> str:
    from keras_effv2.weights import export

    model = load_model(args.weights, args.variant)
    return export(model, args.output, format=args.format, variant=args.variant)
