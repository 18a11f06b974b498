"""The docstring examples of the public API run as doctests (TensorFlow leg only).

Every public module of ``keras_effv2`` and ``weights_tools`` (no ``_private`` module, no
``__main__``) is imported and its examples run with ``doctest`` inside a temporary working
directory, so an example that writes a file leaves nothing behind. One backend is enough: the
examples are backend-neutral, and running them three times would triple the cost. Examples
that would download weights are written as comments or carry ``# doctest: +SKIP``.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import keras
import pytest

import keras_effv2
import weights_tools

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="docstring examples run once, on the TensorFlow leg (they are backend-neutral)",
)

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def public_modules() -> list[str]:
    names = []
    for package in (keras_effv2, weights_tools):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return sorted(names)


def run_doctests(module) -> doctest.TestResults:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(module, module.__name__):
        runner.run(test)
    return runner.summarize(verbose=False)


def test_public_modules_have_examples():
    """The walk finds the public API (a broken walk would make every case below vacuous)."""
    names = public_modules()
    assert {"keras_effv2.applications", "keras_effv2.training.finetune",
            "keras_effv2.weights.registry", "weights_tools.verify"} <= set(names)
    assert not [n for n in names if n.endswith("__main__")]


@pytest.mark.parametrize("name", public_modules())
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = run_doctests(module)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
