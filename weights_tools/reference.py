"""Child process of :func:`weights_tools.verify.reference_logits`: a reference forward where
the parent may not import torchvision (TensorFlow ran ops there first).

``python -m weights_tools.reference SOURCE VARIANT CHECKPOINT CLASSES IMAGES.npy OUT.npy``
reads ``CHECKPOINT`` with keras_effv2's reader for ``SOURCE`` (``timm`` or ``mmpretrain``),
runs the source implementation on the channels-last images and saves the logits (``CLASSES``
0: a file without a classifier; pooled features).

Example:
    $ python -m weights_tools.reference mmpretrain b0 b0.pth 1000 x.npy logits.npy
"""

import sys

import torchvision  # noqa: F401  (first: before anything imports TensorFlow)


def main(argv) -> int:
    import numpy as np

    from keras_effv2.weights.convert import read_checkpoint
    from weights_tools import verify

    source, variant, checkpoint, classes, images, out = argv
    tensors, _ = read_checkpoint(source, checkpoint, variant)
    reference = getattr(verify, verify.TORCHVISION_REFERENCES[source])
    logits = reference(variant, tensors, int(classes) or None, np.load(images))
    np.save(out, logits)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
