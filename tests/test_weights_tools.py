"""weights_tools: ``evaluate`` (eval transforms, image folder, tfds), ``convert-all``, and
two processes loading the same tag into one cache at once."""

import json
import os
import subprocess
import sys
import urllib.parse

import numpy as np
import pytest

from keras_effv2 import pretrained
from keras_effv2 import weights as weights_module
from keras_effv2.weights import WEIGHTS

pytest.importorskip("timm")
pytest.importorskip("safetensors")
import helpers_weights as hw  # noqa: E402
from helpers_timm import make_timm_model, timm_state_dict  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def url_path(url):
    return urllib.parse.urlsplit(url).path.lstrip("/")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A folder mirror with b0.in1k (timm safetensors) and b0.in21k_ft_in1k (automl .tgz)
    made from one random, well-conditioned timm model."""
    state = timm_state_dict(make_timm_model("b0", image_size=64))
    root = tmp_path_factory.mktemp("mirror")
    st = root / url_path(WEIGHTS["b0.in1k"].url)
    st.parent.mkdir(parents=True)
    hw.write_safetensors(state, st)
    ckpt = hw.write_automl_checkpoint(state, "b0", tmp_path_factory.mktemp("ck") / "ckpt")
    tgz = root / url_path(WEIGHTS["b0.in21k_ft_in1k"].url)
    tgz.parent.mkdir(parents=True)
    hw.write_tgz(ckpt, tgz)
    return root


@pytest.fixture
def keras_home(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv(pretrained.MIRROR_ENV, str(mirror))
    return tmp_path / "keras_home"


CHILD = r"""
import os, sys, time
import keras_effv2
from keras_effv2 import pretrained
from keras_effv2.weights import WEIGHTS
ready = sys.argv[1]
open(ready + "." + sys.argv[2], "w").close()
deadline = time.time() + 120
while not all(os.path.exists(f"{ready}.{i}") for i in (0, 1)) and time.time() < deadline:
    time.sleep(0.01)
path, model = pretrained.cached_weights(WEIGHTS["b0.in1k"])
keras_effv2.EfficientNetV2B0(weights="imagenet")
print("CONVERTED" if model is not None else "CACHED", path)
"""


def test_two_processes_load_same_tag_at_once(keras_home, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    ready = str(tmp_path / "ready")
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, ready, str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    outs = sorted(out.split()[-2] for out, _ in results)
    assert outs == ["CACHED", "CONVERTED"], results
    root = keras_home / "models" / "keras_effv2"
    name = WEIGHTS["b0.in1k"].converted_name
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [name, name + ".sha256"]
    assert (root / (name + ".sha256")).read_text().strip() == pretrained.sha256_file(root / name)
