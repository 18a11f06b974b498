"""Run the test suite once per Keras backend, the backends side by side (``make test``).

One process holds one Keras backend, so the suite runs once per ``KERAS_BACKEND``. Much of a
leg is single-threaded (model building, tracing, XLA compilation), so on a 2-core machine the
three legs side by side finish well before the same legs one after another. Each leg writes
``.test-logs/<backend>.log``; when all have finished, the logs are printed in order with a
summary (exit status and wall time per leg), and the exit status is non-zero if any leg failed.

Example:
    python tests/run_backends.py tensorflow jax torch -- -x -q     # side by side
    python tests/run_backends.py --serial torch -- -k parity        # one after another
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backends", nargs="*", default=list(BACKENDS),
                        help=f"Keras backends to test (default: {' '.join(BACKENDS)})")
    parser.add_argument("--serial", action="store_true",
                        help="one leg after another, output streamed (default: side by side)")
    parser.add_argument("--log-dir", default=os.path.join(ROOT, ".test-logs"))
    argv = list(argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
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


def run_parallel(backends, pytest_args, log_dir) -> dict[str, tuple[int, float]]:
    os.makedirs(log_dir, exist_ok=True)
    start = time.monotonic()
    procs, logs, results = {}, {}, {}
    for backend in backends:
        logs[backend] = open(os.path.join(log_dir, f"{backend}.log"), "w")
        procs[backend] = subprocess.Popen(
            command(pytest_args), cwd=ROOT, stdout=logs[backend], stderr=subprocess.STDOUT,
            env={**os.environ, "KERAS_BACKEND": backend})
    print(f"running {', '.join(backends)} side by side; logs in {log_dir}/", flush=True)
    pending = dict(procs)
    while pending:
        for backend, proc in list(pending.items()):
            if proc.poll() is not None:
                results[backend] = (proc.returncode, time.monotonic() - start)
                logs[backend].close()
                del pending[backend]
                print(f"--- {backend} finished: exit {proc.returncode} after "
                      f"{results[backend][1]:.0f} s", flush=True)
        time.sleep(1)
    for backend in backends:
        print(f"\n=== KERAS_BACKEND={backend}", flush=True)
        with open(os.path.join(log_dir, f"{backend}.log")) as f:
            sys.stdout.write(f.read())
    return results


def main(argv=None) -> int:
    args, pytest_args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.serial or len(args.backends) == 1:
        results = run_serial(args.backends, pytest_args)
    else:
        results = run_parallel(args.backends, pytest_args, args.log_dir)
    print("\n=== summary")
    for backend, (rc, seconds) in results.items():
        verdict = "passed" if rc == 0 else f"FAILED (exit {rc})"
        print(f"{backend:<11} {verdict:<16} {seconds:6.0f} s")
    return 0 if all(rc == 0 for rc, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
