"""What an evaluation runs on: labelled images, read as files (the device decodes them).

``digits``: scikit-learn's handwritten digits, the test part of the split ``edgepipe search``
trains with (:func:`edgepipe.search.data.split_parts`, same seed), each 8x8 scan written as
an 8-bit grey PNG (16 levels scaled to 0-255). A folder: ImageFolder layout (one sub-folder
per class, named after the model's labels or their indices, or mapped with a JSON file
``{"folder": "label or index"}``), or a flat folder of images without labels (agreement with
PyTorch only). For segmentation, ground-truth masks in a second folder (``--masks``): each
image's mask at the same relative path and name, any image suffix (``a/b.jpg`` ↔
``a/b.png``), one channel of class indices (a palette or grey PNG, as Pascal VOC's
``SegmentationClass``), 255 where no class is given, the size of the upright image.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgepipeError
from ..images import IMAGE_SUFFIXES

DIGITS = "digits"


@dataclass
class EvalImage:
    name: str  # unique in the data set: "class/file.jpg", "digits/0123"
    data: bytes  # the encoded file, as sent to the device
    label: int | None  # the model's class index, None for unlabelled data
    mask: np.ndarray | None = None  # segmentation ground truth: HxW class indices, 255 ignored

    @property
    def key(self) -> str:
        """The name and the content's hash: a saved result is reused only for the same file."""
        return f"{self.name}#{hashlib.sha256(self.data).hexdigest()[:12]}"


@dataclass
class EvalData:
    images: list[EvalImage]
    source: str  # in words: what the data is and how its labels map
    labelled: bool


def _norm(text: str) -> str:
    return re.sub(r"[\s_-]+", " ", text.strip().lower())


def match_classes(folders: list[str], labels: list[str] | None, classes: int,
                  mapping: dict[str, str] | None = None) -> dict[str, int]:
    """Each folder's class index in the model: by label name (case, spaces and underscores
    ignored); by index only for a model without label names or through ``mapping`` (a
    folder "3" is not silently class 3 of a model whose class 3 is "tiger shark"). Raises
    :class:`EdgepipeError` naming the folders that match none of the model's classes."""
    by_name: dict[str, int] = {}
    for i, label in enumerate(labels or []):
        by_name.setdefault(_norm(label), i)  # a repeated label name: its first index
    found, missing = {}, []
    for folder in folders:
        key = (mapping or {}).get(folder, folder)
        if _norm(str(key)) in by_name:
            found[folder] = by_name[_norm(str(key))]
        elif str(key).isdigit() and int(key) < classes and (not labels or folder in
                                                             (mapping or {})):
            found[folder] = int(key)  # an index: for a model without label names, or mapped
        else:
            missing.append(folder)
    if missing:
        example = ", ".join(repr(x) for x in (labels or [])[:3]) or f"0 … {classes - 1}"
        raise EdgepipeError(
            f"{len(missing)} of {len(folders)} class folder(s) match none of the model's "
            f"{classes} classes: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}; "
            f"name them after its labels ({example}) or their indices, or map them with "
            "--label-map FILE.json ({\"folder\": \"label or index\"})")
    return found


def digits_part(part: int) -> list[tuple[int, bytes, int]]:
    """(index in ``load_digits``, an 8-bit grey PNG, the digit) of each image of one part of
    ``edgepipe search``'s split (0 training, 1 validation, 2 test)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from ..search.data import DataSpec, split_parts

    digits = load_digits()
    parts = split_parts(digits.target, [str(i) for i in range(10)], DataSpec())
    out = []
    for i in np.flatnonzero(parts == part):
        grey = np.clip(digits.images[i] * 255 / 16, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grey, mode="L").save(buffer, format="PNG")
        out.append((int(i), buffer.getvalue(), int(digits.target[i])))
    return out


def _digits(labels: list[str] | None, classes: int) -> EvalData:
    if classes != 10:
        named = f" (labels {', '.join((labels or [])[:3])}, …)" if labels else ""
        raise EdgepipeError(f"digits has 10 classes; the model has {classes}{named}: digits "
                            "evaluates models trained on it (edgepipe search)")
    mapping = match_classes([str(i) for i in range(10)], labels, classes)
    images = [EvalImage(f"digits/{i:04d}", png, mapping[str(digit)])
              for i, png, digit in digits_part(2)]
    return EvalData(images, f"scikit-learn digits, the test part of edgepipe search's split "
                            f"({len(images)} images)", True)


IGNORE = 255  # a mask's "no class here" (Pascal VOC's borders and unlabelled objects)


def read_mask(path: Path, classes: int) -> np.ndarray:
    """A ground-truth mask file → HxW class indices (uint8 up to 255 classes). Raises
    :class:`EdgepipeError` for a colour image, a value that is no class of the model (but
    255), an unreadable file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode not in ("P", "L", "I", "I;16", "1"):
                raise EdgepipeError(f"mask {path} is a {mode} image: give class indices, one "
                                    "channel (a palette or grey PNG, 255 = no class)")
            mask = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise EdgepipeError(f"mask {path} cannot be read ({exc})") from None
    values = np.unique(mask)
    bad = [int(v) for v in values if v != IGNORE and not 0 <= v < classes]
    if bad:
        raise EdgepipeError(f"mask {path} holds class {bad[0]}: the model has {classes} classes"
                            f" (0-{classes - 1}; 255 = no class)")
    # past 255 classes the indices need more than a byte (255 still means no class)
    return mask.astype(np.uint8 if classes <= IGNORE else np.int32)


def _upright_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) of an encoded image as the device sees it: EXIF orientation applied."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            turned = img.getexif().get(0x0112) in (5, 6, 7, 8)  # the four 90° orientations
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise EdgepipeError(f"image {name} cannot be decoded ({exc})") from None
    return (h, w) if turned else (w, h)


def _with_masks(root: Path, masks: Path, classes: int) -> EvalData:
    """The images of ``root`` that have a mask in ``masks``, each with it."""
    if not masks.is_dir():
        raise EdgepipeError(f"--masks {masks} is not a folder: give the folder of ground-truth "
                            "masks (the images' relative paths, .png)")
    if masks.resolve() == root.resolve():
        raise EdgepipeError(f"--masks {masks} is the --data folder: keep the masks apart")
    files = _files(root)
    if not files:
        raise EdgepipeError(f"--data {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    by_stem = {p.relative_to(masks).with_suffix(""): p for p in _files(masks)}
    images, missing = [], []
    for path in files:
        rel = path.relative_to(root)
        mask_path = by_stem.get(rel.with_suffix(""))
        if mask_path is None:
            missing.append(str(rel))
            continue
        data = path.read_bytes()
        mask = read_mask(mask_path, classes)
        size = _upright_size(data, str(rel))
        if mask.shape[::-1] != size:
            raise EdgepipeError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, its image "
                                f"{rel} {size[0]}x{size[1]}: a mask has its image's size")
        images.append(EvalImage(str(rel), data, None, mask=mask))
    if not images:
        raise EdgepipeError(f"--masks {masks}: none of the {len(files)} images of {root} has a "
                            f"mask there (e.g. {files[0].relative_to(root).with_suffix('.png')})")
    left = (f"; {len(missing)} without a mask left out, e.g. {missing[0]}" if missing else "")
    return EvalData(images, f"{root} ({len(images)} images with ground-truth masks from "
                            f"{masks}{left})", False)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_data(source: str, labels: list[str] | None, classes: int, *,
              limit: int | None = None, label_map: Path | None = None,
              masks: Path | None = None) -> EvalData:
    """The images of ``source`` (``digits`` or a folder) with the model's class index of
    each, or with ``masks`` (segmentation) the images that have a ground-truth mask, each
    with it. ``limit``: that many, drawn evenly at random (seed 0) so that every class keeps
    its share. Raises :class:`EdgepipeError` in one line for a folder without images,
    classes that match none of the model's, an unreadable label map or mask."""
    if masks is not None:
        if source == DIGITS:
            raise EdgepipeError("--masks goes with a folder of images, not digits")
        data = _with_masks(Path(source), Path(masks), classes)
    elif source == DIGITS:
        data = _digits(labels, classes)
    else:
        root = Path(source)
        if not root.is_dir():
            raise EdgepipeError(f"--data {source} is not a folder: give an ImageFolder-layout "
                                "folder (one sub-folder of images per class), a folder of "
                                "images, or `digits`")
        mapping = None
        if label_map is not None:
            try:
                mapping = {str(k): str(v) for k, v in json.loads(label_map.read_text()).items()}
            except (OSError, ValueError, AttributeError) as exc:
                raise EdgepipeError(f"--label-map {label_map} is not a JSON object of folder "
                                    f"→ label ({exc})") from None
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and _files(p))
        if folders:
            index = match_classes(folders, labels, classes, mapping)
            images = [EvalImage(f"{f}/{p.relative_to(root / f)}", p.read_bytes(), index[f])
                      for f in folders for p in _files(root / f)]
            words = (f"{root} ({len(images)} images in {len(folders)} class folders, "
                     f"matched to the model's labels)")
            data = EvalData(images, words, True)
        else:
            files = _files(root)
            if not files:
                raise EdgepipeError(f"--data {root} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                                    ": give a folder of images or of class folders")
            images = [EvalImage(str(p.relative_to(root)), p.read_bytes(), None) for p in files]
            data = EvalData(images, f"{root} ({len(images)} images, no labels: agreement with "
                                    "PyTorch only)", False)
    if limit is not None:
        if limit < 1:
            raise EdgepipeError(f"--limit {limit}: give 1 or more images")
        if limit < len(data.images):
            pick = np.sort(np.random.default_rng(0).permutation(len(data.images))[:limit])
            data.images = [data.images[i] for i in pick]
            data.source += f", {limit} drawn at random (seed 0)"
    return data
