"""``edgepipe evaluate``: each artifact run on the device over a data set, PyTorch on the host
as the reference, accuracy and agreement with intervals.

The device gets the images as files, in batches (an ``evaluate`` job,
:mod:`edgepipe.device.evaluate`), and preprocesses them itself as the manifest says. Every
batch's answers are appended to ``OUT/<artifact>.<sha12>.jsonl`` as they arrive, keyed by
image name and content hash: an interrupted evaluation resumes where it stopped, and a result
is never reused for another file. PyTorch's answers (the model the artifact was converted from,
rebuilt by :func:`edgepipe.converters.reference.torch_reference`) are kept the same way.

Per artifact: top-1 and top-5 against the labels, the flip rate (top-1 differs from
PyTorch's) and the classes that change most, each rate with its 95 % interval
(:mod:`.metrics`); for segmentation, pixel agreement and mean IoU against PyTorch's masks.

The floor: PyTorch run again on each image with every value moved by -1, 0 or +1 of 255
(seeded by the image's key) — a change below what JPEG or a camera pipeline makes. The share
of images whose top-1 that changes (``flip_floor``; for segmentation, the pixel agreement) says
how many flips the data set gives for nothing: on low-confidence images (crops of photos
whose content is not an ImageNet class) it is several percent, and no int8 artifact can be
judged below it. ``flip_rate_stable`` counts flips only on the images that keep their top-1.
"""

from __future__ import annotations

import base64
import json
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import EdgepipeError
from ..manifest import Manifest, load_manifest, write_atomic
from .data import EvalData, EvalImage, load_data
from .metrics import (
    changed_classes,
    confusion,
    mask_agreement,
    rate,
    segmentation_scores,
    topk_hits,
)

BATCH = 128  # images a job: each job is a worker process that loads the runtime again
BATCH_BYTES = 8 << 20  # ... and at most this much encoded data (the agent takes 16 MiB of JSON)


class Progress(Protocol):
    def phase(self, name: str, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class _Silent:
    def phase(self, name: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class ArtifactEvaluation:
    artifact: str
    format: str
    precision: str
    task: str
    images: int  # answered
    failed: list[str] = field(default_factory=list)  # images the device could not decode
    top1: dict[str, Any] | None = None  # rate(): value, low, high, n, method
    top5: dict[str, Any] | None = None
    flip_rate: dict[str, Any] | None = None  # top-1 differs from PyTorch's
    flip_floor: dict[str, Any] | None = None  # PyTorch's own flips, image moved by ±1/255
    flip_rate_stable: dict[str, Any] | None = None  # flips on images that keep PyTorch's top-1
    changed: list[dict[str, Any]] = field(default_factory=list)
    pixel_agreement: float | None = None  # segmentation, against PyTorch
    pixel_agreement_floor: float | None = None  # PyTorch against itself moved by ±1/255
    miou: dict[str, Any] | None = None  # segmentation against --masks, rate-like with interval
    pixel_accuracy: dict[str, Any] | None = None  # ... labelled pixels the artifact gets right
    per_class_iou: list[float | None] | None = None  # ... None for a class in no mask or output
    miou_vs_pytorch: float | None = None
    results: str | None = None  # the answers file
    note: str | None = None  # why a figure is missing
    stopped: str | None = None  # why the device did not answer every image


def _read_answers(path: Path) -> dict[str, dict[str, Any]]:
    answers: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                answers[record["key"]] = record
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by an interruption: asked again
    return answers


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    """One JSON line a record, flushed; after a line an interruption cut short, on a line of
    its own."""
    cut = path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as f:
        if cut:
            f.write("\n")
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.flush()


def _batches(items: list[EvalImage], size: int) -> Iterator[list[EvalImage]]:
    """Up to ``size`` images, and up to :data:`BATCH_BYTES` of base64 (one image at least)."""
    batch: list[EvalImage] = []
    total = 0
    for item in items:
        encoded = (len(item.data) + 2) // 3 * 4
        if batch and (len(batch) == size or total + encoded > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += encoded
    if batch:
        yield batch


def _payload(image: EvalImage) -> dict[str, str]:
    return {"name": image.key, "data": base64.b64encode(image.data).decode()}


def reference_key(manifest: Manifest) -> str:
    """Which PyTorch model an artifact came from: artifacts of one model (its formats and
    precisions) share one reference run."""
    return (f"{manifest.model}.{'x'.join(map(str, manifest.preprocessing.size))}."
            f"{manifest.extra.get('width_mult', 1.0)}")


def _classes(manifest: Manifest) -> int:
    """Classes the model tells apart: a classifier's outputs, a mask's channels."""
    if not manifest.outputs:
        return 0
    out = manifest.outputs[0]
    if manifest.task == "segmentation" and len(out.shape) == 4:
        # one channel: a foreground probability, two classes (decode.py's threshold)
        channels = out.shape[1] if out.layout == "NCHW" else out.shape[3]
        return max(int(channels), 2)
    return int(np.prod(out.shape))


def jitter(rgb: np.ndarray, key: str) -> np.ndarray:
    """``rgb`` (uint8) with every value moved by -1, 0 or +1, the same for the same key."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    moved = rgb.astype(np.int16) + rng.integers(-1, 2, size=rgb.shape, dtype=np.int16)
    return np.clip(moved, 0, 255).astype(np.uint8)


def run_reference(manifest: Manifest, artifact: Path, data: EvalData, path: Path,
                  top_k: int, weights: str | None, progress: Progress) -> dict[str, dict]:
    """PyTorch's answers on the host, through the artifact's own preprocessing, kept in
    ``path``, each with the answer on the image moved by ±1/255 (``floor``: the top-1 class,
    or for segmentation the pixel agreement of the two masks). Raises
    :class:`EdgepipeError` when the model cannot be rebuilt."""
    from ..converters.reference import torch_reference
    from ..decode import OutputDecoder
    from ..device.evaluate import decode_image, encode_mask
    from ..preprocess import preprocess

    answers = _read_answers(path)
    # an answer kept without its floor (an earlier version's) is computed again
    pending = [i for i in data.images
               if i.key not in answers or not {"floor", "error"} & answers[i.key].keys()]
    if not pending:
        return answers
    runner, _, _ = torch_reference(artifact, manifest.model, 1, weights)
    decoder = OutputDecoder(manifest, top_k=top_k)
    progress.phase("PyTorch on the host (the reference)", len(pending))
    for chunk in _batches(pending, BATCH):
        records = []
        for image in chunk:
            try:
                rgb = decode_image(image.data, image.name)
            except EdgepipeError as exc:
                records.append({"key": image.key, "error": str(exc)})
                continue
            outputs = runner.run(preprocess(rgb, manifest.preprocessing))
            moved = runner.run(preprocess(jitter(rgb, image.key), manifest.preprocessing))
            if decoder.task == "classification":
                probs = decoder.probabilities(outputs)
                best = np.argsort(-probs, kind="stable")[:top_k]
                records.append({"key": image.key,
                                "top": [[int(c), round(float(probs[c]), 6)] for c in best],
                                "floor": int(np.argmax(decoder.probabilities(moved)))})
            else:
                mask = decoder(outputs).classes
                floor = mask_agreement(mask, decoder(moved).classes)[0]
                records.append({"key": image.key, "mask": encode_mask(mask),
                                "floor": round(floor, 6)})
        _append(path, records)
        answers.update({r["key"]: r for r in records})
        progress.advance(len(chunk))
    return answers


def mask_on_model_grid(mask: np.ndarray, shape: tuple[int, ...],
                       manifest: Manifest) -> np.ndarray:
    """A ground-truth mask (the image's size) sampled where the model's output pixels lie:
    the part of the image preprocessing keeps (:func:`edgepipe.preprocess.crop_box`), at the
    output's ``shape`` (HxW), nearest class."""
    from PIL import Image

    from ..preprocess import crop_box

    img = Image.fromarray(mask)
    box = crop_box(img.width, img.height, manifest.preprocessing)
    return np.asarray(img.resize((shape[1], shape[0]), Image.NEAREST, box=box))


def _mask(record: dict[str, Any]) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(record["mask"]))))


def score(manifest: Manifest, name: str, data: EvalData, answers: dict[str, dict],
          reference: dict[str, dict] | None) -> ArtifactEvaluation:
    """The figures of one artifact's answers (and PyTorch's, when there are any)."""
    out = ArtifactEvaluation(name, manifest.format, manifest.precision, manifest.task, 0)
    done = [(i, answers[i.key]) for i in data.images if i.key in answers]
    out.failed = [i.name for i, a in done if "error" in a]
    done = [(i, a) for i, a in done if "error" not in a]
    out.images = len(done)
    if manifest.task == "classification":
        tops = [[c for c, _ in a["top"]] for _, a in done]
        if data.labelled:
            labels = [i.label for i, _ in done]
            out.top1 = rate(topk_hits(tops, labels, 1))
            out.top5 = rate(topk_hits(tops, labels, 5)) if len(tops[0] if tops else []) >= 5 \
                else None
        if reference is not None:
            pairs = [(reference[i.key]["top"][0][0], t[0]) for (i, _), t in zip(done, tops,
                                                                                strict=True)
                     if "top" in reference.get(i.key, {})]
            out.flip_rate = rate([r != p for r, p in pairs])
            out.changed = changed_classes([r for r, _ in pairs], [p for _, p in pairs],
                                          manifest.labels)
            # references kept by an earlier version have no floor: then it is None
            floors = [(reference[i.key]["top"][0][0], reference[i.key]["floor"], t[0])
                      for (i, _), t in zip(done, tops, strict=True)
                      if "floor" in reference.get(i.key, {})]
            out.flip_floor = rate([r != f for r, f, _ in floors])
            out.flip_rate_stable = rate([r != p for r, f, p in floors if r == f])
        return out
    masks = {i.key: _mask(a) for i, a in done}  # each PNG decoded once
    truths = [(i, masks[i.key]) for i, _ in done if i.mask is not None]
    if truths:
        classes = _classes(manifest)
        scored = segmentation_scores([
            confusion(mask_on_model_grid(i.mask, m.shape, manifest), m, classes)
            for i, m in truths])
        if scored:
            out.miou, out.pixel_accuracy = scored["miou"], scored["pixel_accuracy"]
            out.per_class_iou = scored["per_class_iou"]
    if reference is not None:
        scores = [mask_agreement(_mask(reference[i.key]), masks[i.key]) for i, _ in done
                  if "mask" in reference.get(i.key, {})]
        if scores:
            out.pixel_agreement = float(np.mean([s[0] for s in scores]))
            out.miou_vs_pytorch = float(np.mean([s[1] for s in scores]))
        floors = [reference[i.key]["floor"] for i, _ in done
                  if "floor" in reference.get(i.key, {})]
        out.pixel_agreement_floor = float(np.mean(floors)) if floors else None
    return out


def evaluate(targets: list[Path], source: str, *, device: str | None = None,
             out: Path, limit: int | None = None, label_map: Path | None = None,
             top_k: int = 5, threads: int = 1, weights: str | None = None,
             reference: bool = True, masks: Path | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate every runnable artifact of ``targets`` (convert output folders or files) on
    ``device`` (None: an agent started here) over ``source`` (``digits`` or a folder).
    Answers and ``evaluation.json`` go to ``out``. Returns the summary written there."""
    from ..decode import OutputDecoder
    from ..host.local import LOCAL, open_device
    from ..host.profiling import deployable

    progress = progress or _Silent()
    artifacts: list[Path] = []
    skipped: list[str] = []
    for target in targets:
        found, notes = deployable(Path(target))
        artifacts += found
        skipped += notes
    manifests = {p: load_manifest(p) for p in artifacts}
    for path, manifest in manifests.items():
        try:
            OutputDecoder(manifest)
        except EdgepipeError as exc:
            raise EdgepipeError(f"{path.name} cannot be evaluated: {exc}") from None
    tasks = {m.task for m in manifests.values()}
    if len(tasks) > 1:
        raise EdgepipeError(f"the artifacts have different tasks ({', '.join(sorted(tasks))}):"
                            " evaluate one model's artifacts at a time")
    first = manifests[artifacts[0]]
    if top_k < 1:
        raise EdgepipeError(f"--top-k {top_k}: give 1 or more")
    if masks is not None and first.task != "segmentation":
        raise EdgepipeError(f"--masks is for segmentation; {artifacts[0].name} is a "
                            f"{first.task} model")
    data = load_data(source, first.labels, _classes(first), limit=limit, label_map=label_map,
                     masks=masks)
    out.mkdir(parents=True, exist_ok=True)
    evaluations: list[ArtifactEvaluation] = []
    references: dict[str, dict[str, dict] | None] = {}
    notes: dict[str, str] = {}
    if reference:
        for path, manifest in manifests.items():
            key = reference_key(manifest)
            if key in references:
                continue
            try:
                references[key] = run_reference(manifest, path, data,
                                                out / f"pytorch.{key}.jsonl", top_k, weights,
                                                progress)
            except EdgepipeError as exc:
                references[key] = None
                notes[key] = f"no PyTorch reference: {exc}"
    fp16 = None
    with tempfile.TemporaryDirectory(prefix="edgepipe-eval-") as tmp, \
            open_device(device or LOCAL, Path(tmp)) as client:
        if any(m.precision == "fp16" for m in manifests.values()):
            # the device's fp16 arithmetic: fp16 rows say where it is not native
            from ..device.identity import fp16_support

            info = client.info()
            fp16 = info.get("fp16") or fp16_support(info.get("identity"))
        for path, manifest in manifests.items():
            answers_path = out / f"{path.name}.{manifest.file_sha256[:12]}.jsonl"
            answers = _read_answers(answers_path)
            pending = [i for i in data.images if i.key not in answers]
            note = None
            if pending:
                progress.phase(f"{path.name} on {device or 'this machine'}", len(pending))
                try:
                    sha = client.upload(path)["sha256"]
                    for chunk in _batches(pending, BATCH):
                        job = client.submit(artifact=sha, kind="evaluate", threads=threads,
                                            images=[_payload(i) for i in chunk], top_k=top_k)
                        result = client.wait(job["id"])["result"]
                        records = [{"key": r.pop("name"), **r} for r in result["results"]]
                        _append(answers_path, records)
                        answers.update({r["key"]: r for r in records})
                        progress.advance(len(chunk))
                except EdgepipeError as exc:  # the others still run; answers so far kept
                    note = str(exc)
            key = reference_key(manifest)
            evaluation = score(manifest, path.name, data, answers, references.get(key))
            evaluation.results = answers_path.name
            evaluation.stopped = note
            evaluation.note = "; ".join(n for n in (note, notes.get(key)) if n) or None
            evaluations.append(evaluation)
    # the float model itself, on the host: what the artifacts' accuracy is read against
    pytorch = []
    for manifest in manifests.values():
        key = reference_key(manifest)
        if references.get(key) and key not in {r["key"] for r in pytorch}:
            row = score(manifest, f"PyTorch {manifest.model} (host)", data, references[key],
                        None)
            row.format, row.precision, row.results = "pytorch", "fp32", f"pytorch.{key}.jsonl"
            pytorch.append({"key": key, **asdict(row)})
    summary = {"data": data.source, "labelled": data.labelled or masks is not None,
               "images": len(data.images), "pytorch": pytorch,
               "device": device or LOCAL, "top_k": top_k, "skipped": skipped,
               "artifacts": [asdict(e) for e in evaluations]}
    if fp16 is not None:
        summary["fp16"] = fp16
    write_atomic(out / "evaluation.json", json.dumps(summary, indent=1))
    return summary
