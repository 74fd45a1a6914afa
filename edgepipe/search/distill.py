"""A task where accuracy moves, offline: distillation from the trained network on real photos.

The trained network (the NetAdapt seed, e.g. torchvision's ImageNet MobileNetV2) is the
teacher. Its inputs are random crops of real photographs: by default the 19 that scikit-image
and scikit-learn ship (:data:`SHIPPED_PHOTOS`: nothing is downloaded), or every image in a
folder of your own (labels ignored). The photos, not the crops, are split: training crops come
from one set of photos, validation crops (what NetAdapt chooses its proposals by) from
others, test crops (what finals are reported with) from others again, so a test crop is never
a view of a photo seen in training or selection. A student (a proposal, a width-scaled
network, a final) is trained to match the teacher's output distribution (KL divergence,
Hinton et al. 2015) and scored by

* **top-1 agreement**: the share of held-out crops on which its top class is the teacher's;
* **KL divergence** KL(teacher ‖ student) in nats, mean over the held-out crops.

The crops and the teacher's logits are computed once, in the process that starts the search,
and written to one file (uint8 crops, float32 logits, each crop's part and photo); worker
processes load that file (:func:`.data.load_dataset`) instead of running the teacher again.
Its name holds a digest of the settings, the photos' bytes and the teacher's weights: another
teacher, other photos or other settings make another file, and a search folder refuses them on
resume.

Crops: a square of 30-100 % of the photo's shorter side at a random place, flipped left-right
half of the time, resized (Lanczos) to the proxy resolution; a photo larger than four times
the proxy resolution on its shorter side is shrunk to that first. Greyscale photos are
repeated to three channels, as the converters' preprocessing does.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EdgepipeError
from ..images import IMAGE_SUFFIXES, read_image
from ..latency_tables.measure import Progress
from ..manifest import write_atomic
from ..models.space import Architecture

PHOTOS = "photos"
FORMAT = "edgepipe-distillation"
# Real photographs shipped inside the two libraries (library, file name). Left out: synthetic
# images (horse silhouette, logo, colour wheel, phantom, chessboard), the 102 px
# microaneurysms crop, and motorcycle_right (a stereo twin of motorcycle_left: its crops
# would leak across the split).
SHIPPED_PHOTOS = (
    ("skimage", "astronaut.png"), ("skimage", "brick.png"), ("skimage", "camera.png"),
    ("skimage", "cell.png"), ("skimage", "chelsea.png"), ("skimage", "clock_motion.png"),
    ("skimage", "coffee.png"), ("skimage", "coins.png"), ("skimage", "grass.png"),
    ("skimage", "gravel.png"), ("skimage", "hubble_deep_field.jpg"), ("skimage", "ihc.png"),
    ("skimage", "moon.png"), ("skimage", "motorcycle_left.png"), ("skimage", "retina.jpg"),
    ("skimage", "rocket.jpg"), ("skimage", "text.png"),
    ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
)
# a held-out split needs a photo for validation, one for test and two to train on
MIN_PHOTOS = 4
MIN_SIDE = 64  # pixels of a photo's shorter side: smaller ones give no crops worth the name
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as data.py


@dataclass(frozen=True)
class DistillSpec:
    """Which photos, how many crops of each part, at which size."""

    photos: str = PHOTOS  # "photos" (shipped) or a folder of images (any layout, recursive)
    image_size: int = 96  # the proxy resolution: crops are made at it, the teacher runs at it
    train_crops: int = 2048
    val_crops: int = 256
    test_crops: int = 512
    val_share: float = 0.15  # of the photos, at least one
    test_share: float = 0.25  # of the photos, at least one
    split_seed: int = 0  # which photos land in which part
    crop_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        where = "scikit-image's and scikit-learn's shipped photos" if self.photos == PHOTOS \
            else f"the photos in {self.photos}"
        return (f"{self.train_crops} training / {self.val_crops} validation / "
                f"{self.test_crops} test crops of {where}, {self.image_size} px")


def photo_files(spec: DistillSpec) -> list[tuple[str, Path]]:
    """(name, file) of every photo, in a fixed order; refused in one line when too few."""
    if spec.photos == PHOTOS:
        import skimage
        import sklearn.datasets

        roots = {"skimage": Path(skimage.__file__).parent / "data",
                 "sklearn": Path(sklearn.datasets.__file__).parent / "images"}
        found = [(name, roots[lib] / name) for lib, name in SHIPPED_PHOTOS]
        missing = [str(f) for _, f in found if not f.is_file()]
        if missing:
            raise EdgepipeError(f"the shipped photo {missing[0]} is missing (a scikit-image or "
                                "scikit-learn install without its data): reinstall them, or "
                                "give --data FOLDER of photos")
        return found
    root = Path(spec.photos)
    if not root.is_dir():
        raise EdgepipeError(f"photo folder {root} does not exist: give `photos` (the shipped "
                            "ones) or a folder of images")
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < MIN_PHOTOS:
        raise EdgepipeError(
            f"{root} has {len(files)} photo(s): a held-out split needs at least {MIN_PHOTOS} "
            "(two to train on, one for validation, one for test, each a different photo)")
    return [(str(f.relative_to(root)), f) for f in files]


def split_photos(names: list[str], spec: DistillSpec) -> list[int]:
    """Each photo's part (0 training, 1 validation, 2 test), the same for the same seed."""
    n = len(names)
    if n < MIN_PHOTOS:
        raise EdgepipeError(f"{n} photo(s): a held-out split needs at least {MIN_PHOTOS}")
    n_val = max(1, round(n * spec.val_share))
    n_test = max(1, round(n * spec.test_share))
    n_val, n_test = min(n_val, n - 3), min(n_test, n - 2 - min(n_val, n - 3))
    order = np.random.default_rng(spec.split_seed).permutation(n)
    part = [0] * n
    for i in order[:n_val]:
        part[i] = 1
    for i in order[n_val:n_val + n_test]:
        part[i] = 2
    return part


@functools.lru_cache(maxsize=32)
def _read_photo(path: str) -> np.ndarray:
    """A photo decoded once per process (a study prepares several sets of the same photos)."""
    photo = read_image(path)
    photo.setflags(write=False)
    return photo


def _crops(photo: np.ndarray, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random square crops (30-100 % of the shorter side), flipped half the time,
    resized to ``size``: uint8 (count, 3, size, size)."""
    from PIL import Image

    image = Image.fromarray(photo)
    # a photo far larger than its smallest crop needs is shrunk first (antialiased): the
    # smallest crop, 30 % of the shorter side, still has more than ``size`` pixels, and a
    # 1411 px photo is not resampled whole for every crop
    shorter = min(photo.shape[:2])
    if shorter > 4 * size:
        scale = 4 * size / shorter
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.LANCZOS)
    w, h = image.size
    out = np.empty((count, 3, size, size), dtype=np.uint8)
    for k in range(count):
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = image.crop((x, y, x + side, y + side)).resize((size, size), Image.LANCZOS)
        arr = np.asarray(crop)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out[k] = arr.transpose(2, 0, 1)
    return out


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float, ImageNet mean/std (what the teacher was trained on)."""
    mean = torch.tensor(_MEAN)[:, None, None]
    std = torch.tensor(_STD)[:, None, None]
    return ((images.float() / 255.0 - mean) / std).contiguous()


def _weights_digest(teacher: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def teacher_logits(teacher: nn.Module, images: torch.Tensor, batch: int = 64,
                   progress: Progress | None = None) -> torch.Tensor:
    """The teacher's logits (N, classes) on uint8 crops."""
    teacher.eval()
    out = []
    for i in range(0, len(images), batch):
        out.append(teacher(normalise(images[i:i + batch])).float())
        if progress:
            progress.advance(len(out[-1]))
    return torch.cat(out)


def prepare_distillation(spec: DistillSpec, teacher: nn.Module, labels: list[str],
                         folder: Path, progress: Progress | None = None) -> Path:
    """The distillation set's file in ``folder`` (made once, then reused): crops of the
    photos, split by photo, with the teacher's logits. ``labels``: the teacher's class names.

    Raises :class:`EdgepipeError` for too few photos (see :data:`MIN_PHOTOS`), an unreadable or
    too small photo, or labels that do not match the teacher's outputs."""
    if not 16 <= spec.image_size <= 512:
        raise EdgepipeError(f"image size {spec.image_size} is out of range: use 16 to 512")
    if min(spec.train_crops, spec.val_crops, spec.test_crops) < 1:
        raise EdgepipeError("every part needs at least one crop: give positive crop counts")
    files = photo_files(spec)
    parts = split_photos([n for n, _ in files], spec)
    # the photos by content (a folder whose photos changed makes another set), the teacher
    # by its weights
    photos_digest = [hashlib.sha256(f.read_bytes()).hexdigest() for _, f in files]
    digest = hashlib.sha256(json.dumps({"spec": spec.to_dict(), "photos": photos_digest,
                                        "teacher": _weights_digest(teacher)},
                                       sort_keys=True).encode()).hexdigest()[:16]
    path = folder / f"distill-{digest}.pt"
    if path.is_file():
        return path
    progress = progress or Progress()
    progress.phase(f"reading {len(files)} photos", len(files))
    photos = []
    for name, f in files:
        rgb = _read_photo(str(f))  # greyscale repeated to RGB, EXIF-upright, 8 bits
        if min(rgb.shape[:2]) < MIN_SIDE:
            raise EdgepipeError(f"photo {name} is {rgb.shape[1]}x{rgb.shape[0]} px: crops need "
                                f"at least {MIN_SIDE} px on the shorter side; remove it")
        photos.append(rgb)
        progress.advance()
    rng = np.random.default_rng(spec.crop_seed)
    wanted = {0: spec.train_crops, 1: spec.val_crops, 2: spec.test_crops}
    images, part_of, photo_of = [], [], []
    progress.phase("cropping photos", sum(wanted.values()))
    for p in (0, 1, 2):
        members = [i for i, q in enumerate(parts) if q == p]
        # crops spread evenly over the part's photos (the first ones get the remainder)
        counts = [wanted[p] // len(members) + (k < wanted[p] % len(members))
                  for k in range(len(members))]
        for i, count in zip(members, counts, strict=True):
            if count:
                images.append(_crops(photos[i], count, spec.image_size, rng))
                part_of += [p] * count
                photo_of += [i] * count
                progress.advance(count)
    x = torch.from_numpy(np.concatenate(images))
    progress.phase(f"the teacher on {len(x)} crops", len(x))
    logits = teacher_logits(teacher, x, progress=progress)
    if logits.ndim != 2 or logits.shape[1] != len(labels):
        raise EdgepipeError(f"the teacher gives outputs of shape {tuple(logits.shape[1:])} and "
                            f"has {len(labels)} class names: distillation needs a classifier "
                            "with one name per output")
    payload = {"format": FORMAT, "spec": spec.to_dict(), "digest": digest, "images": x,
               "logits": logits, "part": torch.tensor(part_of, dtype=torch.int8),
               "photo": torch.tensor(photo_of, dtype=torch.int16),
               "photos": [n for n, _ in files], "photo_part": parts, "labels": list(labels)}
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(path, buf.getvalue())
    return path


def seed_distillation(spec: DistillSpec, seed: Architecture, weights: Path,
                      labels: list[str] | None, folder: Path,
                      progress: Progress | None = None) -> Path:
    """:func:`prepare_distillation` with the NetAdapt seed as teacher: ``seed`` built and
    loaded whole with ``weights`` (its classifier is what the students learn), its class names
    ``labels`` (numbered where the weights carry none, :func:`.seeds.class_names`).

    Raises :class:`EdgepipeError` as :func:`prepare_distillation`, and for weights that do not
    fit the seed (:func:`~edgepipe.models.registry.load_weights`)."""
    from ..models.registry import load_weights
    from ..models.space import build_architecture
    from .seeds import class_names

    teacher = build_architecture(seed)
    load_weights(teacher, weights)
    return prepare_distillation(spec, teacher, class_names(seed, labels), folder, progress)


def read_prepared(path: Path) -> dict:
    """A distillation set's file as written by :func:`prepare_distillation`."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors have many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgepipeError(f"cannot read distillation set {path}: {first}: delete it, the "
                            "search makes it again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EdgepipeError(f"{path} is not an edgepipe distillation set: delete it, the "
                            "search makes it again")
    return data


def split_words(data: dict) -> str:
    """Which photos are in which part, in words (the record and the docs say it)."""
    names = data["photos"]
    parts = data["photo_part"]
    return "; ".join(f"{label}: {', '.join(n for n, p in zip(names, parts, strict=True) if p == k)}"
                     for k, label in enumerate(("training", "validation", "test")))
