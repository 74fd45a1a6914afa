import pytest
import torch
from torchvision import models as tvm
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from edgepipe.errors import EdgepipeError
from edgepipe.models import (
    BlockConfig,
    HardSigmoid,
    HardSwish,
    create_model,
    load_weights,
    mobilenet_v2_config,
    mobilenet_v3_config,
)


def _trained_like(module: torch.nn.Module) -> torch.nn.Module:
    """Give BatchNorm real statistics so that outputs are far from zero."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: real statistics after a few batches
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(4, 3, 96, 96))
    return module.eval()


@pytest.mark.parametrize(
    "name, factory, width",
    [
        ("mobilenet_v3_large", tvm.mobilenet_v3_large, 1.0),
        ("mobilenet_v3_large", tvm.mobilenet_v3_large, 0.75),
        ("mobilenet_v3_small", tvm.mobilenet_v3_small, 1.0),
        ("mobilenet_v3_small", tvm.mobilenet_v3_small, 0.5),
        ("mobilenet_v2", tvm.mobilenet_v2, 1.0),
        ("mobilenet_v2", tvm.mobilenet_v2, 0.35),
    ],
)
def test_classifier_loads_torchvision_state_dict_and_matches(name, factory, width):
    torch.manual_seed(0)
    theirs = _trained_like(factory(width_mult=width))
    ours, _ = create_model(name, width)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 1e-3  # a meaningful comparison, not two near-zero tensors
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in theirs.parameters())


def test_lraspp_matches_torchvision():
    torch.manual_seed(0)
    theirs = _trained_like(lraspp_mobilenet_v3_large(weights=None, weights_backbone=None))
    ours, info = create_model("lraspp_mobilenet_v3_large")
    assert info.task == "segmentation"
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected, got = theirs(x)["out"], ours(x)
    assert got.shape == (1, 21, 128, 128)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_large_has_paper_parameter_count():
    model, _ = create_model("mobilenet_v3_large")
    assert sum(p.numel() for p in model.parameters()) == 5_483_032  # torchvision's figure


def test_block_config_is_hashable_search_space_point():
    cfg = mobilenet_v3_config("large")
    assert len(set(cfg.blocks)) < len(cfg.blocks)  # repeated rows hash equal
    assert hash(cfg) == hash(mobilenet_v3_config("large"))
    assert cfg.blocks[3] == BlockConfig(24, 5, 72, 40, True, "RE", 2)
    with pytest.raises(ValueError):
        BlockConfig(16, 4, 16, 16, False, "RE", 1)


def test_segmentation_variant_halves_and_dilates_the_tail():
    plain = mobilenet_v3_config("large")
    seg = mobilenet_v3_config("large", reduced_tail=True, dilated=True)
    assert [b.dilation for b in seg.blocks[-3:]] == [2, 2, 2]
    assert seg.blocks[-1].out_channels == plain.blocks[-1].out_channels // 2
    assert seg.blocks[-1].depthwise_stride == 1


def test_v2_comes_from_the_same_builder():
    cfg = mobilenet_v2_config()
    assert not any(b.se for b in cfg.blocks)
    assert {b.activation for b in cfg.blocks} == {"R6"}
    assert cfg.blocks[1].expanded_channels == 6 * cfg.blocks[1].in_channels


def test_squeeze_excite_bottleneck_is_a_quarter_of_expansion():
    model, _ = create_model("mobilenet_v3_large")
    se = model.features[-2].block[2]  # 960 expansion channels
    assert se.fc1.out_channels == 960 // 4
    # a quarter, rounded to a multiple of 8 like every channel count (torchvision's values)
    squeeze = {b.cfg.expanded_channels: b.block[2].fc1.out_channels
               for b in model.features[1:-1] if b.cfg.se}
    assert squeeze == {72: 24, 120: 32, 480: 120, 672: 168, 960: 240}


def test_hard_activations_match_torch_in_both_forms():
    x = torch.linspace(-8, 8, 1001).reshape(1, 1, 1, -1)
    torch.testing.assert_close(HardSigmoid()(x), torch.nn.functional.hardsigmoid(x))
    for decomposed in (False, True):
        act = HardSwish(decomposed=decomposed)
        torch.testing.assert_close(act(x), torch.nn.functional.hardswish(x))


def test_real_mobilenet_v2_checkpoint_classifies_chelsea():
    from edgepipe.converters.images import parity_photos
    from edgepipe.converters.source import load_source_model
    from edgepipe.models.pretrained import resolve_weights

    src = load_source_model("mobilenet_v2", resolve_weights("mobilenet_v2", "imagenet"))
    logits = src.reference(src.batches([parity_photos()["chelsea"]])[0])[0]
    probs = torch.softmax(torch.from_numpy(logits), 0)
    assert src.labels[int(probs.argmax())] == "Egyptian cat"
    assert 0.6 < float(probs.max()) < 0.85  # ~0.72 with torchvision's preprocessing


def test_mismatched_weights_name_the_keys(tmp_path):
    small, _ = create_model("mobilenet_v3_small")
    path = tmp_path / "small.pth"
    torch.save(small.state_dict(), path)
    large, _ = create_model("mobilenet_v3_large")
    with pytest.raises(EdgepipeError, match=r"missing keys: .*features\.\d+"):
        load_weights(large, path)


def test_module_factory_models():
    model, info = create_model("tests.factories:tiny_cnn")
    assert info.label_set is None and isinstance(model, torch.nn.Module)
    with pytest.raises(EdgepipeError, match="not a torch.nn.Module"):
        create_model("tests.factories:not_a_module")
    with pytest.raises(EdgepipeError, match="cannot import"):
        create_model("no_such_module_xyz:factory")


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v2",
                                  "lraspp_mobilenet_v3_small"])
def test_fold_batchnorm_folds_every_conv_norm_and_keeps_outputs(name):
    from edgepipe.models.batchnorm import fold_batchnorm

    model = _trained_like(create_model(name)[0])
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded, count = fold_batchnorm(model)
    assert count == norms > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == norms
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    ref, out = (ref["out"], out["out"]) if isinstance(ref, dict) else (ref, out)
    assert ref.abs().max() > 1e-3  # real statistics: outputs far from zero
    # float rounding only: within 1e-4 of the output's scale (folding reorders products)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_batchnorm_re_estimation_takes_a_lone_last_image_and_refuses_one_image_at_1x1():
    from torch import nn

    from edgepipe.models.batchnorm import recalibrate_batchnorm

    # pooled to 1x1 before the BatchNorm, as the last stages of a 32-px MobileNetV3
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4))
    torch.manual_seed(0)
    images = torch.randn(9, 3, 8, 8) * 3 + 1
    # 9 images in chunks of 8 left one alone: "Expected more than 1 value per channel"
    recalibrate_batchnorm(module, [images], chunk=8)
    bn = module[2]
    pooled = module[1](module[0](images)).flatten(1)
    assert torch.allclose(bn.running_mean, pooled.mean(0), atol=1e-5)
    assert not module.training
    # one image: no variance to estimate; one line saying what to give
    with pytest.raises(EdgepipeError, match="2 or more images"):
        recalibrate_batchnorm(module, [images[:1]])
    assert not module.training
