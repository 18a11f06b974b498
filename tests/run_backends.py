"""Run the test suite once per Keras backend, in parallel lanes (``make test``).

One process holds one Keras backend, so the suite runs once per ``KERAS_BACKEND``. Much of a
leg is single-threaded (model building, tracing, XLA compilation), so on a 2-core machine two
lanes finish well before one: by default the backends are dealt round-robin over two lanes
(``tensorflow jax torch``: TensorFlow then torch in one lane, JAX, the longest leg, in the
other). Two lanes, not three: each leg keeps its peak heap (``MALLOC_TRIM_THRESHOLD_``), up
to 10-11 GB for TensorFlow and JAX, and three at once came within 3 GB of the machine's 24 GB.
``--split BACKEND:N`` runs that backend's leg as N parts (the test files dealt round-robin in
sorted order), each part a job of its own, so that the lanes end together: ``make test`` splits
the torch leg in two (TensorFlow then torch part 1 | JAX then torch part 2).
Each job writes ``.test-logs/<job>.log``; when all have finished, the logs are printed in
order with a summary (exit status and wall time per job), and the exit status is non-zero if
any job failed.

Example:
    python tests/run_backends.py tensorflow jax torch -- -x -q     # two lanes
    python tests/run_backends.py --split torch:2 tensorflow jax torch
    python tests/run_backends.py --lanes 1 torch -- -k parity      # one after another
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backends", nargs="*", default=list(BACKENDS),
                        help=f"Keras backends to test (default: {' '.join(BACKENDS)})")
    parser.add_argument("--lanes", type=int, default=2,
                        help="legs run at once (default 2); 1: one after another, output streamed")
    parser.add_argument("--log-dir", default=os.path.join(ROOT, ".test-logs"))
    parser.add_argument("--split", action="append", default=[], metavar="BACKEND:N",
                        help="run BACKEND's leg as N jobs over its test files (repeatable)")
    argv = list(argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.lanes < 1:
        parser.error(f"--lanes must be at least 1; got {args.lanes}")
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; accepted: {', '.join(BACKENDS)}")
    splits = {}
    for item in args.split:
        backend, _, n = item.partition(":")
        if backend not in args.backends or not n.isdigit() or int(n) < 1:
            parser.error(f"--split takes BACKEND:N with BACKEND one of the backends run "
                         f"({', '.join(args.backends)}) and N >= 1; got {item!r}")
        splits[backend] = int(n)
    if splits and any(a.endswith(".py") or "::" in a for a in pytest_args):
        parser.error("--split deals the test files itself; give no test paths after --")
    args.splits = splits
    return args, pytest_args


def jobs(backends, splits) -> list[tuple[str, str, list[str]]]:
    """``(name, backend, test_paths)`` per job: a whole leg, or one part of a split one. The
    split parts are placed after every whole leg, so round-robin lanes get one part each."""
    whole = [(b, b, []) for b in backends if b not in splits]
    files = sorted(os.path.relpath(f, ROOT) for f in glob.glob(os.path.join(ROOT, "tests",
                                                                            "test_*.py")))
    parts = [(f"{b}.{i + 1}of{n}", b, files[i::n]) for b in backends if b in splits
             for n in [splits[b]] for i in range(n)]
    return whole + parts


def command(pytest_args):
    return [sys.executable, "-m", "pytest", *pytest_args]


def run_serial(job_list, pytest_args) -> dict[str, tuple[int, float]]:
    results = {}
    for name, backend, paths in job_list:
        print(f"=== KERAS_BACKEND={backend} ({name})", flush=True)
        start = time.monotonic()
        rc = subprocess.call(command([*pytest_args, *paths]), cwd=ROOT,
                             env={**os.environ, "KERAS_BACKEND": backend})
        results[name] = (rc, time.monotonic() - start)
    return results


def run_lanes(job_list, pytest_args, log_dir, lanes) -> dict[str, tuple[int, float]]:
    """Deal the jobs round-robin over ``lanes``; each lane runs its jobs one by one."""
    os.makedirs(log_dir, exist_ok=True)
    start = time.monotonic()
    results = {}

    def lane(legs):
        for name, backend, paths in legs:
            with open(os.path.join(log_dir, f"{name}.log"), "w") as log:
                rc = subprocess.call(command([*pytest_args, *paths]), cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT,
                                     env={**os.environ, "KERAS_BACKEND": backend})
            results[name] = (rc, time.monotonic() - start)
            print(f"--- {name} finished: exit {rc} after {results[name][1]:.0f} s", flush=True)

    plan = [job_list[i::lanes] for i in range(lanes)]
    print("running " + " | ".join(" then ".join(j[0] for j in legs) for legs in plan if legs)
          + f"; logs in {log_dir}/", flush=True)
    threads = [threading.Thread(target=lane, args=(legs,)) for legs in plan if legs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, backend, _ in job_list:
        print(f"\n=== KERAS_BACKEND={backend} ({name})", flush=True)
        with open(os.path.join(log_dir, f"{name}.log")) as f:
            sys.stdout.write(f.read())
    return {name: results[name] for name, _, _ in job_list}


def main(argv=None) -> int:
    args, pytest_args = parse_args(sys.argv[1:] if argv is None else argv)
    job_list = jobs(args.backends, args.splits)
    if args.lanes == 1 or len(job_list) == 1:
        results = run_serial(job_list, pytest_args)
    else:
        results = run_lanes(job_list, pytest_args, args.log_dir, args.lanes)
    print("\n=== summary")
    for name, (rc, seconds) in results.items():
        verdict = "passed" if rc == 0 else f"FAILED (exit {rc})"
        print(f"{name:<13} {verdict:<16} {seconds:6.0f} s")
    return 0 if all(rc == 0 for rc, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
