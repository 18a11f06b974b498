"""Smoke test of the benchmark script: quick mode runs and reports the documented fields."""

import json

from keras_effv2 import bench


def test_bench_quick_reports_the_requested_cases(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # S is skipped here only to keep the JAX leg short; it shares B0's code path.
    results = bench.main(["--quick", "--cases", "b0_fwd,b0_train", "--json", str(out)])
    assert [r["case"] for r in results] == ["b0_fwd", "b0_train"]
    for r in results:
        assert r["size"] == bench.QUICK_SIZE and r["batch"] == bench.QUICK_BATCH
        assert r["ours_img_s"] > 0 and r["keras_apps_img_s"] > 0
        assert r["ratio"] > 0 and len(r["ratios"]) == r["repeats"]
    assert json.loads(out.read_text()) == results
    assert "ratio" in capsys.readouterr().out
