"""Execute the notebooks headless and offline, top to bottom; any raising cell fails.

Small setting (``KERAS_EFFV2_NOTEBOOK_SMALL=1``: B0, few images, tiny training), weights
from a folder mirror (``KERAS_EFFV2_WEIGHTS_MIRROR``) holding a random, well-conditioned
timm B0, datasets from ``tfds.testing.mock_data`` (``KERAS_EFFV2_NOTEBOOK_MOCK_DATA=1``).
The kernel inherits ``KERAS_BACKEND``: the quickstart runs on every backend, the other
notebooks on the backend listed in ``LEGS`` (CI time).
"""

import importlib.util
import os
import subprocess
import sys
import urllib.parse

import keras
import pytest

from keras_effv2.weights import MIRROR_ENV, WEIGHTS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("timm")
pytest.importorskip("safetensors")
import helpers_weights as hw  # noqa: E402
from helpers_timm import make_timm_model, timm_state_dict  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
LEGS = {
    "01_inference_quickstart": ("tensorflow", "jax", "torch"),
    "02_transfer_learning": ("tensorflow",),
    "03_porting_weights": ("torch",),
    "04_features": ("jax",),
}
HERE = [name for name, legs in LEGS.items() if keras.backend.backend() in legs]


def load_build():
    spec = importlib.util.spec_from_file_location("nb_build", os.path.join(NB_DIR, "_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_is_listed_and_matches_build_script():
    build = load_build()
    names = sorted(f[:-6] for f in os.listdir(NB_DIR) if f.endswith(".ipynb"))
    assert names == sorted(LEGS) == sorted(build.NOTEBOOKS)
    for name in names:
        with open(os.path.join(NB_DIR, f"{name}.ipynb"), encoding="utf8") as f:
            committed = nbformat.read(f, as_version=4)
        expected = build.build(name, build.NOTEBOOKS[name])
        assert [c.source for c in committed.cells] == [c.source for c in expected.cells], name
        assert all(not c.get("outputs") for c in committed.cells), f"{name}: outputs committed"
        first = committed.cells[0].source
        assert first.startswith("[![Open In Colab]") and (
            f"colab.research.google.com/github/keras-effv2/keras_effv2/blob/main/notebooks/"
            f"{name}.ipynb") in first
        assert 'os.environ.setdefault("KERAS_BACKEND"' in committed.cells[1].source
        assert "pip" in committed.cells[2].source


def test_notebook_cells_are_ruff_clean():
    """``make lint`` checks the notebooks: the generated cells and the generator pass ruff.

    The files are named explicitly, so they are checked whatever ruff's default includes."""
    files = sorted(os.path.join(NB_DIR, f) for f in os.listdir(NB_DIR)
                   if f.endswith((".ipynb", ".py")))
    assert len(files) == len(LEGS) + 1
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *files],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    with open(os.path.join(ROOT, "Makefile"), encoding="utf8") as f:
        lint = next(line for line in f if "ruff check" in line)
    assert "notebooks" in lint.split()


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    mirror = tmp_path_factory.mktemp("mirror")
    st = mirror / urllib.parse.urlsplit(WEIGHTS["b0.in1k"].url).path.lstrip("/")
    st.parent.mkdir(parents=True)
    hw.write_safetensors(timm_state_dict(make_timm_model("b0", image_size=64)), st)
    return {
        "KERAS_EFFV2_NOTEBOOK_SMALL": "1",
        "KERAS_EFFV2_NOTEBOOK_MOCK_DATA": "1",
        MIRROR_ENV: str(mirror),
        "KERAS_HOME": str(tmp_path_factory.mktemp("keras_home")),
        "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }


@pytest.mark.parametrize("name", HERE)
def test_notebook_runs(name, offline_env, tmp_path, monkeypatch):
    for key, value in offline_env.items():
        monkeypatch.setenv(key, value)
    with open(os.path.join(NB_DIR, f"{name}.ipynb"), encoding="utf8") as f:
        nb = nbformat.read(f, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert figures, f"{name}: no matplotlib figure was displayed"
    text = "".join(o.get("text", "") for o in outputs)
    assert f"on {keras.backend.backend()}" in text  # the kernel ran on this leg's backend
