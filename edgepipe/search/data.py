"""The data a search trains on: any image folder, or a built-in one that needs no download.

The built-in default is scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes),
upscaled to the proxy resolution and repeated to three channels. It ships with scikit-learn,
so it works offline and on CI; at 32 px a proposal's fine-tune (20 steps of 64 images) takes
about two seconds on one core, and at so few steps shrinking the wrong layer costs accuracy.
Latency is predicted at the architecture's own resolution (224 px by default), not at the proxy
size: the network is fully convolutional, and accuracy only has to rank the proposals.
(ImageNet-sized proxies are what the paper used; no such data can be fetched here.)

The third source is a distillation set (:mod:`.distill`): crops of real photos labelled by a
trained teacher's logits, split by photo; ``source`` is then the set's ``.pt`` file. Its
``y`` is the teacher's top-1 class and ``soft_*`` the teacher's logits, so accuracy on it is
top-1 agreement with the teacher.

Images are kept in memory as one tensor: a search visits the same images thousands of times.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import EdgepipeError
from ..images import IMAGE_SUFFIXES, read_image

BUILTIN = "digits"
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the converters


@dataclass(frozen=True)
class DataSpec:
    """Which data, at which size: plain data, so worker processes load it themselves."""

    source: str = BUILTIN  # "digits", an ImageFolder-layout folder or a distillation set
    image_size: int = 32  # the proxy resolution training runs at (digits are 8x8 scans)
    val_fraction: float = 0.2  # held out: proposals and samples are chosen on it
    test_fraction: float = 0.2  # held out from the choosing too: what finals are reported on
    split_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    # a distillation set: the teacher's logits per image (y is their top-1); None: labels
    soft_train: torch.Tensor | None = None
    soft_val: torch.Tensor | None = None
    soft_test: torch.Tensor | None = None
    photos: str = ""  # a distillation set: which photos are in which part

    @property
    def distillation(self) -> bool:
        return self.soft_train is not None

    def describe(self) -> str:
        if self.distillation:
            return (f"{len(self.x_train)} training / {len(self.x_val)} validation / "
                    f"{len(self.x_test)} test crops (each part from other photos), the "
                    f"teacher's {len(self.classes)} classes, {self.x_train.shape[-1]} px")
        return (f"{len(self.x_train)} training / {len(self.x_val)} validation / "
                f"{len(self.x_test)} test images, "
                f"{len(self.classes)} classes, {self.x_train.shape[-1]} px")


_CACHE: dict[DataSpec, Dataset] = {}


def load_dataset(spec: DataSpec) -> Dataset:
    """The dataset, loaded once per process (workers keep it between tasks)."""
    if spec not in _CACHE and spec.source.endswith(".pt"):
        _CACHE[spec] = _prepared(Path(spec.source), spec)
    if spec not in _CACHE:
        images, labels, classes = (_digits() if spec.source == BUILTIN
                                   else _image_folder(Path(spec.source)))
        x = _normalise(_resize(images, spec.image_size))
        _CACHE[spec] = _split(x, torch.as_tensor(labels), classes, spec)
    return _CACHE[spec]


def _prepared(path: Path, spec: DataSpec) -> Dataset:
    """A distillation set (:func:`.distill.prepare_distillation`), its split as made."""
    from .distill import normalise, read_prepared, split_words

    if not path.is_file():
        raise EdgepipeError(f"distillation set {path} does not exist: start the search with "
                            "--task distill to make it")
    data = read_prepared(path)
    if data["images"].shape[-1] != spec.image_size:
        raise EdgepipeError(f"{path} holds {data['images'].shape[-1]} px crops, not "
                            f"--image-size {spec.image_size}: give the size it was made at")
    x, logits, part = normalise(data["images"]), data["logits"], data["part"].long()
    top1 = logits.argmax(1)
    m = [part == k for k in range(3)]
    return Dataset(x[m[0]], top1[m[0]], x[m[1]], top1[m[1]], x[m[2]], top1[m[2]],
                   list(data["labels"]), logits[m[0]], logits[m[1]], logits[m[2]],
                   split_words(data))


def _digits() -> tuple[torch.Tensor, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0  # 0..16 in the file
    return grey[:, None].repeat(1, 3, 1, 1), digits.target, [str(i) for i in range(10)]


def _image_folder(root: Path) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    from PIL import Image

    if not root.is_dir():
        raise EdgepipeError(f"data folder {root} does not exist: give `digits` or a folder "
                            "with one sub-folder of images per class (ImageFolder layout)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).rglob("*"))
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not files:
        raise EdgepipeError(f"{root} has {len(classes)} class folder(s) and {len(files)} "
                            "image(s): a classifier needs at least two sub-folders of images")
    empty = [c for i, c in enumerate(classes) if not any(lbl == i for _, lbl in files)]
    if empty:
        raise EdgepipeError(f"class folder(s) without images in {root}: {', '.join(empty)}: "
                            "add images or remove the folder")
    images = []
    for f, _ in files:
        rgb = np.asarray(Image.fromarray(read_image(f)).resize((256, 256)), dtype=np.float32)
        images.append(torch.from_numpy(rgb).permute(2, 0, 1) / 255.0)
    return torch.stack(images), np.array([lbl for _, lbl in files]), classes


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if not 16 <= size <= 512:
        raise EdgepipeError(f"image size {size} is out of range: use 16 to 512 pixels")
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                           align_corners=False, antialias=True).clamp(0, 1)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(_MEAN)[:, None, None], torch.tensor(_STD)[:, None, None]
    return ((x - mean) / std).contiguous()


def split_parts(labels: np.ndarray, classes: list[str], spec: DataSpec) -> np.ndarray:
    """Each image's part: 0 training, 1 validation, 2 test; stratified, the same for the same
    seed, every class in each part (``edgepipe evaluate --data digits`` reads the test part)."""
    rng = np.random.default_rng(spec.split_seed)
    part = np.zeros(len(labels), dtype=np.int64)
    for c in range(len(classes)):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 3:
            raise EdgepipeError(f"class {classes[c]!r} has {len(idx)} image(s): give at least "
                                "three per class (training, validation and test each need one)")
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * spec.val_fraction))
        n_test = max(1, round(len(idx) * spec.test_fraction))
        part[idx[:n_val]] = 1
        part[idx[n_val:n_val + n_test]] = 2
    return part


def _split(x: torch.Tensor, y: torch.Tensor, classes: list[str], spec: DataSpec) -> Dataset:
    """A stratified three-way split (:func:`split_parts`)."""
    part = split_parts(y.numpy(), classes, spec)
    masks = [torch.from_numpy(part == k) for k in range(3)]
    return Dataset(x[masks[0]], y[masks[0]], x[masks[1]], y[masks[1]], x[masks[2]], y[masks[2]],
                   classes)
