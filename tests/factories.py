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
