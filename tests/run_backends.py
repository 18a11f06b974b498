"""Run the test suite once per Keras backend, in parallel lanes (``make test``).

One process holds one Keras backend, so the suite runs once per ``KERAS_BACKEND``. Much of a
leg is single-threaded (model building, tracing, XLA compilation), so on a 2-core machine two
lanes finish well before one: by default the backends are dealt round-robin over two lanes
(``tensorflow jax torch``: TensorFlow then torch in one lane, JAX, the longest leg, in the
other). Two lanes, not three: each leg keeps its peak heap (``MALLOC_TRIM_THRESHOLD_``), up
to 10-11 GB for TensorFlow and JAX, and three at once came within 3 GB of the machine's 24 GB.
Each leg writes ``.test-logs/<backend>.log``; when all have finished, the logs are printed in
order with a summary (exit status and wall time per leg), and the exit status is non-zero if
any leg failed.

Example:
    python tests/run_backends.py tensorflow jax torch -- -x -q     # two lanes
    python tests/run_backends.py --lanes 1 torch -- -k parity      # one after another
"""

from __future__ import annotations

import argparse
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
    argv = list(argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.lanes < 1:
        parser.error(f"--lanes must be at least 1; got {args.lanes}")
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; accepted: {', '.join(BACKENDS)}")
    return args, pytest_args


def command(pytest_args):
    return [sys.executable, "-m", "pytest", *pytest_args]


def run_serial(backends, pytest_args) -> dict[str, tuple[int, float]]:
    results = {}
    for backend in backends:
        print(f"=== KERAS_BACKEND={backend}", flush=True)
        start = time.monotonic()
        rc = subprocess.call(command(pytest_args), cwd=ROOT,
                             env={**os.environ, "KERAS_BACKEND": backend})
        results[backend] = (rc, time.monotonic() - start)
    return results


def run_lanes(backends, pytest_args, log_dir, lanes) -> dict[str, tuple[int, float]]:
    """Deal ``backends`` round-robin over ``lanes``; each lane runs its legs one by one."""
    os.makedirs(log_dir, exist_ok=True)
    start = time.monotonic()
    results = {}

    def lane(legs):
        for backend in legs:
            with open(os.path.join(log_dir, f"{backend}.log"), "w") as log:
                rc = subprocess.call(command(pytest_args), cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT,
                                     env={**os.environ, "KERAS_BACKEND": backend})
            results[backend] = (rc, time.monotonic() - start)
            print(f"--- {backend} finished: exit {rc} after {results[backend][1]:.0f} s",
                  flush=True)

    plan = [backends[i::lanes] for i in range(lanes)]
    print("running " + " | ".join(" then ".join(legs) for legs in plan if legs)
          + f"; logs in {log_dir}/", flush=True)
    threads = [threading.Thread(target=lane, args=(legs,)) for legs in plan if legs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for backend in backends:
        print(f"\n=== KERAS_BACKEND={backend}", flush=True)
        with open(os.path.join(log_dir, f"{backend}.log")) as f:
            sys.stdout.write(f.read())
    return {backend: results[backend] for backend in backends}


def main(argv=None) -> int:
    args, pytest_args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.lanes == 1 or len(args.backends) == 1:
        results = run_serial(args.backends, pytest_args)
    else:
        results = run_lanes(args.backends, pytest_args, args.log_dir, args.lanes)
    print("\n=== summary")
    for backend, (rc, seconds) in results.items():
        verdict = "passed" if rc == 0 else f"FAILED (exit {rc})"
        print(f"{backend:<11} {verdict:<16} {seconds:6.0f} s")
    return 0 if all(rc == 0 for rc, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
