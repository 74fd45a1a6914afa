"""``module:factory`` models used by the tests (any torch.nn.Module converts)."""

from torch import nn


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def not_a_module() -> str:
    return "not a module"


class _DataDependent(nn.Module):
    """Runs in eager PyTorch, but its branch on a tensor value cannot be exported."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        x = x.mean((2, 3))
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def data_dependent() -> nn.Module:
    return _DataDependent()


# Models from elsewhere, as users bring them (torchvision's own classes, not edgepipe's).

def tv_mobilenet_v3_small() -> nn.Module:
    """torchvision's MobileNetV3-Small (nn.Hardswish / nn.Hardsigmoid modules), narrowed."""
    import torchvision

    return torchvision.models.mobilenet_v3_small(width_mult=0.5, num_classes=100)


def tv_efficientnet_b0() -> nn.Module:
    """torchvision's EfficientNet-B0 (nn.SiLU, SE with nn.Sigmoid), narrowed and shallower."""
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.5, depth_mult=0.5)
    return EfficientNet(setting, 0.2, last_channel=last, num_classes=100)


class _FunctionalGate(nn.Module):
    """A squeeze-excite gate written with F.hardsigmoid: a function, not a module, so no form
    is swapped in and what it costs must show in the convert table."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.fc = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        from torch.nn import functional as F

        x = F.relu(self.conv(x))
        x = x * F.hardsigmoid(self.fc(x.mean((2, 3), keepdim=True)))
        return self.head(x.mean((2, 3)))


def functional_gate() -> nn.Module:
    return _FunctionalGate()


class _Heads(nn.Module):
    """Returns several outputs: a dict ({"out", "aux"}, as torchvision's segmentation models
    with aux_loss) or a tuple (logits, features), as embedding models do."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.seg = nn.Conv2d(8, 4, 1)
        self.aux = nn.Conv2d(8, 2, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        f = self.body(x)
        if self.kind == "dict":
            return {"out": self.seg(f), "aux": self.aux(f)}
        pooled = f.mean((2, 3))
        return self.fc(pooled), pooled


def dict_seg() -> nn.Module:
    return _Heads("dict")


def tuple_cls() -> nn.Module:
    return _Heads("tuple")


class _Gray(nn.Module):
    """A one-channel (grey) classifier, e.g. for an infrared camera."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, 2, 1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        import torch

        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def gray_cnn() -> nn.Module:
    return _Gray()


def digits_cnn() -> nn.Module:
    """A small classifier for scikit-learn's digits at 32 px (the evaluation tests train it)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=1, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


class _Overflowing(nn.Module):
    """A convolution whose outputs reach ~1e5 on ordinary images: past float16's 65504."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        nn.init.constant_(self.stem.weight, 2000.0)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, 10))

    def forward(self, x):
        return self.head(self.stem(x))


def overflowing_cnn() -> nn.Module:
    return _Overflowing()


def gelu_cnn() -> nn.Module:
    """GELU, which ExecuTorch's XNNPACK partitioner takes in fp32 but not in fp16."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


# Channel splits and channel-wise ops (ShuffleNetV2, GhostNet, CSP blocks; pytorch/executorch
# #21829): what XNNPACK does not take runs on portable kernels, which may refuse or misread
# a channels-last tensor.

class _ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit: chunk the channels in two, convolve one half, concatenate,
    shuffle the channels (view, transpose, reshape), then a global mean with dims dropped."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c),
                                  nn.ReLU())
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU(),
                                    nn.Conv2d(h, h, 3, padding=1, groups=h), nn.BatchNorm2d(h),
                                    nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU())
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        import torch

        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat((a, self.branch(b)), dim=1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(x.mean((2, 3)))


def shuffle_unit() -> nn.Module:
    return _ShuffleUnit()


class _ChannelOp(nn.Module):
    """A convolution, one channel-wise op XNNPACK does not take, a classifier head."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.conv, self.op = nn.Conv2d(3, 8, 3, stride=2, padding=1), op
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        import torch

        y = self.conv(x)
        if self.op == "roll":  # a channel shift (temporal-shift-style)
            y = torch.roll(y, 1, dims=1)
        elif self.op == "flip":
            y = torch.flip(y, [1])
        else:  # sort: no portable kernel at all
            y = y.sort(dim=1).values
        return self.head(y.mean((2, 3), keepdim=True).flatten(1))


def channel_roll() -> nn.Module:
    return _ChannelOp("roll")


def channel_flip() -> nn.Module:
    return _ChannelOp("flip")


def channel_sort() -> nn.Module:
    return _ChannelOp("sort")


class _RedVsBlue(nn.Module):
    """Class 0 when the (normalized) input is redder than it is blue, class 1 otherwise: the
    mean of R - B and of B - R. A swapped byte order answers the other class."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0.0, -1.0],
                                                 [-1.0, 0.0, 1.0]]).view(2, 3, 1, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.conv(x)).flatten(1)


def red_vs_blue() -> nn.Module:
    return _RedVsBlue()
