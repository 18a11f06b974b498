"""Progressive schedules equal the reference tables; recipes are the paper's; plans and CLI."""

import json

import numpy as np
import pytest

from keras_effv2.train import main as train_main
from keras_effv2.training import (
    PAPER_TABLE8,
    PRESETS,
    RECIPES,
    ProgressiveSchedule,
    build_optimizer,
    get_recipe,
    get_schedule,
    make_plan,
    scaled,
    split_epochs,
)


def _columns(name):
    stages = get_schedule(name).stages()
    return {k: [getattr(s, k) for s in stages]
            for k in ("image_size", "randaug_magnitude", "mixup_alpha", "cutmix_alpha",
                      "dropout_rate")}


# docs/architecture.md §4.2: paper Table 6 with 4 stages, both endpoints included.
PAPER = {
    "paper-s": dict(image_size=[128, 185, 242, 300], randaug_magnitude=[5, 8.33, 11.67, 15],
                    mixup_alpha=[0, 0, 0, 0], dropout_rate=[0.1, 0.167, 0.233, 0.3]),
    "paper-m": dict(image_size=[128, 212, 296, 380], randaug_magnitude=[5, 10, 15, 20],
                    mixup_alpha=[0, 0.067, 0.133, 0.2], dropout_rate=[0.1, 0.2, 0.3, 0.4]),
    "paper-l": dict(image_size=[128, 212, 296, 380], randaug_magnitude=[5, 11.67, 18.33, 25],
                    mixup_alpha=[0, 0.133, 0.267, 0.4], dropout_rate=[0.1, 0.233, 0.367, 0.5]),
}
# docs/architecture.md §4.2, "what the released automl code actually does".
AUTOML = {
    "automl-s": ([171, 214, 257, 300], [5, 6.67, 8.33, 10], [0, 0, 0, 0]),
    "automl-m": ([192, 256, 320, 384], [5, 8.33, 11.67, 15], [0, 0.067, 0.133, 0.2]),
    "automl-l": ([192, 256, 320, 384], [5, 10, 15, 20], [0, 0.167, 0.333, 0.5]),
    "automl-xl": ([192, 256, 320, 384], [5, 10, 15, 20], [0, 0.167, 0.333, 0.5]),
    "automl-b0": ([144, 160, 176, 192], None, [0, 0, 0, 0]),
    "automl-b1": ([144, 160, 176, 192], None, [0, 0, 0, 0]),
    "automl-b2": ([148, 168, 188, 208], None, [0, 0, 0, 0]),
    "automl-b3": ([156, 184, 212, 240], None, [0, 0, 0, 0]),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets_equal_table6(name):
    cols = _columns(name)
    want = PAPER[name]
    assert cols["image_size"] == want["image_size"]
    np.testing.assert_allclose(cols["randaug_magnitude"], want["randaug_magnitude"], atol=5e-3)
    np.testing.assert_allclose(cols["mixup_alpha"], want["mixup_alpha"], atol=5e-4)
    np.testing.assert_allclose(cols["dropout_rate"], want["dropout_rate"], atol=5e-4)
    assert cols["cutmix_alpha"] == [0.0] * 4


@pytest.mark.parametrize("name", sorted(AUTOML))
def test_automl_presets_equal_released_code(name):
    sizes, ra, mix = AUTOML[name]
    cols = _columns(name)
    assert cols["image_size"] == sizes
    if ra is None:
        assert cols["randaug_magnitude"] == [None] * 4
    else:
        np.testing.assert_allclose(cols["randaug_magnitude"], ra, atol=5e-3)
    np.testing.assert_allclose(cols["mixup_alpha"], mix, atol=5e-4)
    assert cols["cutmix_alpha"] == cols["mixup_alpha"]  # mixup_alpha = cutmix_alpha
    assert cols["dropout_rate"] == [None] * 4  # dropout is not scheduled in the code


def test_automl_size_formula_matches_main_tf2():
    for name in AUTOML:
        s = PRESETS[name]
        got = [st.image_size for st in s.stages()]
        assert got == [int(128 + (s.image_size[1] - 128) * (i + 1) / 4) for i in range(4)]


def test_spec_strings_and_bad_input():
    s = get_schedule("stages=3,size=32:64,randaug=1:5,mixup=0:0.2,dropout=0.1:0.3")
    assert [st.image_size for st in s.stages()] == [32, 48, 64]
    assert [st.dropout_rate for st in s.stages()] == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 32 px"):
        ProgressiveSchedule(2, (16, 64))
    with pytest.raises(ValueError, match="at least 32 px"):
        get_schedule("stages=2,size=24:64")
    with pytest.raises(ValueError, match="unknown progressive schedule 'paper-xxl'"):
        get_schedule("paper-xxl")
    with pytest.raises(ValueError, match=r"dropout_rate.*must be in \[0, 1\)"):
        ProgressiveSchedule(2, (32, 64), dropout_rate=(0.1, 1.0))
    with pytest.raises(ValueError, match="num_stages"):
        ProgressiveSchedule(0, (32, 64))
    assert split_epochs(10, 4) == [2, 2, 3, 3]
    with pytest.raises(ValueError, match="cannot be split over 4 stages"):
        split_epochs(3, 4)


def test_paper_recipes_are_the_paper_setting():
    assert {k for k in RECIPES if k.startswith("paper-")} == {
        "paper-cifar10", "paper-cifar100", "paper-oxford_flowers102", "paper-cars196"}
    for ds, top1 in PAPER_TABLE8.items():
        r = RECIPES[f"paper-{ds}"]
        assert (r.batch_size, r.learning_rate, r.lr_schedule, r.total_steps) == (
            512, 1e-3, "cosine", 10_000)
        assert r.weight_decay == 0.0 and r.weights == "imagenet"
        assert r.augment.cutout and r.train_size == "eval" and r.progressive is None
        assert r.paper_top1 == top1
        c = RECIPES[f"colab-{ds}"]
        assert c.batch_size == 64 and c.learning_rate == pytest.approx(1.25e-4)
        assert c.mixed_precision
    assert PAPER_TABLE8["cars196"] == {"s": 93.8, "m": 94.6, "l": 95.1}
    assert PAPER_TABLE8["cifar100"]["l"] == 92.3
    assert scaled(RECIPES["paper-cifar10"], 128).learning_rate == pytest.approx(2.5e-4)


def test_optimizer_cosine_schedule_and_ema():
    opt = build_optimizer(get_recipe("paper-cifar10"), total_steps=100)
    assert opt.use_ema and opt.ema_momentum == pytest.approx(0.9996)
    lr = opt._learning_rate  # the schedule object
    assert float(lr(0)) == pytest.approx(1e-3)
    assert float(lr(50)) == pytest.approx(5e-4, rel=1e-3)
    assert float(lr(100)) == pytest.approx(0.0, abs=1e-9)


def test_plan_resolves_steps_sizes_and_progressive():
    plan = make_plan("paper-oxford_flowers102", model="s")
    assert plan["train_examples"] == 2040 and plan["steps_per_epoch"] == 2040 // 512
    assert plan["total_steps"] >= 10_000 and plan["eval_size"] == 384
    assert [s["image_size"] for s in plan["stages"]] == [384]
    plan = make_plan("paper-cifar10", model="m", progressive="paper-m", batch_size=128)
    assert plan["recipe"]["learning_rate"] == pytest.approx(2.5e-4)  # linear scaling
    assert [s["image_size"] for s in plan["stages"]] == [128, 212, 296, 380]
    assert sum(s["steps"] for s in plan["stages"]) == plan["total_steps"]
    assert plan["stages"][-1]["epochs"][1] == plan["epochs"]


def test_plan_bad_input():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet_x'.*cifar10"):
        make_plan(dataset="imagenet_x")
    with pytest.raises(ValueError, match="batch_size 4096 is larger than the 2040"):
        make_plan("paper-oxford_flowers102", batch_size=4096)
    with pytest.raises(ValueError, match="unknown recipe"):
        make_plan("paper-imagenet")
    with pytest.raises(ValueError, match="below the minimum 32"):
        make_plan("paper-cifar10", train_size=16)


def test_cli_dry_run_prints_plan(capsys):
    rc = train_main(["--dataset", "oxford_flowers102", "--model", "s", "--weights", "imagenet",
                     "--progressive", "automl-s", "--batch-size", "64", "--steps", "1000",
                     "--dry-run"])
    assert rc == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["recipe"]["weights"] == "imagenet" and plan["batch_size"] == 64
    assert [s["image_size"] for s in plan["stages"]] == [171, 214, 257, 300]
    assert plan["total_steps"] >= 1000 and plan["steps_per_epoch"] == 2040 // 64


def test_cli_errors_and_help(capsys):
    assert train_main(["--dataset", "nope", "--dry-run"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--dataset oxford_flowers102" in out


def test_progressive_presets_train_every_tap_of_the_last_stage():
    """issue 19: the digits preset started at 32 px, where B0's last stage (stride 32) runs on
    1x1 maps: a 3x3 'same' depthwise kernel then trains its centre tap only (measured: zero
    gradient on the other 8 taps at 32 px, none at 40 px and up), and at the next size the
    8 untrained taps join in and the network starts again from chance (clean training accuracy
    at 48 px of the model trained at 32 px: 10.7 %). A schedule whose sizes grow must keep the
    last stage's maps at 2x2 or more from its first stage on. Map sizes from Keras' shape
    inference of the real model."""
    import keras

    import keras_effv2

    model = keras_effv2.EfficientNetV2B0(weights=None, input_shape=(None, None, 3))
    last = keras.Model(model.inputs, model.get_layer("s5_b01").output)

    def side(size):
        return last.compute_output_shape((1, size, size, 3))[1]

    assert (side(32), side(40), side(64)) == (1, 2, 2)  # the boundary the rule draws
    for name, schedule in PRESETS.items():
        sizes = [s.image_size for s in schedule.stages()]
        sides = [side(s) for s in sizes]
        assert min(sides) >= 2 or max(sides) == 1, (name, sizes, sides)


def test_compare_fixed_order_arguments_and_summary():
    """``--compare-fixed``: both recipes per seed, order flipped every other seed; the per-run
    options are set by the comparison; mean and spread as NumPy computes them."""
    from keras_effv2.train import _compare_args
    from keras_effv2.training.compare import run_order, summarize

    assert run_order([0, 1, 2]) == [("progressive", 0), ("fixed", 0), ("fixed", 1),
                                    ("progressive", 1), ("progressive", 2), ("fixed", 2)]
    argv = ["--recipe", "digits", "--compare-fixed", "--seeds", "0,1", "--seed=3",
            "--output", "x", "--epochs", "9", "--verbose", "2"]
    assert _compare_args(argv) == ["--recipe", "digits", "--epochs", "9", "--verbose", "2"]
    runs = [{"kind": k, "seed": s, "test_accuracy": a, "train_seconds": t}
            for k, s, a, t in [("progressive", 0, 0.95, 100.0), ("fixed", 0, 0.97, 150.0),
                               ("progressive", 1, 0.99, 120.0), ("fixed", 1, 0.98, 160.0)]]
    out = summarize(runs)
    for kind in ("progressive", "fixed"):
        acc = [r["test_accuracy"] for r in runs if r["kind"] == kind]
        sec = [r["train_seconds"] for r in runs if r["kind"] == kind]
        assert out[kind]["test_accuracy"]["mean"] == pytest.approx(np.mean(acc))
        assert out[kind]["test_accuracy"]["std"] == pytest.approx(np.std(acc, ddof=1))
        assert out[kind]["train_seconds"]["mean"] == pytest.approx(np.mean(sec))
        assert (out[kind]["train_seconds"]["min"], out[kind]["train_seconds"]["max"]) == (
            min(sec), max(sec))


def test_compare_fixed_rejects_a_schedule(capsys):
    assert train_main(["--recipe", "digits", "--compare-fixed", "--progressive", "none"]) == 2
    assert "--compare-fixed runs the recipe's own schedule" in capsys.readouterr().err
    assert train_main(["--recipe", "digits", "--compare-fixed", "--seeds", "a"]) == 2
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err
