"""The variant table against the reference's resolved architecture and timm's own modules."""

import pytest

from keras_effv2.configs import VARIANTS, get_variant, resolve_blocks, round_filters

# docs/architecture.md §1.2: stem, head, blocks, and per stage (type, repeats, in, out, SE first/rest).
RESOLVED = {
    "b0": (32, 1280, 21, "F1 32 16; F2 16 32; F2 32 48; M3 48 96 12 24; M5 96 112 24 28; M8 112 192 28 48"),
    "b1": (32, 1280, 27, "F2 32 16; F3 16 32; F3 32 48; M4 48 96 12 24; M6 96 112 24 28; M9 112 192 28 48"),
    "b2": (32, 1408, 28, "F2 32 16; F3 16 32; F3 32 56; M4 56 104 14 26; M6 104 120 26 30; M10 120 208 30 52"),
    "b3": (40, 1536, 32, "F2 40 16; F3 16 40; F3 40 56; M5 56 112 14 28; M7 112 136 28 34; M12 136 232 34 58"),
    "s": (24, 1280, 40, "F2 24 24; F4 24 48; F4 48 64; M6 64 128 16 32; M9 128 160 32 40; M15 160 256 40 64"),
    "m": (24, 1280, 57, "F3 24 24; F5 24 48; F5 48 80; M7 80 160 20 40; M14 160 176 40 44; "
          "M18 176 304 44 76; M5 304 512 76 128"),
    "l": (32, 1280, 79, "F4 32 32; F7 32 64; F7 64 96; M10 96 192 24 48; M19 192 224 48 56; "
          "M25 224 384 56 96; M7 384 640 96 160"),
    "xl": (32, 1280, 100, "F4 32 32; F8 32 64; F8 64 96; M16 96 192 24 48; M24 192 256 48 64; "
           "M32 256 512 64 128; M8 512 640 128 160"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resolved_architecture_matches_reference_table(variant):
    stem, head, n_blocks, stages = RESOLVED[variant]
    spec = VARIANTS[variant]
    blocks = resolve_blocks(spec)
    assert (spec.stem_channels, spec.head_channels, len(blocks)) == (stem, head, n_blocks)
    for s_idx, row in enumerate(stages.split("; ")):
        kind, cin, cout, *se = row.split()
        stage = [b for b in blocks if b.stage == s_idx]
        assert len(stage) == int(kind[1:])
        assert {b.block for b in stage} == {"fused" if kind[0] == "F" else "mbconv"}
        assert (stage[0].in_channels, stage[-1].out_channels) == (int(cin), int(cout))
        assert all(b.in_channels == int(cout) for b in stage[1:])
        se_expected = [int(se[0])] + [int(se[1])] * (len(stage) - 1) if se else [0] * len(stage)
        assert [b.se_channels for b in stage] == se_expected


def test_round_filters_head_widths():
    assert [round_filters(1280, w) for w in (1.0, 1.0, 1.1, 1.2)] == [1280, 1280, 1408, 1536]
    assert round_filters(40, 1.1) == 48 and round_filters(16, 1.2) == 16


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_drop_path_ramp(variant):
    blocks = resolve_blocks(VARIANTS[variant])
    n = len(blocks)
    assert [b.drop_path_rate for b in blocks] == pytest.approx([0.2 * i / n for i in range(n)])
    assert [b.drop_path_rate for b in resolve_blocks(VARIANTS[variant], 0.5)] == pytest.approx(
        [0.5 * i / n for i in range(n)]
    )


def test_get_variant_names_and_error():
    assert get_variant("efficientnetv2-s") is VARIANTS["s"]
    assert get_variant("XL") is VARIANTS["xl"]
    with pytest.raises(ValueError, match="Accepted: b0, b1, b2, b3, s, m, l, xl"):
        get_variant("b7")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_blocks_match_timm_module_structure(variant):
    """Every resolved block equals the corresponding module of timm's tf_efficientnetv2."""
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    with torch.device("meta"):  # structure only: no 200M-parameter allocations
        model = timm.create_model(f"tf_efficientnetv2_{variant}", pretrained=False)
    ours = resolve_blocks(VARIANTS[variant])
    theirs = [(s, j, blk) for s, stage in enumerate(model.blocks) for j, blk in enumerate(stage)]
    assert len(ours) == len(theirs)
    for b, (s, j, blk) in zip(ours, theirs, strict=True):
        assert (b.stage, b.index) == (s, j)
        name = type(blk).__name__
        if b.block == "mbconv":
            assert name == "InvertedResidual"
            assert blk.conv_pw.in_channels == b.in_channels
            assert blk.conv_pw.out_channels == b.mid_channels
            assert blk.conv_dw.stride == (b.stride, b.stride)
            assert blk.se.conv_reduce.out_channels == b.se_channels
            assert blk.conv_pwl.out_channels == b.out_channels
        elif b.expand_ratio == 1:
            assert name == "ConvBnAct"
            assert (blk.conv.in_channels, blk.conv.out_channels) == (b.in_channels, b.out_channels)
            assert blk.conv.stride == (b.stride, b.stride)
        else:
            assert name == "EdgeResidual"
            assert blk.conv_exp.in_channels == b.in_channels
            assert blk.conv_exp.out_channels == b.mid_channels
            assert blk.conv_exp.stride == (b.stride, b.stride)
            assert blk.conv_pwl.out_channels == b.out_channels
        assert blk.has_skip == b.has_residual
