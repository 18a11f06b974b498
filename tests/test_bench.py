"""Smoke test of the benchmark suite: quick mode runs and writes valid JSON, markdown, PNG."""

import json

import keras

from bench import suite as bench


def test_bench_quick_reports_every_contender(tmp_path, capsys):
    out, md, png = tmp_path / "bench.json", tmp_path / "bench.md", tmp_path / "bench.png"
    # S is skipped here only to keep the legs short; it shares B0's code path. The training
    # case runs on the torch leg (its contenders include timm and the fast step); on TensorFlow
    # and JAX every training contender traces or compiles its own step (~60 s on TensorFlow,
    # ~200 s on JAX on the CI machine), so forward only there (their training steps:
    # test_fast_training*.py, test_training.py).
    cases = ["b0_fwd"] + (["b0_train"] if keras.backend.backend() == "torch" else [])
    results = bench.main(["--quick", "--cases", ",".join(cases), "--json", str(out),
                          "--markdown", str(md), "--plot", str(png)])
    assert [r["case"] for r in results] == cases
    torch = keras.backend.backend() == "torch"
    fast_train = keras.backend.backend() != "tensorflow"  # TF: optimize_for_training = model
    for r in results:
        fast = ["ours_fast"] if r["mode"] == "forward" or fast_train else []
        kinds = ["keras_apps", "ours"] + fast + (["timm"] if torch else [])
        assert list(r["img_s"]) == kinds
        assert r["size"] == bench.QUICK_SIZE and r["batch"] == bench.QUICK_BATCH
        assert r["repeats"] == 1 and all(v > 0 for v in r["img_s"].values())
        assert r["ratio_vs_keras_apps"]["keras_apps"] == 1.0
        assert r["ratio"] == r["ratio_vs_keras_apps"]["ours"] > 0
        assert ("ratio_vs_timm" in r) == torch
    assert json.loads(out.read_text()) == results
    lines = md.read_text().splitlines()
    rows = (3 if cases == ["b0_fwd"] else 5 + fast_train) + (2 if torch else 0)
    assert lines[0].startswith("| backend |") and len(lines) == 2 + rows
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "vs k.apps" in capsys.readouterr().out


def test_memory_probe_reports_peak_rss_of_a_fresh_process():
    report = bench.memory_probe("ours", "b0_fwd", quick=True)
    # A Keras process with a model is well above 100 MB; the forward adds a little.
    assert 100 < report["peak_rss_mb"] < 20000
    assert 0 <= report["forward_rss_mb"] < report["peak_rss_mb"]
