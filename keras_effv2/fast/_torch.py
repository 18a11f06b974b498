"""The torch-backend half of the fast inference path (the only torch code in keras_effv2.fast).

``predictor(model)`` returns ``f(x) -> np.ndarray`` that runs ``model(x, training=False)``
under ``torch.inference_mode()`` with the module in ``eval()`` mode: no autograd graph is
recorded, so activations are freed as soon as the next layer has consumed them (the
training-mode call keeps every activation alive until the output is dropped). With
``compile=True`` the call goes through ``torch.compile`` (slow first call; measure).

Example:
    >>> from keras_effv2.fast._torch import predictor  # KERAS_BACKEND=torch only
"""

from __future__ import annotations

import numpy as np
import torch


def predictor(model, compile: bool = False):
    model.eval()
    fn = model
    if compile:
        fn = torch.compile(lambda t: model(t, training=False), dynamic=False)
    device = next((v.value.device for v in model.weights), torch.device("cpu"))

    def predict(x) -> np.ndarray:
        with torch.inference_mode():
            t = torch.as_tensor(np.asarray(x), device=device)
            y = fn(t) if compile else fn(t, training=False)
            return y.detach().cpu().numpy()

    return predict
