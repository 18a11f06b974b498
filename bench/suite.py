"""Benchmark suite: keras_effv2 vs ``keras.applications`` (same backend) and timm (torch).

Per case (variant, size, batch, forward or train step) every contender is built in one
process, warmed up, then timed in rounds whose order rotates every round; each round gives
one ratio per contender against ``keras_apps`` (and against ``timm`` on torch), and the
report gives medians, so a shared, noisy CPU slows both sides of a ratio alike.

Contenders (all ``weights=None``, 1000 classes, preprocessing in the Keras models):
- ``keras_apps``: ``keras.applications.EfficientNetV2*``; ``ours``: ``keras_effv2``. Forward
  is ``predict_on_batch``, training ``train_on_batch`` (Adam, sparse CE); both with the same
  ``jit_compile`` (``--jit``; ``auto`` = ``keras_effv2.fast.FAST_JIT_COMPILE``: XLA off on
  TensorFlow, measured 5-8x slower on CPU, Keras' own default would switch it on).
- ``ours_fast``: forward ``keras_effv2.fast.optimize_for_inference`` + ``make_predictor``;
  training ``train_on_batch`` of ``keras_effv2.fast.optimize_for_training(model)`` (not on
  TensorFlow, where that is the model itself).
- ``timm`` (torch backend): timm ``tf_efficientnetv2_*``, channels_last, eager,
  ``inference_mode`` for forward; ``timm_compile`` with ``--torch-compile``.
With ``--memory`` each contender also runs one step (forward, or training step) in a fresh
subprocess that reports its peak RSS (``VmHWM``) and the growth of the peak over that step.
Outputs: a table on stdout, ``--json``, ``--markdown`` and ``--plot`` (PNG, matplotlib).

Example:
    KERAS_BACKEND=torch python -m bench --cases b0_fwd,b0_train --repeats 5 \\
        --json runs/bench_torch.json --markdown runs/bench_torch.md --plot runs/bench_torch.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_effv2  # noqa: E402
from keras_effv2 import fast  # noqa: E402


@dataclass(frozen=True)
class Case:
    variant: str
    size: int
    batch: int
    mode: str  # "forward" or "train"


CASES = {
    "b0_fwd": Case("b0", 224, 32, "forward"),
    "s_fwd": Case("s", 384, 8, "forward"),
    "b0_train": Case("b0", 224, 16, "train"),
    "s_train": Case("s", 384, 4, "train"),
}
QUICK_SIZE, QUICK_BATCH = 64, 2
BUILDERS = {
    "b0": (keras_effv2.EfficientNetV2B0, "EfficientNetV2B0"),
    "b1": (keras_effv2.EfficientNetV2B1, "EfficientNetV2B1"),
    "s": (keras_effv2.EfficientNetV2S, "EfficientNetV2S"),
    "m": (keras_effv2.EfficientNetV2M, "EfficientNetV2M"),
}
BASELINE = "keras_apps"
PRECISIONS = {"float32": "float32", "mixed": "mixed_float16", "mixed_bfloat16": "mixed_bfloat16"}


def _jit(jit: str) -> bool:
    if jit == "auto":
        return fast.FAST_JIT_COMPILE.get(keras.backend.backend(), False)
    return jit == "on"


def _keras_model(kind: str, case: Case, size: int):
    ours_fn, reference_name = BUILDERS[case.variant]
    kwargs = dict(weights=None, include_preprocessing=True, classes=1000,
                  input_shape=(size, size, 3))
    if kind == BASELINE:
        return getattr(keras.applications, reference_name)(**kwargs)
    return ours_fn(**kwargs)


def contenders(case: Case, torch_compile: bool = False) -> list[str]:
    """Names of the contenders of ``case`` on the current backend."""
    # On TensorFlow optimize_for_training returns the model itself: no second, equal contender.
    fast_train = keras.backend.backend() != "tensorflow"
    names = [BASELINE, "ours"] + (["ours_fast"] if case.mode == "forward" or fast_train else [])
    if keras.backend.backend() == "torch":
        names += ["timm"] + (["timm_compile"] if torch_compile else [])
    return names


def make_step(kind: str, case: Case, size: int, x, y, jit: str = "auto",
              precision: str = "float32"):
    """A zero-argument callable running one step of contender ``kind``; returns numpy."""
    if kind.startswith("timm"):
        from bench.timm_contenders import timm_step

        return timm_step(case.variant, case.mode, x, y, precision, kind == "timm_compile")
    model = _keras_model("ours" if kind == "ours_fast" else kind, case, size)
    if kind == "ours_fast" and case.mode == "forward":
        predict = fast.make_predictor(fast.optimize_for_inference(model))
        return lambda: predict(x)
    if kind == "ours_fast":
        model = fast.optimize_for_training(model)
    model.jit_compile = _jit(jit)
    if case.mode == "train":
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      jit_compile=_jit(jit))
        return lambda: model.train_on_batch(x, y)
    return lambda: model.predict_on_batch(x)


def _data(size: int, batch: int):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 1000, (batch,)).astype("int32")
    return x, y


def run_case(name: str, case: Case, repeats: int, iters: int, warmup: int, quick: bool = False,
             jit: str = "auto", precision: str = "float32", torch_compile: bool = False,
             memory: bool = False, case_timeout: float | None = None,
             threads: int | None = None) -> dict:
    """Time every contender of one case; medians of images/s and of per-round ratios."""
    size, batch = (QUICK_SIZE, QUICK_BATCH) if quick else (case.size, case.batch)
    x, y = _data(size, batch)
    start_case = time.perf_counter()
    steps = {}
    for kind in contenders(case, torch_compile):
        steps[kind] = make_step(kind, case, size, x, y, jit, precision)
        for _ in range(warmup):
            steps[kind]()
    kinds = list(steps)
    rates = {k: [] for k in kinds}
    for r in range(repeats):
        if case_timeout and r and time.perf_counter() - start_case > case_timeout:
            break  # time guard: keep the rounds done so far
        for k in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
            start = time.perf_counter()
            for _ in range(iters):
                steps[k]()
            rates[k].append(batch * iters / (time.perf_counter() - start))
    done = len(rates[BASELINE])
    result = {
        "case": name, "backend": keras.backend.backend(), "precision": precision,
        "jit_compile": _jit(jit), **asdict(case), "size": size, "batch": batch,
        "repeats": done, "iters": iters,
        "img_s": {k: statistics.median(v) for k, v in rates.items()},
        "ratio_vs_keras_apps": {
            k: statistics.median(a / b for a, b in zip(v, rates[BASELINE], strict=True))
            for k, v in rates.items()},
    }
    if "timm" in rates:
        result["ratio_vs_timm"] = {
            k: statistics.median(a / b for a, b in zip(v, rates["timm"], strict=True))
            for k, v in rates.items()}
    if memory:
        result["peak_rss_mb"], result["forward_rss_mb"] = {}, {}
        for kind in kinds:
            probe = memory_probe(kind, name, quick, jit, precision, threads)
            result["peak_rss_mb"][kind] = probe["peak_rss_mb"]
            result["forward_rss_mb"][kind] = probe["forward_rss_mb"]
    # Backward-compatible summary fields (ours vs keras.applications).
    result.update(ours_img_s=result["img_s"]["ours"],
                  keras_apps_img_s=result["img_s"][BASELINE],
                  ratio=result["ratio_vs_keras_apps"]["ours"])
    return result


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc/self/status."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def _probe_main(kind: str, case_name: str, quick: bool, jit: str, precision: str) -> dict:
    """In a fresh process: build ``kind``, run one step, report the peak RSS and its growth
    over the step (``forward_rss_mb``, also for a training step)."""
    if precision != "float32":
        keras.mixed_precision.set_global_policy(PRECISIONS[precision])
    case = CASES[case_name]
    size, batch = (QUICK_SIZE, QUICK_BATCH) if quick else (case.size, case.batch)
    x, y = _data(size, batch)
    step = make_step(kind, case, size, x, y, jit, precision)
    before, _ = _rss_mb()
    step()
    _, peak = _rss_mb()
    return {"peak_rss_mb": peak, "forward_rss_mb": peak - before}


def memory_probe(kind: str, case_name: str, quick: bool = False, jit: str = "auto",
                 precision: str = "float32", threads: int | None = None) -> dict:
    """Run :func:`_probe_main` in a fresh subprocess (same backend) and return its report.

    The first step (compilation and optimizer slots included) is measured, as a user's
    first call is.
    """
    args = [sys.executable, "-m", "bench", "--probe", kind, "--cases", case_name,
            "--jit", jit, "--precision", precision] + (["--quick"] if quick else [])
    args += ["--threads", str(threads)] if threads else []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # `bench` importable
    out = subprocess.run(args, capture_output=True, text=True, check=False, cwd=root)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe {kind}/{case_name} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def format_table(results: list[dict]) -> str:
    """Plain-text table: one line per case and contender."""
    head = (f"{'backend':<11}{'case':<10}{'contender':<14}{'img/s':>9}{'vs k.apps':>10}"
            f"{'vs timm':>9}{'peak MB':>9}")
    rows = [head, "-" * len(head)]
    for r in results:
        for k, rate in r["img_s"].items():
            timm = r.get("ratio_vs_timm", {}).get(k)
            mem = r.get("peak_rss_mb", {}).get(k)
            rows.append(f"{r['backend']:<11}{r['case']:<10}{k:<14}{rate:>9.2f}"
                        f"{r['ratio_vs_keras_apps'][k]:>10.3f}"
                        f"{'' if timm is None else f'{timm:.3f}':>9}"
                        f"{'' if mem is None else f'{mem:.0f}':>9}")
    return "\n".join(rows)


def format_markdown(results: list[dict]) -> str:
    """Markdown table (the README's format)."""
    rows = ["| backend | case | precision | contender | img/s | vs keras.applications | vs timm "
            "| peak RSS MB (step growth) |", "|---|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        label = f"{r['mode']} {r['variant'].upper()} {r['size']}, batch {r['batch']}"
        for k, rate in r["img_s"].items():
            timm = r.get("ratio_vs_timm", {}).get(k)
            mem = r.get("peak_rss_mb", {}).get(k)
            grow = r.get("forward_rss_mb", {}).get(k)
            rows.append(f"| {r['backend']} | {label} | {r['precision']} | {k} | {rate:.2f} | "
                        f"{r['ratio_vs_keras_apps'][k]:.3f} | "
                        f"{'' if timm is None else f'{timm:.3f}'} | "
                        f"{'' if mem is None else f'{mem:.0f} ({grow:.0f})'} |")
    return "\n".join(rows) + "\n"


def plot(results: list[dict], path: str) -> None:
    """Bar chart of images/s per case and contender (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['backend']}\n{r['case']}\n{r['precision']}" for r in results]
    kinds = list(dict.fromkeys(k for r in results for k in r["img_s"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(results)), 4))
    width = 0.8 / len(kinds)
    for i, k in enumerate(kinds):
        ax.bar([j + i * width for j in range(len(results))],
               [r["img_s"].get(k, 0.0) for r in results], width, label=k)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(results))], labels, fontsize=7)
    ax.set_ylabel("images / s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _atomic(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def _atomic(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic(path, write)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="b0_fwd,s_fwd,b0_train",
                        help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds")
    parser.add_argument("--iters", type=int, default=1, help="steps per timed run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender")
    parser.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                        help="jit_compile of the Keras contenders (auto: measured best)")
    parser.add_argument("--precision", default="float32",
                        help="comma-separated: " + ", ".join(PRECISIONS))
    parser.add_argument("--torch-compile", action="store_true", help="add timm_compile")
    parser.add_argument("--memory", action="store_true",
                        help="peak RSS of each contender's first step in a fresh subprocess")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (torch backend)")
    parser.add_argument("--case-timeout", type=float,
                        help="stop timing a case after this many seconds (keeps done rounds)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--markdown", help="write a markdown table to this file")
    parser.add_argument("--plot", help="write a PNG bar chart to this file")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_SIZE}px, batch {QUICK_BATCH}, 1 round")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = sorted(set(precisions) - set(PRECISIONS))
    if bad:
        parser.error(f"unknown precision {bad}; choose from {list(PRECISIONS)}")
    if args.threads and keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(_probe_main(args.probe, names[0], args.quick, args.jit,
                                     precisions[0])))
        return []
    repeats, iters, warmup = (1, 1, 1) if args.quick else (args.repeats, args.iters, args.warmup)
    results = []
    for name in names:
        for precision in precisions:
            keras.mixed_precision.set_global_policy(PRECISIONS[precision])
            try:
                results.append(run_case(name, CASES[name], repeats, iters, warmup, args.quick,
                                        args.jit, precision, args.torch_compile, args.memory,
                                        args.case_timeout, args.threads))
            finally:
                keras.mixed_precision.set_global_policy("float32")
            print(format_table(results[-1:]), flush=True)
            _write_outputs(results, args, plot_too=False)  # partial results survive a kill
    print(format_table(results))
    _write_outputs(results, args, plot_too=True)
    return results


def _write_outputs(results: list[dict], args, plot_too: bool) -> None:
    if args.json:
        _write_text(args.json, json.dumps(results, indent=2))
    if args.markdown:
        _write_text(args.markdown, format_markdown(results))
    if args.plot and plot_too:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
