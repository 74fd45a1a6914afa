"""PT2E int8 as both converters run it: ReLU6 quantized after the clamp, not before."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from edgepipe.converters.quantize import (
    capture_for_quantization,
    litert_module_names,
    op_name,
    quantize_pt2e,
)


class WideConvReLU6(nn.Module):
    """conv → ReLU6 twice, the convolutions' outputs spanning about ±40 before the clamp."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.act1, self.act2 = nn.ReLU6(), nn.ReLU6()
        with torch.no_grad():
            self.conv1.weight.mul_(20.0)
            self.conv2.weight.mul_(10.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.conv2(self.act1(self.conv1(x))))


def quantizer_for(runtime: str) -> tuple[object, contextlib.AbstractContextManager]:
    if runtime == "executorch":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        return (XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True)), contextlib.nullcontext())
    from litert_torch.quantize import pt2e_quantizer

    return (pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)),
        litert_module_names())


def activation_scales(graph: torch.fx.GraphModule) -> dict[str, float]:
    """The op each activation quantize node follows → its scale."""
    scales = {}
    for node in graph.graph.nodes:
        if node.op == "call_function" and op_name(node.target) == "quantize_per_tensor":
            source = node.args[0]
            if source.op == "call_function":
                scales[f"{op_name(source.target)}:{source.name}"] = float(node.args[1])
    return scales


@pytest.mark.parametrize("runtime", ["executorch", "litert"])
def test_relu6_is_quantized_after_the_clamp(runtime):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = WideConvReLU6().eval()
    batches = [torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(i))
               for i in range(8)]
    with torch.no_grad():
        raw = model.conv1(batches[0])
        reference = [model(b) for b in batches]
    assert raw.abs().max() > 20  # the conv's range is far wider than the clamp's

    quantizer, names = quantizer_for(runtime)
    with names:
        fused = quantize_pt2e(model, batches[0], quantizer, batches, fold_quantize=False)
        # the quantizer as it annotates on its own: the conv's output observed before the clamp
        plain = prepare_pt2e(capture_for_quantization(model, batches[0]), quantizer)
        with torch.no_grad():
            for b in batches:
                plain(b)
        plain = convert_pt2e(plain, fold_quantize=False)

    scales = activation_scales(fused)
    after_clamp = [s for k, s in scales.items() if k.startswith("hardtanh")]
    assert len(after_clamp) == 2, scales
    # int8 spans [0, 6] (an observer's range may stop short of 6, never go past it)
    assert all(s <= 6 / 255 * 1.001 for s in after_clamp), scales
    assert not [k for k in scales if k.startswith("conv")], scales  # nothing between
    wide = [s for k, s in activation_scales(plain).items() if k.startswith("conv")]
    assert wide and max(wide) > 3 * 6 / 255  # the library's own annotation, for contrast

    with torch.no_grad():
        error = {name: torch.cat([(g(b) - r).abs().flatten()
                                  for b, r in zip(batches, reference, strict=True)]).mean()
                 for name, g in (("fused", fused), ("plain", plain))}
    assert error["fused"] < error["plain"] / 2, error


class LoudAdd(nn.Module):
    """A residual add one of whose inputs carries a constant 400 on one channel: the fc reads
    nothing of that channel (its weights are 0), so the float model never sees it, but int8
    per-tensor on the add's output spends its 256 steps on [0, 400]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.side = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)
        with torch.no_grad():
            self.side.weight[0].zero_()
            self.side.bias[0] = 400.0
            self.fc.weight[:, 0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc((self.body(x) + self.side(x)).mean((2, 3)))


def test_activation_sensitivity_finds_the_tensors_no_layer_owns():
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    from edgepipe.converters.sensitivity import QuantizationStudy, activation_sensitivity

    model = LoudAdd().eval()
    batches = [torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(i))
               for i in range(16)]
    study = QuantizationStudy(model, batches[0], batches, XNNPACKQuantizer,
                              get_symmetric_quantization_config(is_per_channel=True))
    found = activation_sensitivity(study)
    # the three tensors that carry the 400 (the side conv's output, the add's, the mean's)
    # are the worst alone int8, 256 steps over [-400, 400]; the others are fine
    loud, rest = found["tensors"][:3], found["tensors"][3:]
    assert {r["tensor"] for r in loud} == {"side conv2d", "add", "mean"}, found["tensors"]
    assert all(r["scale"] > 1 and r["alone_int8"]["sqnr_db"] < 15 for r in loud)
    assert min(r["alone_int8"]["sqnr_db"] for r in rest) > 30
    # the split: activations are the problem, not weights (keeping the side layer in float
    # would not help: the add and the mean requantize its 400)
    assert found["activations_float"]["sqnr_db"] > found["weights_float"]["sqnr_db"] + 20
    # the rounded weights baked in compute what the q/dq graph computes
    assert found["int8"]["sqnr_db"] == pytest.approx(study.int8().sqnr_db, abs=0.01)
    assert [r["rank"] for r in found["tensors"]] == list(range(1, len(found["tensors"]) + 1))


class RoundsUp(nn.Module):
    """conv → batch norm whose weights all sit just past half an int8 step of their channel
    (one weight per channel sets the step): per-channel rounding moves every one of them the
    same way, so on positive inputs the output's mean shifts — the error bias correction
    takes off."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6))
        with torch.no_grad():
            step = 1.0 / 127
            weight = torch.full((6, 4, 3, 3), 0.6 * step)
            weight[:, 0, 0, 0] = 1.0  # the largest weight: the channel's step is 1/127
            self.net[0].weight.copy_(weight)
            self.net[1].running_mean.zero_()
            self.net[1].running_var.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_bias_correction_takes_off_the_mean_shift_of_rounded_weights():
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    from edgepipe.converters.quantize import conv_bn_pairs, correct_biases

    model = RoundsUp().eval()
    batches = [torch.rand(1, 4, 12, 12, generator=torch.Generator().manual_seed(i)) + 1.0
               for i in range(8)]  # inputs in [1, 2]: a mean the shift multiplies
    fixed, names = correct_biases(model, batches)
    assert names == ["net.0"] == [n for n, _, _ in conv_bn_pairs(model)]
    assert torch.equal(model.net[1].bias, torch.zeros(6))  # the original is untouched
    assert (fixed.net[1].bias < 0).all()  # every channel rounded up: shifted down

    def mean_error(module: nn.Module) -> float:
        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True))
        graph = quantize_pt2e(module, batches[0], quantizer, batches)
        with torch.no_grad():
            return float(torch.stack([(graph(b) - model(b)).mean() for b in batches]).mean())

    plain, corrected = mean_error(model), mean_error(fixed)
    assert abs(plain) > 0.05, plain  # 36 taps x 0.4 step x ~1.5 per output, all one way
    assert abs(corrected) < abs(plain) / 5, (plain, corrected)
    assert correct_biases(model, batches, skip=["net.0"])[1] == []

    # a layer kept in float after the correction gets its bias back: as if skipped from
    # the start (the input means are measured before any correction)
    from edgepipe.converters.convert import bias_corrected, without_correction
    from edgepipe.converters.source import SourceModel

    src = SourceModel("rounds_up", model, None, None, None, None)
    corrected = bias_corrected(src, batches)
    assert corrected.bias_corrected == ["net.0"] and src.bias_corrected is None
    restored = without_correction(corrected, src, ("net.0",))
    assert restored.bias_corrected == []
    assert torch.equal(restored.module.net[1].bias, model.net[1].bias)


def test_convert_bias_correction_from_the_cli(tmp_path):
    import json

    from edgepipe.manifest import load_manifest

    from .artifacts import convert_cli_cached
    from .conftest import run_cli

    out = tmp_path / "bc"
    done = convert_cli_cached("tests.factories:digits_cnn", "--size", "32", "--to", "tflite",
                              "--int8", "--bias-correction", "-o", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    int8 = next(a for a in report["artifacts"] if a["precision"] == "int8")
    assert load_manifest(out / int8["file"]).quantization["bias_corrected_layers"] == \
        ["0", "3", "6"]
    assert int8["parity"]["top1_agreement"] >= 0.75, int8["parity"]
    for args, words in (((), "add --int8"),
                        (("--int8",), "has no Conv2d followed by a BatchNorm2d")):
        model = "tests.factories:dict_seg" if args else "tests.factories:digits_cnn"
        done = run_cli("convert", model, "--size", "32", "--to", "tflite", "--task",
                       "segmentation" if args else "classification", *args,
                       "--bias-correction", "-o", str(tmp_path / "no"))
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and not (tmp_path / "no").exists()
