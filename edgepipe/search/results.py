"""What a search leaves behind: the model folder, the plots, and the check on the device.

The searched network is saved as ``model.json`` (architecture + class names) and
``weights.pth`` (a state_dict): ``edgepipe convert <dir>/model.json --weights
<dir>/weights.pth`` takes them as is, and ``edgepipe deploy`` takes what convert writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..latency_tables.estimate import Estimator
from ..latency_tables.measure import Progress
from ..manifest import write_atomic
from ..models.space import Architecture, model_file_dict
from ..plotting import pyplot, save_figure
from .state import save_weights
from .train import TrainResult

__all__ = ["Progress", "finish_model", "plot_netadapt_path", "plot_samples", "verify_on_device"]


def finish_model(folder: Path, arch: Architecture, result: TrainResult, labels: list[str],
                 estimator: Estimator, extra: dict[str, Any]) -> dict[str, Any]:
    """Write model.json + weights.pth; the summary the search records."""
    save_weights(folder / "weights.pth", result.state)
    prediction = estimator.prediction(arch)
    summary = {"accuracy": result.accuracy, "test_accuracy": result.test_accuracy,
               # a distillation set: accuracy is top-1 agreement with the teacher, and these
               # are KL(teacher ‖ student) in nats (None on labelled data)
               "kl": result.kl, "test_kl": result.test_kl,
               # keep_best_every: the step whose state was kept (0: the one before training;
               # None: keep-best off, the last state)
               "kept_step": result.kept_step,
               "predicted_ms": estimator.predict(arch), "predicted_p90_ms": prediction.p90,
               "interval_ms": prediction.intervals.get("median"),
               "measured_share": estimator.measured_share(arch),
               "transferred_share": prediction.transferred_share,
               "prediction": prediction.words(("median", "p90")),
               "table": estimator.table.describe(), **extra,
               "model": str(folder / "model.json"), "weights": str(folder / "weights.pth")}
    write_atomic(folder / "model.json",
                 json.dumps(model_file_dict(arch, labels, search=summary), indent=1))
    return summary


def verify_on_device(model_file: Path, estimator: Estimator, client: Any, workdir: Path,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Convert the searched network for the table's runtime, measure it on the device the
    table's way, and compare with the prediction (rescaled when the estimator is: ``factor``)."""
    from ..latency_tables.evaluate import measure_networks
    from ..models.space import load_architecture

    arch, _ = load_architecture(model_file)
    rows, _ = measure_networks([arch], estimator.table, client, workdir, progress=progress)
    predicted = estimator.predict(arch)
    measured = rows[0]["measured_ms"]
    return {"predicted_ms": predicted, "measured_ms": measured,
            "error_pct": (predicted - measured) / measured * 100,
            "passes_ms": rows[0]["passes_ms"], "device": estimator.table.describe(),
            "factor": estimator.factor}


def plot_netadapt_path(steps: list[dict[str, Any]], finals: dict[str, Any], path: Path) -> None:
    """Accuracy against predicted latency, step by step, and the fine-tuned finals."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.plot([s["predicted_ms"] for s in steps], [s["accuracy"] * 100 for s in steps],
            "-o", ms=3, color="#1f5fa8", label="NetAdapt steps (after T fine-tune steps)")
    for target, f in finals.items():
        ax.scatter([f["predicted_ms"]], [f["accuracy"] * 100], marker="*", s=120,
                   color="#c0392b", zorder=3)
        ax.axvline(float(target), color="#999", lw=0.8, ls="--")
    ax.scatter([], [], marker="*", color="#c0392b", label="final (long fine-tune)")
    ax.invert_xaxis()  # the search walks right to left: from the seed to the target
    ax.set_xlabel("predicted latency (ms)")
    distill = steps[0].get("kl") is not None  # a distillation set: agreement with the teacher
    ax.set_ylabel("top-1 agreement with the teacher, validation photos (%)" if distill
                  else "validation accuracy (%)")
    ax.set_title("NetAdapt path", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


def plot_samples(samples: list[dict[str, Any]], target_ms: float, path: Path,
                 title: str) -> None:
    """Every sampled network's accuracy against latency, coloured by when it was sampled."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    sc = ax.scatter([s["predicted_ms"] for s in samples], [s["accuracy"] * 100 for s in samples],
                    c=range(len(samples)), cmap="viridis", s=16)
    best = max(samples, key=lambda s: s["reward"])
    ax.scatter([best["predicted_ms"]], [best["accuracy"] * 100], marker="*", s=140,
               color="#c0392b", label="best reward")
    ax.axvline(target_ms, color="#999", lw=0.8, ls="--", label="target latency")
    fig.colorbar(sc, ax=ax, label="sample")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("proxy accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
