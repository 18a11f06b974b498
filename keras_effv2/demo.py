"""The main job on an embedded default: train EfficientNetV2-B0 on scikit-learn's digits.

The 1,797 8x8 handwritten digits that ship with scikit-learn (no download) are upscaled to
RGB 64x64, split 80/20 (stratified, fixed seed), and EfficientNetV2-B0 is trained from
scratch with ``model.fit``; the test accuracy is printed and the model saved.

Example:
    python -m keras_effv2.demo --epochs 15 --output runs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import time

import keras
import numpy as np

import keras_effv2

IMAGE_SIZE = 64


def load_digits_rgb(image_size: int = IMAGE_SIZE, seed: int = 0):
    """scikit-learn digits as ([0, 255] RGB images, labels), split into train and test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype("float32") * (255.0 / 16.0)  # 0..16 -> 0..255
    images = keras.ops.convert_to_numpy(
        keras.ops.image.resize(images[..., None], (image_size, image_size),
                               interpolation="bilinear", data_format="channels_last")
    )
    images = np.repeat(np.clip(images, 0, 255), 3, axis=-1)
    if keras.config.image_data_format() == "channels_first":
        images = images.transpose(0, 3, 1, 2)
    return train_test_split(images, digits.target, test_size=0.2, random_state=seed,
                            stratify=digits.target)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default="runs/demo")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = load_digits_rgb()
    model = keras_effv2.EfficientNetV2B0(weights=None, classes=10, dropout_rate=0.2)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.time()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              validation_split=0.1, verbose=2)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=128, verbose=0)
    result = {"backend": keras.backend.backend(), "test_accuracy": round(float(accuracy), 4),
              "train_seconds": round(time.time() - start, 1), "epochs": args.epochs}
    os.makedirs(args.output, exist_ok=True)
    model.save(os.path.join(args.output, "efficientnetv2_b0_digits.keras"))
    with open(os.path.join(args.output, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
