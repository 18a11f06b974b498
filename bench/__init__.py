"""Benchmarks of keras_effv2 (not installed with the package; run from the repository root).

Example:
    KERAS_BACKEND=torch python -m bench --cases b0_fwd,b0_train --repeats 5
"""
