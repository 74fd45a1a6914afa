"""``edgepipe run``: model → convert → deploy → profile on every device → one HTML report."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..converters.convert import ConvertRequest, Progress, convert
from ..device.local import LOCAL, open_device
from ..device.profiling import deploy, deployable, profile
from ..device.registry import get_device
from ..errors import EdgepipeError
from ..manifest import write_atomic
from ..models.pretrained import resolve_weights
from .config import PipelineConfig
from .report import render_run_report


def measure_on_device(name: str, artifacts: list[Path], config: PipelineConfig, out: Path,
                      step: Callable[[str], None]) -> dict[str, Any]:
    """Deploy and profile every artifact at every thread count on one device."""
    entry: dict[str, Any] = {"name": name, "results": [], "errors": []}
    try:
        with open_device(name, out) as client:
            entry["info"] = client.info()
            deploy(client, artifacts, on_step=lambda s: step(f"{name}: {s}"))
            for path in artifacts:
                for threads in config.measure.threads:
                    step(f"{name}: {path.name}, {threads} thread(s)")
                    try:
                        result = profile(client, path, threads=threads,
                                         warmup=config.measure.warmup, runs=config.measure.runs,
                                         per_op=config.measure.per_op,
                                         device_info=entry["info"])
                        entry["results"].append(asdict(result))
                    except EdgepipeError as exc:  # one artifact failing keeps the others
                        entry["errors"].append(f"{path.name} ({threads} threads): {exc}")
    except EdgepipeError as exc:
        entry["errors"].append(str(exc))
    return entry


def _silent(title: str) -> AbstractContextManager[Progress]:
    return nullcontext(Progress())


def run_pipeline(config: PipelineConfig, out: Path,
                 progress: Callable[[str], AbstractContextManager[Progress]] = _silent
                 ) -> dict[str, Any]:
    """Run everything; ``progress(title)`` makes the progress display of each phase."""
    model = config.model
    for name in config.devices:  # a typo must fail now, not after minutes of converting
        get_device(name)
    request = ConvertRequest(
        model=model.name, out=out / "artifacts", formats=model.formats, int8=model.int8,
        weights=resolve_weights(model.name, model.weights), width_mult=model.width,
        size=model.size, task=model.task, threads=config.measure.threads[0])
    with progress(f"converting {model.name}") as bar:
        conversion = convert(request, bar)
    artifacts, skipped = deployable(out / "artifacts")
    devices = config.devices or [LOCAL]
    results = []
    with progress(f"measuring on {', '.join(devices)}") as bar:
        bar.start(len(devices) * len(artifacts) * (1 + len(config.measure.threads)))
        for name in devices:
            results.append(measure_on_device(name, artifacts, config, out, bar.step))
    run = {"config": asdict(config), "conversion": conversion, "skipped": skipped,
           "devices": results}
    write_atomic(out / "run.json", json.dumps(run, indent=1, default=str))
    write_atomic(out / "report.html", render_run_report(run))
    return run
