"""Write the notebooks in this folder from the cell sources below (reviewable as Python).

Run ``python notebooks/_build.py`` after editing; it rewrites every ``*.ipynb`` here without
outputs. ``tests/test_notebooks.py`` checks the committed notebooks match this script and
executes them headless.

Example:
    $ python notebooks/_build.py
"""

from __future__ import annotations

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
COLAB = "https://colab.research.google.com/github/keras-effv2/keras_effv2/blob/main/notebooks/"
BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "({url}{name}.ipynb)")

SETUP = '''\
# Choose the Keras backend here, before Keras is imported: "tensorflow", "jax" or "torch"
# (a KERAS_BACKEND already set in the environment, as the project's tests do, wins).
import os

os.environ.setdefault("KERAS_BACKEND", "{backend}")
# KERAS_EFFV2_NOTEBOOK_SMALL=1 (set by the project's tests) runs a tiny, fast version.
SMALL = os.environ.get("KERAS_EFFV2_NOTEBOOK_SMALL") == "1"'''

INSTALL = '''\
# On Colab: install keras-effv2{extra_note}
# (skipped when already importable, e.g. in CI).
import importlib.util
import subprocess
import sys

PACKAGES = [  # (module, pip package)
{packages}
]
missing = [pkg for mod, pkg in PACKAGES if importlib.util.find_spec(mod) is None]
if missing:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *missing])'''

PHOTOS = '''\
# The two photos that ship with scikit-learn (CC BY 2.0; credits above).
import os

import sklearn.datasets

PHOTO_DIR = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
PHOTO_PATHS = {name: os.path.join(PHOTO_DIR, f"{name}.jpg") for name in ("china", "flower")}'''

PHOTOS_NOTE = (
    "The photos are the two that ship with scikit-learn (`sklearn/datasets/images`): "
    "`china.jpg` by danielbuechele and `flower.jpg` by vultilion on Flickr, both "
    "[CC BY 2.0](https://creativecommons.org/licenses/by/2.0/) (see `notebooks/README.md`)."
)


def header(name: str, title: str, prose: str, backend: str = "tensorflow",
           packages=(("keras_effv2", "keras-effv2"), ("sklearn", "scikit-learn")),
           extra_note: str = "") -> list:
    return [
        new_markdown_cell(f"{BADGE.format(url=COLAB, name=name)}\n\n# {title}\n\n{prose}"),
        new_code_cell(SETUP.format(backend=backend)),
        new_code_cell(INSTALL.format(extra_note=extra_note, packages="\n".join(
            f'    ("{module}", "{pip}"),' for module, pip in packages))),
    ]


# --------------------------------------------------------------------------------------------
QUICKSTART = header(
    "01_inference_quickstart", "Inference quickstart",
    "Classify photos with pretrained EfficientNetV2 weights on the Keras backend chosen in "
    "the first cell, then run the same model on a second backend in a fresh process and "
    "check that both give the same predictions. The weights download once from the "
    "upstream host (timm's Hugging Face files) and are converted into the Keras cache.\n\n"
    + PHOTOS_NOTE,
) + [
    new_code_cell(PHOTOS),
    new_code_cell('''\
import keras
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

import keras_effv2
from keras_effv2.eval_transforms import pil_eval_transform_for

BACKEND = keras.backend.backend()
print(f"Keras {keras.__version__} on {BACKEND}; keras_effv2 {keras_effv2.__version__}")'''),
    new_markdown_cell(
        "Each weight set carries its own preprocessing: the model normalises inside "
        "(`include_preprocessing=True`, RGB in [0, 255]), and the weight set's eval transform "
        "(`eval_size`, `crop_pct`, crop mode, interpolation) resizes and crops the photo the "
        "way the published accuracy was measured."),
    new_code_cell('''\
VARIANT = "b0" if SMALL else "s"
spec = keras_effv2.get_weights_spec(VARIANT, "imagenet")
model = keras_effv2.EfficientNetV2(VARIANT, weights="imagenet")
print(spec.key, f"eval at {spec.eval_size}px;", spec.preprocessing)'''),
    new_code_cell('''\
transform = pil_eval_transform_for(spec)
photos = {name: Image.open(path).convert("RGB") for name, path in PHOTO_PATHS.items()}
batch = np.stack([transform(image) for image in photos.values()])  # (2, size, size, 3)
probs = np.asarray(model.predict(batch, verbose=0))
top5 = keras_effv2.decode_predictions(probs, top=5)
for name, row in zip(photos, top5, strict=True):
    print(name)
    for _, label, score in row:
        print(f"  {score:7.2%}  {label}")'''),
    new_code_cell('''\
fig, axes = plt.subplots(len(photos), 2, figsize=(10, 3.2 * len(photos)),
                         gridspec_kw={"width_ratios": [1, 1.4]})
for name, row, (ax_img, ax_bar) in zip(photos, top5, axes, strict=True):
    ax_img.imshow(batch[list(photos).index(name)].astype("uint8"))
    ax_img.set_title(f"{name} ({spec.eval_size}px crop)")
    ax_img.axis("off")
    labels = [label.split(",")[0] for _, label, _ in row][::-1]
    ax_bar.barh(labels, [score for _, _, score in row][::-1], color="tab:blue")
    ax_bar.set_xlim(0, 1)
    ax_bar.set_xlabel("probability")
fig.suptitle(f"EfficientNetV2-{VARIANT.upper()} ({spec.key}) on {BACKEND}")
fig.tight_layout()
plt.show()'''),
    new_markdown_cell(
        "## The same model on another backend\n\n"
        "A fresh Python process (Keras picks its backend once per process) loads the same "
        "weights from the cache on a second backend and classifies the same preprocessed "
        "batch. The top-5 classes must agree, and the probabilities differ only by float32 "
        "rounding."),
    new_code_cell('''\
import tempfile

OTHER = "torch" if BACKEND == "tensorflow" else "tensorflow"
work = tempfile.mkdtemp()
np.save(os.path.join(work, "batch.npy"), batch)
script = f"""
import numpy as np, keras_effv2
model = keras_effv2.EfficientNetV2({VARIANT!r}, weights="imagenet")
batch = np.load({os.path.join(work, "batch.npy")!r})
np.save({os.path.join(work, "probs.npy")!r}, np.asarray(model.predict(batch, verbose=0)))
"""
run = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, KERAS_BACKEND=OTHER),
                     capture_output=True, text=True)
if run.returncode:
    raise RuntimeError(f"the {OTHER} process failed:\\n{run.stderr[-3000:]}")
other = np.load(os.path.join(work, "probs.npy"))
other_top5 = keras_effv2.decode_predictions(other, top=5)
print(f"{'photo':<8} {'top-5 equal':>11} {'max |Δ prob|':>13}")
for i, name in enumerate(photos):
    same = [w for w, _, _ in top5[i]] == [w for w, _, _ in other_top5[i]]
    print(f"{name:<8} {str(same):>11} {np.abs(probs[i] - other[i]).max():13.2e}")
    assert same, f"{name}: {BACKEND} and {OTHER} disagree on the top-5"
assert np.abs(probs - other).max() < 1e-4
print(f"{BACKEND} and {OTHER} agree.")'''),
]

# --------------------------------------------------------------------------------------------
PORTING = header(
    "03_porting_weights", "Porting and verifying weights",
    "Convert timm's `tf_efficientnetv2` weights into keras_effv2 with the `keras-effv2 "
    "convert` command (the `weights_tools` converter), check the ported model against timm "
    "on real photos at several resolutions (a parity table and plot), then save the Keras "
    "model and reload it. Needs PyTorch and timm for the reference.\n\n" + PHOTOS_NOTE,
    packages=(("keras_effv2", "keras-effv2"), ("timm", "timm"), ("safetensors", "safetensors"),
              ("sklearn", "scikit-learn")),
    extra_note=", timm and safetensors",
) + [
    new_code_cell(PHOTOS),
    new_code_cell('''\
# torch/timm first: torchvision must be imported before TensorFlow in one process.
import tempfile

import timm
import torch
from safetensors.torch import load_file

# isort: split
import keras
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

import keras_effv2
from keras_effv2.eval_transforms import pil_eval_transform
from keras_effv2.weights import fetch_source

print(f"Keras {keras.__version__} on {keras.backend.backend()}; timm {timm.__version__}")'''),
    new_markdown_cell(
        "Download timm's checkpoint (`model.safetensors` on Hugging Face; "
        "`KERAS_EFFV2_WEIGHTS_MIRROR` replaces the host for offline use) and build the timm "
        "reference from it."),
    new_code_cell('''\
VARIANT = "b0" if SMALL else "s"
spec = keras_effv2.get_weights_spec(VARIANT, "imagenet")
source = fetch_source(spec)
print(spec.url, "->", source)
reference = timm.create_model(f"tf_efficientnetv2_{VARIANT}", pretrained=False)
reference.load_state_dict(load_file(source))
reference.eval()'''),
    new_markdown_cell(
        "Convert with the command line; the file is written atomically. (`--verify` would also "
        "make the converter compare our logits with a float64 timm forward on random inputs "
        "before writing; here the next section checks parity on real photos instead.)"),
    new_code_cell('''\
work = tempfile.mkdtemp()
ported = os.path.join(work, f"efficientnetv2_{VARIANT}.weights.h5")
run = subprocess.run([sys.executable, "-m", "keras_effv2.cli", "convert", "--source", "timm",
                      "--variant", VARIANT, "--checkpoint", source, "--output", ported],
                     capture_output=True, text=True)
print(run.stdout)
if run.returncode:
    raise RuntimeError(f"conversion failed:\\n{run.stderr[-3000:]}")'''),
    new_markdown_cell(
        "## Parity on photos\n\nThe ported model (logits, no in-model normalisation) and "
        "timm get the same normalised photos at several resolutions."),
    new_code_cell('''\
model = keras_effv2.EfficientNetV2(VARIANT, weights=ported, include_preprocessing=False,
                                   classifier_activation=None)
pp = spec.preprocessing
photos = [Image.open(p).convert("RGB") for p in PHOTO_PATHS.values()]
sizes = [128, spec.eval_size] if SMALL else [224, spec.train_size, spec.eval_size]
rows, pairs = [], {}
for size in sizes:
    x = pp.normalize(np.stack([pil_eval_transform(im, size, pp.crop_pct, pp.crop_mode,
                                                  pp.interpolation) for im in photos]))
    ours = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    with torch.no_grad():
        theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    top_ours, top_theirs = np.argsort(-ours)[:, :5], np.argsort(-theirs)[:, :5]
    worst = np.abs(ours - theirs).max()
    rows.append((size, worst, np.abs(ours - theirs).mean(), worst / np.abs(theirs).max(),
                 bool((top_ours == top_theirs).all())))
    pairs[size] = (theirs.ravel(), ours.ravel())
print(f"{'size':>5} {'max |Δ logit|':>14} {'mean |Δ|':>10} {'relative':>9} {'top-5 equal':>12}")
for size, worst, mean, rel, same in rows:
    print(f"{size:>5} {worst:14.2e} {mean:10.2e} {rel:9.1e} {str(same):>12}")
# float32 on both sides: differences of float32 rounding, relative to the logits' scale.
assert all(same and rel < 1e-4 for *_, rel, same in rows)'''),
    new_code_cell('''\
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
theirs, ours = pairs[spec.eval_size]
ax1.scatter(theirs, ours, s=3, alpha=0.4)
lims = [min(theirs.min(), ours.min()), max(theirs.max(), ours.max())]
ax1.plot(lims, lims, "k--", lw=0.8)
ax1.set(xlabel="timm logit", ylabel="keras_effv2 logit",
        title=f"{spec.key} at {spec.eval_size}px: 2 x 1000 logits")
ax2.bar([str(s) for s, *_ in rows], [w for _, w, *_ in rows], color="tab:orange")
ax2.axhline(1e-4 * np.abs(theirs).max(), color="k", ls="--", lw=0.8,
            label="1e-4 x max |logit|")
ax2.set(yscale="log", xlabel="image size", ylabel="max |Δ logit|", title="float32 difference")
ax2.legend()
fig.tight_layout()
plt.show()'''),
    new_markdown_cell(
        "## Save and reload\n\nThe model is a functional graph of serialisable keras_effv2 "
        "layers, so the `.keras` format stores it whole and reloads it without custom code."),
    new_code_cell('''\
path = os.path.join(work, "ported.keras")
model.save(path)
reloaded = keras.saving.load_model(path)
x = pp.normalize(np.stack([pil_eval_transform(im, 128, pp.crop_pct, pp.crop_mode,
                                              pp.interpolation) for im in photos]))
before = keras.ops.convert_to_numpy(model(x, training=False))
after = keras.ops.convert_to_numpy(reloaded(x, training=False))
print(f"{os.path.getsize(path) / 2**20:.1f} MiB; max |Δ| after reload: "
      f"{np.abs(before - after).max():.1e}")
assert np.array_equal(before, after)'''),
]

# --------------------------------------------------------------------------------------------
FEATURES = header(
    "04_features", "Multi-scale features and Grad-CAM",
    "Read the feature maps at the end of every stage of a pretrained EfficientNetV2 (strides "
    "2 to 32) through the model's stable layer names, then compute a Grad-CAM heat map: "
    "which regions of a photo drive the top class. The gradient is taken with whichever "
    "backend is active.\n\n" + PHOTOS_NOTE,
) + [
    new_code_cell(PHOTOS),
    new_code_cell('''\
import keras
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

import keras_effv2
from keras_effv2.eval_transforms import pil_eval_transform_for
from keras_effv2.features import feature_extractor, grad_cam_model, model_feature_endpoints

BACKEND = keras.backend.backend()
VARIANT = "b0" if SMALL else "s"
spec = keras_effv2.get_weights_spec(VARIANT, "imagenet")
model = keras_effv2.EfficientNetV2(VARIANT, weights="imagenet", classifier_activation=None)
transform = pil_eval_transform_for(spec)
photos = {n: Image.open(p).convert("RGB") for n, p in PHOTO_PATHS.items()}
batch = np.stack([transform(im) for im in photos.values()])
print(f"{spec.key} on {BACKEND}, {batch.shape}")'''),
    new_markdown_cell(
        "`keras_effv2.features` names the pyramid levels P1..P5 (the last block at each stride "
        "2..32, as timm's `feature_info`; blocks are named `s{stage}_b{index:02d}`) and builds "
        "a model returning them, sharing the classifier's weights. `grad_cam_model` adds "
        "`head_act`, the final 1x1-conv feature map the classifier pools."),
    new_code_cell('''\
endpoints = model_feature_endpoints(model)
for e in endpoints:
    print(f"{e.level}: {e.layer:>7}  stride {e.reduction:>2}  {e.channels:>4} channels")
pyramid = feature_extractor(model)  # {"P1": ..., "P5": ...}
levels = {k: np.asarray(v) for k, v in pyramid.predict(batch, verbose=0).items()}
cam_outputs = grad_cam_model(model).predict(batch, verbose=0)  # head_act and logits
names = [f"{e.level} {e.layer}" for e in endpoints] + ["head_act"]
maps = [levels[e.level] for e in endpoints] + [np.asarray(cam_outputs["head_act"])]
for name, m in zip(names, maps, strict=True):
    print(f"{name:>12}: {m.shape[1:]}  stride {batch.shape[1] // m.shape[1]}")'''),
    new_code_cell('''\
fig, axes = plt.subplots(len(photos), len(names) + 1, figsize=(2.2 * (len(names) + 1),
                                                                2.4 * len(photos)))
for i, name in enumerate(photos):
    axes[i, 0].imshow(batch[i].astype("uint8"))
    axes[i, 0].set_title(name)
    for j, (layer, m) in enumerate(zip(names, maps, strict=True), 1):
        axes[i, j].imshow(np.abs(m[i]).mean(-1), cmap="viridis")
        axes[i, j].set_title(f"{layer} {m.shape[1]}x{m.shape[2]}", fontsize=8)
for ax in axes.ravel():
    ax.axis("off")
fig.suptitle("mean |activation| per stage")
fig.tight_layout()
plt.show()'''),
    new_markdown_cell(
        "## Grad-CAM\n\nSplit the classifier at `head_act`: `features` gives the last feature "
        "map A, `head` (pool, dropout, dense) gives the logits. Grad-CAM weights each channel "
        "by the mean gradient of the class logit and keeps the positive part of the weighted "
        "sum. The gradient is the only backend-specific step."),
    new_code_cell('''\
head_in = keras.Input(shape=maps[-1].shape[1:])
x = head_in
for layer_name in ("avg_pool", "head_dropout", "predictions"):
    if layer_name in [layer.name for layer in model.layers]:
        x = model.get_layer(layer_name)(x)
head = keras.Model(head_in, x)


def logit_gradient(feature_map, class_index):
    """d logit[class_index] / d feature_map, for one (1, H, W, C) map."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        f = tf.convert_to_tensor(feature_map)
        with tf.GradientTape() as tape:
            tape.watch(f)
            score = head(f, training=False)[0, class_index]
        return tape.gradient(score, f).numpy()
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(lambda f: head(f, training=False)[0, class_index])(
            jax.numpy.asarray(feature_map)))
    import torch

    f = torch.tensor(feature_map, requires_grad=True)
    head(f, training=False)[0, class_index].backward()
    return f.grad.cpu().numpy()


def grad_cam(i):
    a = maps[-1][i:i + 1]
    class_index = int(np.argmax(np.asarray(keras.ops.convert_to_numpy(head(a)))[0]))
    grads = logit_gradient(a, class_index)
    weights = grads.mean(axis=(1, 2))  # (1, C)
    cam = np.maximum((a * weights[:, None, None, :]).sum(-1)[0], 0)
    return cam, class_index, grads


cams = {name: grad_cam(i) for i, name in enumerate(photos)}'''),
    new_markdown_cell(
        "A check on the gradient: after global average pooling and one dense layer, the "
        "gradient of logit c with respect to A[h, w, k] is exactly W[k, c] / (H·W), so "
        "Grad-CAM must equal the class activation map computed from the dense kernel."),
    new_code_cell('''\
kernel = keras.ops.convert_to_numpy(model.get_layer("predictions").kernel)
for i, (cam, c, grads) in enumerate(cams.values()):
    h, w = maps[-1].shape[1:3]
    expected = np.broadcast_to(kernel[:, c] / (h * w), grads.shape[1:])
    np.testing.assert_allclose(grads[0], expected, rtol=1e-4, atol=1e-8)
    cam_closed = np.maximum(maps[-1][i] @ kernel[:, c], 0) / (h * w)
    np.testing.assert_allclose(cam, cam_closed, rtol=1e-3, atol=1e-6)
print("Grad-CAM gradients equal W[:, c] / (H·W) on", BACKEND)'''),
    new_code_cell('''\
labels = keras_effv2.decode_predictions(np.eye(1000)[[c for _, c, _ in cams.values()]], top=1)
fig, axes = plt.subplots(1, len(photos), figsize=(5 * len(photos), 5))
for ax, (i, name), label in zip(axes, enumerate(photos), labels, strict=True):
    cam = cams[name][0]
    cam = cam / cam.max() if cam.max() > 0 else cam
    size = batch.shape[1:3]
    heat = np.asarray(Image.fromarray((255 * cam).astype("uint8")).resize(
        size[::-1], Image.Resampling.BILINEAR)) / 255.0
    ax.imshow(batch[i].astype("uint8"))
    ax.imshow(heat, cmap="jet", alpha=0.45)
    ax.set_title(f"{name}: {label[0][1].split(',')[0]}")
    ax.axis("off")
fig.suptitle(f"Grad-CAM at head_act ({maps[-1].shape[1]}x{maps[-1].shape[2]}), {spec.key}")
fig.tight_layout()
plt.show()'''),
]

# --------------------------------------------------------------------------------------------
TRANSFER = header(
    "02_transfer_learning", "Transfer learning with progressive learning",
    "Fine-tune an ImageNet-pretrained EfficientNetV2 on "
    "[Oxford Flowers-102](https://www.tensorflow.org/datasets/catalog/oxford_flowers102) "
    "(train+validation for training, test for evaluation, as in the paper) with "
    "`keras_effv2.training`, in two phases: first train only the new 102-class head on a "
    "frozen backbone, then unfreeze the backbone (BatchNorm stays frozen: small batches would "
    "spoil its statistics) and train with **progressive learning** (Tan & Le, 2021, §4): the "
    "image size grows stage by stage, and regularisation (dropout, RandAugment, mixup) grows "
    "with it. Plots show loss, accuracy and the image size of every epoch.\n\n"
    "The data pipeline is `tf.data` (TensorFlow Datasets), so TensorFlow must be installed; "
    "the model trains on whichever Keras backend the first cell picks. A GPU runtime is "
    "recommended on Colab. The same recipe runs from a terminal with `keras-effv2 train`.",
    packages=(("keras_effv2", "keras-effv2"), ("tensorflow_datasets", "tensorflow-datasets")),
    extra_note=" and tensorflow-datasets",
) + [
    new_code_cell('''\
import contextlib
import dataclasses
import math

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_effv2
from keras_effv2.fast import optimize_for_training
from keras_effv2.training import (
    ProgressiveSchedule,
    eval_dataset,
    freeze_backbone,
    load_dataset,
    progressive_fit,
    set_bn_trainable,
    train_dataset,
    unfreeze,
)

# KERAS_EFFV2_NOTEBOOK_MOCK_DATA=1 (set by the project's tests, offline) replaces the download
# with random images of the dataset's format (tfds.testing.mock_data); accuracy is then chance.
MOCK = os.environ.get("KERAS_EFFV2_NOTEBOOK_MOCK_DATA") == "1"
tf.get_logger().setLevel("ERROR")  # one retrace per image size is expected
BACKEND = keras.backend.backend()
keras.utils.set_random_seed(0)
print(f"Keras {keras.__version__} on {BACKEND}; mock data: {MOCK}")'''),
    new_code_cell('''\
with tfds.testing.mock_data(num_examples=16) if MOCK else contextlib.nullcontext():
    splits = load_dataset("oxford_flowers102")
    if MOCK:  # materialise the mock examples while the mock is active
        splits = dataclasses.replace(splits, train=splits.train.cache(),
                                     test=splits.test.cache())
        for _ in splits.train.concatenate(splits.test):
            pass
print(f"{splits.num_classes} classes, {splits.train_examples} training and "
      f"{splits.test_examples} test images")'''),
    new_markdown_cell(
        "## The plan\n\nPhase 1 trains the head at the final size. Phase 2 runs a "
        "`ProgressiveSchedule`: stage *i* of *N* interpolates linearly from the first to the "
        "last setting (the paper's Algorithm 1)."),
    new_code_cell('''\
VARIANT = "b0"
BATCH = 8 if SMALL else 32
HEAD_EPOCHS = 1 if SMALL else 3
EPOCHS = 2 if SMALL else 12  # phase 2, split evenly over the stages
STEPS = 2 if SMALL else splits.train_examples // BATCH
EVAL_SIZE = 64 if SMALL else keras_effv2.get_variant(VARIANT).eval_size
schedule = ProgressiveSchedule(
    num_stages=2 if SMALL else 4,
    image_size=(32, 64) if SMALL else (128, keras_effv2.get_variant(VARIANT).train_size),
    randaug_magnitude=(5, 15), mixup_alpha=(0.0, 0.2), dropout_rate=(0.1, 0.3),
    name="flowers")
stages = schedule.stages()
for stage in stages:
    print(stage.to_dict())
# Validation after every epoch on (a part of) the test split; the full test split at the end.
val_splits = splits if SMALL else dataclasses.replace(splits, test=splits.test.take(1024))
val_ds = eval_dataset(val_splits, EVAL_SIZE, BATCH)'''),
    new_markdown_cell(
        "## Phase 1: a new head on a frozen backbone\n\n`classes=102` keeps the pretrained "
        "backbone and starts a fresh classifier; `freeze_backbone` leaves only the head "
        "trainable (in Keras 3 a frozen BatchNormalization also runs in inference mode). "
        "Images stay RGB in [0, 255]: the model normalises inside, with the statistics of "
        "the weight set it loaded. Training goes through "
        "`keras_effv2.fast.optimize_for_training(model)`: the same layers and variables "
        "with a faster training step on torch and JAX (on TensorFlow it is the model "
        "itself); training it trains `model`."),
    new_code_cell('''\
model = keras_effv2.EfficientNetV2(VARIANT, weights="imagenet", classes=splits.num_classes)
print("trainable:", freeze_backbone(model))


def snapshot(name, index=0):
    return np.array(keras.ops.convert_to_numpy(model.get_layer(name).weights[index]))


stem_before, stem_bn_mean = snapshot("stem_conv"), snapshot("stem_bn", 2)
loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
train_model = optimize_for_training(model)  # same variables, faster step on torch/JAX
print("training through", type(train_model).__name__, "on", BACKEND)
train_model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-5), loss=loss,
                    metrics=metrics)
head = train_model.fit(train_dataset(splits, stages[-1], BATCH), epochs=HEAD_EPOCHS,
                       steps_per_epoch=STEPS, validation_data=val_ds, verbose=2)
assert np.array_equal(stem_before, snapshot("stem_conv")), "the frozen backbone changed"'''),
    new_markdown_cell(
        "## Phase 2: unfreeze, then progressive learning\n\nEverything trains except "
        "BatchNorm, at a lower learning rate with cosine decay over all of phase 2. "
        "`progressive_fit` builds each stage's data (size, RandAugment, mixup), sets the "
        "stage's dropout rate and rebuilds the train step once per stage. It trains "
        "through the fast training step by default (`fast_path=False` trains the plain "
        "model) and reports which step trained and each stage's images per second."),
    new_code_cell('''\
unfreeze(model)
print(set_bn_trainable(model, False), "BatchNormalization layers stay frozen")
optimizer = keras.optimizers.AdamW(
    keras.optimizers.schedules.CosineDecay(2e-4, EPOCHS * STEPS), weight_decay=1e-5)
model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
result = progressive_fit(model, lambda stage: train_dataset(splits, stage, BATCH), schedule,
                         epochs=EPOCHS, steps_per_epoch=STEPS,
                         validation_fn=lambda stage: val_ds, verbose=2)
print("trained through", result.trained_by)
print("images/s per stage:", [s["images_per_second"] for s in result.stages])
assert not np.array_equal(stem_before, snapshot("stem_conv")), "phase 2 did not train"
assert np.array_equal(stem_bn_mean, snapshot("stem_bn", 2)), "frozen BN statistics moved"
history = {k: head.history[k] + result.history[k]
           for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
sizes = [stages[-1].image_size] * HEAD_EPOCHS + result.history["image_size"]
assert all(math.isfinite(v) for v in history["loss"] + history["val_loss"])'''),
    new_code_cell('''\
epochs = np.arange(1, len(sizes) + 1)
unfrozen = HEAD_EPOCHS + 0.5
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for key, ax in (("loss", axes[0]), ("accuracy", axes[1])):
    ax.plot(epochs, history[key], "o-", label="train")
    ax.plot(epochs, history[f"val_{key}"], "s-", label=f"test @{EVAL_SIZE}px")
    ax.set(title=key, xlabel="epoch")
axes[2].step(epochs, sizes, where="mid", color="tab:green")
axes[2].set(title="training image size", xlabel="epoch", ylabel="px")
for ax in axes:
    ax.axvline(unfrozen, color="grey", ls="--", lw=0.8)
axes[0].legend()
axes[2].text(unfrozen, axes[2].get_ylim()[0], " unfreeze", color="grey", va="bottom")
fig.suptitle(f"EfficientNetV2-{VARIANT.upper()} on Flowers-102 ({BACKEND}): phase 1 = head, "
             "phase 2 = progressive stages")
fig.tight_layout()
plt.show()'''),
    new_code_cell('''\
test_loss, test_acc = model.evaluate(eval_dataset(splits, EVAL_SIZE, BATCH), verbose=0)
print(f"test at {EVAL_SIZE}px: loss {test_loss:.3f}, accuracy {test_acc:.2%} "
      f"(chance {1 / splits.num_classes:.2%})")
for record in result.stages:
    print({k: record[k] for k in ("index", "image_size", "dropout_rate", "randaug_magnitude",
                                  "mixup_alpha", "epochs")})'''),
]

NOTEBOOKS = {
    "01_inference_quickstart": QUICKSTART,
    "02_transfer_learning": TRANSFER,
    "03_porting_weights": PORTING,
    "04_features": FEATURES,
}


def build(name: str, cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"name": f"{name}.ipynb", "provenance": []},
    }
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = build(name, cells)
        nbformat.validate(nb)
        path = os.path.join(HERE, f"{name}.ipynb")
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf8") as f:
            nbformat.write(nb, f)
        os.replace(tmp, path)
        print("wrote", path)


if __name__ == "__main__":
    main()
