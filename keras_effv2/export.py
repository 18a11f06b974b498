"""Export a keras_effv2 model to SavedModel, TFLite (float32/float16/int8) or ONNX, verified.

Every export runs the artifact (reloaded SavedModel, TFLite interpreter, onnxruntime) on the
same input as the Keras model and fails if the outputs differ by more than the format's
tolerance; the artifact is written to a temporary path next to the target and renamed into
place only after it passed, so nothing half-written is left. This is the only module with
backend- and format-specific code. Which backend can write which format:

========================  ===========================  ===============================
format                    backends                     checked with
========================  ===========================  ===============================
``saved_model``           tensorflow, jax (jax2tf)     ``tf.saved_model.load`` serve
``tflite``                tensorflow                   TFLite interpreter
``tflite-fp16``           tensorflow                   TFLite interpreter
``tflite-int8``           tensorflow                   TFLite interpreter
``onnx``                  torch (torch.onnx),          onnxruntime
                          tensorflow (tf2onnx)
========================  ===========================  ===============================

Example:
    >>> import keras_effv2
    >>> from keras_effv2.export import export_model
    >>> model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(224, 224, 3))
    >>> result = export_model(model, "b0.onnx", "onnx")  # doctest: +SKIP
    >>> result.max_abs_diff < result.tolerance  # doctest: +SKIP
    True

Command line (``python -m keras_effv2.export --help``)::

    KERAS_BACKEND=torch python -m keras_effv2.export b0 --weights imagenet -f onnx -o b0.onnx
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile

import keras
import numpy as np


class ExportError(RuntimeError):
    """The format cannot be written on this backend, or the artifact failed verification."""


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """How one format is written and checked.

    The artifact passes when ``max|artifact - keras| <= atol + rtol * max|keras|``.
    """

    name: str
    keras_format: str
    backends: tuple[str, ...]
    suffix: str
    atol: float
    rtol: float
    dynamic_batch: bool
    quantization: str | None = None
    description: str = ""


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("saved_model", "tf_saved_model", ("tensorflow", "jax"), "", 1e-5, 1e-5,
                     True, description="TensorFlow SavedModel (serving signature 'serve')"),
        ExportFormat("tflite", "litert", ("tensorflow",), ".tflite", 1e-5, 1e-4, True,
                     description="TFLite / LiteRT, float32"),
        ExportFormat("tflite-fp16", "litert", ("tensorflow",), ".tflite", 1e-4, 2e-2, True,
                     "float16", "TFLite with float16 weights (half the size)"),
        ExportFormat("tflite-int8", "litert", ("tensorflow",), ".tflite", 1e-3, 0.1, True,
                     "dynamic-int8", "TFLite, dynamic-range int8 weights (quarter size)"),
        # JAX: Keras 3.15 routes ONNX through jax2onnx, which is not a dependency here.
        ExportFormat("onnx", "onnx", ("torch", "tensorflow"), ".onnx", 1e-5, 1e-4, True,
                     description="ONNX (torch.onnx on torch, tf2onnx on tensorflow)"),
    )
}
PACKAGES = {"onnx": "onnx onnxruntime (torch: onnxscript; tensorflow: tf2onnx)"}


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where the artifact went and how close it is to the Keras model."""

    path: str
    format: str
    max_abs_diff: float
    tolerance: float
    batch_sizes: tuple[int, ...]


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ValueError(f"Unknown export format {name!r}. Accepted: {', '.join(FORMATS)}.")
    return FORMATS[name]


def check_backend(fmt: ExportFormat, backend: str | None = None) -> None:
    """Raise :class:`ExportError` when the current Keras backend cannot write ``fmt``."""
    backend = backend or keras.backend.backend()
    if backend not in fmt.backends:
        raise ExportError(
            f"format {fmt.name!r} cannot be exported on the {backend!r} backend; use "
            f"KERAS_BACKEND={fmt.backends[0]} (supported: {', '.join(fmt.backends)})."
        )


def _converter_kwargs(fmt: ExportFormat) -> dict:
    if fmt.quantization is None:
        return {}
    import tensorflow as tf

    kwargs = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if fmt.quantization == "float16":
        kwargs["target_spec"] = {"supported_types": [tf.float16]}
    return kwargs


def sample_input(model: keras.Model, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A verification batch in the model's input layout ([0, 255] if it normalises inputs)."""
    shape = list(model.input_shape)
    channels_first = shape[1] == 3 and shape[-1] != 3
    spatial = (2, 3) if channels_first else (1, 2)
    for axis in spatial:
        shape[axis] = shape[axis] or 64
    shape[0] = batch
    rng = np.random.default_rng(seed)
    if any(layer.name == "preprocessing" for layer in model.layers):
        return rng.uniform(0, 255, size=shape).astype("float32")
    return rng.normal(size=shape).astype("float32")


def load_artifact(path: str, fmt: ExportFormat):
    """A callable ``f(x: np.ndarray) -> np.ndarray`` running the artifact in its runtime."""
    if fmt.name == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        return lambda x: np.asarray(loaded.serve(tf.constant(x)))
    if fmt.keras_format == "litert":
        return lambda x: _run_tflite(path, x)
    if fmt.name == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    raise ValueError(f"no runner for format {fmt.name!r}")


def _run_tflite(path: str, x: np.ndarray) -> np.ndarray:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    interpreter = Interpreter(model_path=path)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(x.shape), strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def verify_artifact(path, fmt, model, x) -> tuple[float, float, tuple[int, ...]]:
    """Max |artifact - keras| over batch sizes 2 (and 1 and 3 with a dynamic batch)."""
    batches = (x[:1], x, np.concatenate([x, x[:1]])) if fmt.dynamic_batch else (x,)
    worst, scale = 0.0, 0.0
    run = load_artifact(path, fmt)
    for xb in batches:
        expected = keras.ops.convert_to_numpy(model(xb, training=False)).astype("float64")
        got = np.asarray(run(xb), dtype="float64")
        if got.shape != expected.shape:
            raise ExportError(f"{fmt.name}: output shape {got.shape}, Keras {expected.shape}.")
        worst = max(worst, float(np.abs(got - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
    return worst, fmt.atol + fmt.rtol * scale, tuple(len(b) for b in batches)


def export_model(
    model: keras.Model,
    path,
    format: str = "saved_model",
    *,
    verify: bool = True,
    overwrite: bool = False,
    sample=None,
) -> ExportResult:
    """Export ``model`` to ``path`` in ``format`` and check it against the Keras model.

    Args:
        model: a single-output Keras model (any keras_effv2 classifier or backbone).
        path: target file (``.tflite``/``.onnx``) or directory (SavedModel).
        format: one of :data:`FORMATS` (``saved_model``, ``tflite``, ``tflite-fp16``,
            ``tflite-int8``, ``onnx``).
        verify: run the artifact on ``sample`` and raise :class:`ExportError` when it differs
            from the Keras output by more than the format's tolerance.
        overwrite: replace an existing ``path``; otherwise ``FileExistsError``.
        sample: verification input; default :func:`sample_input` (batch 2).
    """
    fmt = get_format(format)
    check_backend(fmt)
    if not isinstance(model.output, keras.KerasTensor):
        raise ValueError(
            "export_model takes a single-output model; for a features_only backbone export "
            "one level (keras.Model(m.inputs, m.output['P5'])) or the full model."
        )
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    x = sample_input(model) if sample is None else np.asarray(sample, "float32")
    model(x[:1], training=False)  # the torch exporter needs a model that has been called
    workdir = tempfile.mkdtemp(prefix=".keras_effv2_export-", dir=parent)
    try:
        tmp = os.path.join(workdir, os.path.basename(path))
        try:
            model.export(tmp, format=fmt.keras_format, verbose=False, **_converter_kwargs(fmt))
        except ImportError as err:
            raise ExportError(
                f"format {fmt.name!r} needs extra packages ({err}); install them with "
                f"`pip install keras-effv2[export]` ({PACKAGES.get(fmt.name, 'tensorflow')})."
            ) from err
        diff, tolerance, batches = float("nan"), float("nan"), ()
        if verify:
            diff, tolerance, batches = verify_artifact(tmp, fmt, model, x)
            if not diff <= tolerance:
                raise ExportError(
                    f"{fmt.name}: artifact differs from the Keras model by {diff:.3g} "
                    f"(tolerance {tolerance:.3g}); nothing was written to {path}."
                )
        _replace(tmp, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ExportResult(path, fmt.name, diff, tolerance, batches)


def _replace(src: str, dst: str) -> None:
    """Move ``src`` onto ``dst`` (file or directory), swapping out an existing ``dst``."""
    if os.path.isdir(dst) and not os.path.islink(dst):
        old = f"{dst}.old-{os.getpid()}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


EPILOG = """examples:
  KERAS_BACKEND=tensorflow python -m keras_effv2.export b0 -f saved_model -o b0_savedmodel
  KERAS_BACKEND=tensorflow python -m keras_effv2.export s --weights imagenet -f tflite-fp16 \\
      -o s_fp16.tflite --image-size 384
  KERAS_BACKEND=torch python -m keras_effv2.export b0 --weights imagenet -f onnx -o b0.onnx
  python -m keras_effv2.export --model my_model.keras -f onnx -o my_model.onnx

formats: """ + "; ".join(f"{f.name} ({', '.join(f.backends)})" for f in FORMATS.values())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m keras_effv2.export", description=(
            "Export an EfficientNetV2 to SavedModel, TFLite or ONNX and check the artifact "
            "against the Keras model on the same input (batch sizes 1, 2, 3)."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("variant", nargs="?", help="b0, b1, b2, b3, s, m, l or xl")
    src.add_argument("--model", help="a saved .keras model to export instead of a variant")
    p.add_argument("-f", "--format", required=True, choices=list(FORMATS))
    p.add_argument("-o", "--output", required=True, help="target file or SavedModel directory")
    p.add_argument("--weights", default=None,
                   help="weights tag (imagenet, imagenet21k, ...) or .weights.h5; default random")
    p.add_argument("--image-size", type=int, default=None,
                   help="static input size (default: the variant's eval size)")
    p.add_argument("--classes", type=int, default=None, help="classifier width")
    p.add_argument("--no-preprocessing", action="store_true",
                   help="export without in-model normalisation (input already normalised)")
    p.add_argument("--logits", action="store_true", help="no softmax on the output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns a process exit code."""
    args = _parser().parse_args(argv)
    try:
        fmt = get_format(args.format)
        check_backend(fmt)
        if args.model:
            model = keras.saving.load_model(args.model)
        else:
            from keras_effv2.applications import EfficientNetV2
            from keras_effv2.configs import get_variant

            spec = get_variant(args.variant)
            size = args.image_size or spec.eval_size
            shape = (size, size, 3)
            if keras.config.image_data_format() == "channels_first":
                shape = (3, size, size)
            model = EfficientNetV2(
                spec, weights=args.weights, input_shape=shape, classes=args.classes,
                include_preprocessing=not args.no_preprocessing,
                classifier_activation=None if args.logits else "softmax",
            )
        result = export_model(model, args.output, fmt.name, verify=not args.no_verify,
                              overwrite=args.overwrite)
    except (ExportError, ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    check = (f"max |diff| {result.max_abs_diff:.3g} <= {result.tolerance:.3g} on batch sizes "
             f"{', '.join(map(str, result.batch_sizes))}" if not args.no_verify else "not checked")
    print(f"exported {model.name} as {fmt.name} to {result.path} ({check}, "
          f"backend {keras.backend.backend()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
