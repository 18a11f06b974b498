"""Training-curve plot (loss, accuracy, per-stage image size) as a PNG, written atomically.

Training accuracy is measured on the augmented (RandAugment, mixup) batches; ``val_*`` is the
held-out split, unaugmented, at the stage's image size (``run_recipe`` evaluates it after every
epoch), so the plot shows generalisation, not only the fit to the augmented data.

Example:
    >>> plot_history(result.history, "runs/demo/curves.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile

LABELS = {"loss": "train (augmented)", "accuracy": "train (augmented)",
          "val_loss": "held-out (stage size)", "val_accuracy": "held-out (stage size)"}


def plot_history(history: dict, path: str, title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = history.get("epoch") or list(range(1, len(history.get("loss", [])) + 1))
    panels = [("loss", ["loss", "val_loss"]), ("accuracy", ["accuracy", "val_accuracy"]),
              ("image size / dropout", ["image_size", "dropout_rate"])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (label, keys) in zip(axes, panels, strict=True):
        if label.startswith("image"):
            if "image_size" in history:
                ax.step(epochs, history["image_size"], where="post", linewidth=4, alpha=0.6,
                        label="image size (px)")
                ax.set_ylabel("px")
            if "dropout_rate" in history:
                twin = ax.twinx()
                twin.step(epochs, history["dropout_rate"], where="post", color="C3",
                          label="dropout")
                twin.set_ylabel("dropout", color="C3")
        else:
            for key in keys:
                if key in history:
                    ax.plot(epochs, history[key], marker=".", label=LABELS.get(key, key))
            values = [v for key in keys for v in history.get(key, [])]
            if label == "loss" and values and min(values) > 0:
                ax.set_yscale("log")  # an early held-out loss (BN statistics) dwarfs the rest
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
