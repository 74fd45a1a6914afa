"""Parity of an artifact against PyTorch on real photos, on the device's own runtime."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..device.bench import measure_latency
from ..device.runtimes import open_runner
from ..errors import EdgepipeError
from .base import Converted
from .source import SourceModel


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class ParityReference:
    """PyTorch's outputs on the parity photos, computed once per conversion run."""

    def __init__(self, src: SourceModel, photos: dict[str, np.ndarray]) -> None:
        self.src = src
        self.names = list(photos)
        batches = src.batches(list(photos.values()))
        self.inputs = [b.numpy() for b in batches]
        self.outputs = [src.reference(b) for b in batches]

    def _label(self, index: int) -> str:
        labels = self.src.labels
        return labels[index] if labels and index < len(labels) else str(index)

    def compare(self, outputs: list[np.ndarray]) -> dict[str, Any]:
        errors = [float(np.abs(o - r).max()) for o, r in zip(outputs, self.outputs, strict=True)]
        scale = max(float(np.abs(r).max()) for r in self.outputs) or 1.0
        cosines = [float(np.dot(o.ravel(), r.ravel())
                         / (np.linalg.norm(o) * np.linalg.norm(r) + 1e-12))
                   for o, r in zip(outputs, self.outputs, strict=True)]
        report: dict[str, Any] = {
            "executed": True,
            "images": len(outputs),
            "max_abs_error": max(errors),
            "max_rel_error": max(errors) / scale,
            # direction of the output vector: the usual int8 fidelity figure
            "min_cosine_similarity": min(cosines),
        }
        if self.src.task == "classification":
            per_image = []
            for name, out, ref in zip(self.names, outputs, self.outputs, strict=True):
                p_out, p_ref = _softmax(out[0]), _softmax(ref[0])
                per_image.append({
                    "image": name,
                    "torch": self._label(int(p_ref.argmax())),
                    "torch_score": round(float(p_ref.max()), 4),
                    "artifact": self._label(int(p_out.argmax())),
                    "artifact_score": round(float(p_out.max()), 4),
                })
            agree = [p["torch"] == p["artifact"] for p in per_image]
            report["top1_agreement"] = sum(agree) / len(agree)
            report["per_image"] = per_image
        else:
            # a one-channel mask (logits) is foreground above 0; an argmax of one is always 0
            pixels = [float(((o > 0) == (r > 0)).mean() if o.shape[1] == 1 else
                            (o.argmax(axis=1) == r.argmax(axis=1)).mean())
                      for o, r in zip(outputs, self.outputs, strict=True)]
            report["pixel_agreement"] = float(np.mean(pixels))
        return report


def fp16_arithmetic(fmt: str, native: bool | None) -> str:
    """What arithmetic an fp16 artifact of ``fmt`` gets on a CPU with (``native``) or without
    native fp16, in words (:mod:`.half` says why)."""
    if native:
        return "fp16 (XNNPACK fp16 kernels: this CPU computes fp16 natively)"
    if fmt == "tflite":
        return ("fp16 emulated for parity (XNNPACK FORCE_FP16: fp32 arithmetic rounded to "
                "fp16 after each op); the host latency is the Interpreter's, which computes "
                "fp32 on a CPU without native fp16")
    return ("fp16 tensors between XNNPACK kernels, which convert to fp32 around each kernel "
            "on a CPU without native fp16")


def check_artifact(ref: ParityReference, converted: Converted, threads: int = 1,
                   runs: int = 20) -> tuple[dict[str, Any], dict[str, float] | None]:
    """(parity report, host latency stats) for one artifact; validation only if it can't run.

    fp16: the parity is that of fp16 arithmetic (the report's ``arithmetic`` says how it was
    had): a LiteRT fp16 artifact on a host without native fp16 is run for parity with
    XNNPACK's FORCE_FP16 (:class:`~edgepipe.device.runtimes.LiteRTForcedFP16Runner`), since
    the Interpreter would compute it in fp32; its latency stays the Interpreter's."""
    if not converted.runnable_here:
        return dict(converted.validation or {"executed": False}), None
    runner = open_runner(converted.path, threads=threads)
    numbers: Any = runner
    arithmetic = None
    if converted.precision == "fp16":
        from ..device.identity import fp16_support, local_identity

        native = fp16_support(local_identity())["native"]
        fmt = "tflite" if converted.path.suffix == ".tflite" else "executorch"
        arithmetic = fp16_arithmetic(fmt, native)
        if fmt == "tflite" and not native:
            from ..device.runtimes import LiteRTForcedFP16Runner

            try:
                numbers = LiteRTForcedFP16Runner(converted.path, threads)
            except EdgepipeError as exc:
                arithmetic = f"fp32 arithmetic (fp16 could not be forced here: {exc})"
    outputs = [numbers.run(x)[0] for x in ref.inputs]
    if numbers is not runner:
        numbers.close()
    latency = measure_latency(runner, ref.inputs[0], warmup=3, runs=runs)
    report = ref.compare(outputs)
    if arithmetic:
        report["arithmetic"] = arithmetic
    return report, latency.to_dict()
