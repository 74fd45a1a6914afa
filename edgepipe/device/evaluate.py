"""An evaluation job on the device: encoded images in, each one's top-k (classification) or
mask (segmentation) out.

The images arrive as files (PNG, JPEG, ...), not tensors, and are decoded and preprocessed
here exactly as the artifact's manifest says (:func:`edgepipe.preprocess.preprocess`, the code
the demo and the converters' parity checks use), so what is measured is what an app on the
device computes. An image that cannot be decoded is reported by name; the others still run.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..decode import OutputDecoder
from ..errors import EdgepipeError
from ..images import pil_to_rgb8
from ..manifest import Manifest
from ..preprocess import preprocess
from .runtimes import import_runtime, open_runner


def decode_image(raw: bytes, name: str) -> np.ndarray:
    """An encoded image file → HxWx3 uint8 RGB, upright. Raises EdgepipeError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            return pil_to_rgb8(img, f"image {name}")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise EdgepipeError(f"image {name} cannot be decoded ({exc})") from None


def encode_mask(mask: np.ndarray) -> str:
    """An HxW class-index mask (uint8) as a base64 PNG (lossless, a few kB)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def run_evaluation(spec: dict[str, Any], artifact: Any, manifest: Manifest,
                   report: Callable[..., None]) -> dict[str, Any]:
    """``{"kind": "evaluate", "results": [{"name", "top": [[class, probability], ...]} or
    {"name", "mask": base64 PNG, "shape": [H, W]} or {"name", "error"}], ...}``."""
    decoder = OutputDecoder(manifest, top_k=spec.get("top_k", 5))
    manifest.check()
    images = spec["images"]
    report(phase="loading", done=0, total=len(images))
    import_runtime(artifact)
    runner = open_runner(artifact, spec["threads"])
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    for i, item in enumerate(images):
        report(phase="evaluating", done=i, total=len(images))
        try:
            raw = base64.b64decode(item["data"], validate=True)
        except binascii.Error as exc:
            results.append({"name": item["name"],
                            "error": f"image {item['name']} cannot be decoded ({exc})"})
            continue
        try:
            rgb = decode_image(raw, item["name"])
        except EdgepipeError as exc:
            results.append({"name": item["name"], "error": str(exc)})
            continue
        outputs = runner.run(preprocess(rgb, manifest.preprocessing))
        if decoder.task == "classification":
            probs = decoder.probabilities(outputs)
            best = np.argsort(-probs, kind="stable")[: decoder.top_k]
            results.append({"name": item["name"],
                            "top": [[int(c), round(float(probs[c]), 6)] for c in best]})
        else:
            mask = decoder(outputs).classes
            results.append({"name": item["name"], "mask": encode_mask(mask),
                            "shape": list(mask.shape)})
    return {"kind": "evaluate", "runtime": runner.runtime, "task": decoder.task,
            "threads": spec["threads"], "top_k": decoder.top_k, "results": results,
            "seconds": time.perf_counter() - started,
            "measured_by": {"path": "python", "words": f"{runner.runtime} Python API, "
                            "images preprocessed on the device as the manifest says"}}
