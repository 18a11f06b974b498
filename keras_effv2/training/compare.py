"""Progressive vs fixed size, same recipe, several seeds: ``--compare-fixed`` of the train CLI.

Each run is the train command itself in a fresh process (what ``make demo`` runs), once as
given (the recipe's progressive schedule) and once with ``--progressive none`` (one stage at
the recipe's final train size, the same epochs and steps). The two alternate, and their order
flips from one seed to the next (P F, F P, P F...), so a load change on a shared machine falls
on both. Each run writes its usual folder under ``OUTPUT/<progressive|fixed>-seed<N>/``; the
table goes to stdout and ``OUTPUT/compare.json``.

Example:
    >>> python -m keras_effv2.train --recipe digits --compare-fixed --seeds 0,1,2 \\
    ...     --output runs/compare --no-tensorboard --verbose 0  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

KINDS = ("progressive", "fixed")


def run_order(seeds) -> list[tuple[str, int]]:
    """``[(kind, seed), ...]``: both kinds per seed, their order flipped on every other seed."""
    order = []
    for i, seed in enumerate(seeds):
        kinds = KINDS if i % 2 == 0 else KINDS[::-1]
        order.extend((kind, seed) for kind in kinds)
    return order


def summarize(runs: list[dict]) -> dict:
    """Per kind: each run's accuracy and seconds, their mean, standard deviation and range."""
    out = {}
    for kind in KINDS:
        mine = sorted((r for r in runs if r["kind"] == kind), key=lambda r: r["seed"])
        if not mine:
            continue
        stats = {}
        for key in ("test_accuracy", "train_seconds"):
            values = [r[key] for r in mine]
            stats[key] = {"mean": statistics.fmean(values),
                          "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                          "min": min(values), "max": max(values)}
        out[kind] = {"runs": [{k: r[k] for k in ("seed", "test_accuracy", "train_seconds")}
                              for r in mine], **stats}
    return out


def format_table(summary: dict) -> str:
    lines = [f"{'recipe':<12} {'seed':>4} {'test acc':>9} {'train s':>8}"]
    for kind, s in summary.items():
        for r in s["runs"]:
            lines.append(f"{kind:<12} {r['seed']:>4} {r['test_accuracy']:>9.4f} "
                         f"{r['train_seconds']:>8.1f}")
        a, t = s["test_accuracy"], s["train_seconds"]
        lines.append(f"{kind:<12} {'mean':>4} {a['mean']:>9.4f} {t['mean']:>8.1f}   "
                     f"(std {a['std']:.4f} / {t['std']:.1f} s; range {a['min']:.4f}-"
                     f"{a['max']:.4f} / {t['min']:.1f}-{t['max']:.1f} s)")
    return "\n".join(lines)


def compare_fixed(train_args: list[str], seeds, output: str, print_fn=print) -> dict:
    """Run ``python -m keras_effv2.train *train_args`` progressive and fixed for each seed.

    ``train_args`` must not hold ``--seed``, ``--output`` or ``--progressive`` (set here).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("--compare-fixed needs at least one seed (--seeds 0,1,2).")
    os.makedirs(output, exist_ok=True)
    runs = []
    for kind, seed in run_order(seeds):
        folder = os.path.join(output, f"{kind}-seed{seed}")
        cmd = [sys.executable, "-m", "keras_effv2.train", *train_args, "--seed", str(seed),
               "--output", folder]
        if kind == "fixed":
            cmd += ["--progressive", "none"]
        print_fn(f"[compare] {kind} seed {seed}: {' '.join(cmd[1:])}")
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} run, seed {seed}, exited with {proc.returncode}.")
        with open(os.path.join(folder, "result.json")) as f:
            result = json.load(f)
        runs.append({"kind": kind, "seed": seed, "test_accuracy": result["test_accuracy"],
                     "train_seconds": result["train_seconds"]})
        print_fn(f"[compare] {kind} seed {seed}: test accuracy {result['test_accuracy']:.4f}, "
                 f"{result['train_seconds']:.1f} s of training")
    summary = {"runs": runs, "summary": summarize(runs), "train_args": train_args}
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=output)
    with os.fdopen(fd, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, os.path.join(output, "compare.json"))
    print_fn(format_table(summary["summary"]))
    return summary
