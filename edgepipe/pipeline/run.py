"""``edgepipe run``: model → convert → deploy → profile on every device → one HTML report."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..converters.convert import ConvertRequest, Progress, convert
from ..errors import EdgepipeError
from ..host.client import AgentClient
from ..host.local import LOCAL, open_device
from ..host.profiling import deploy, deployable, profile
from ..host.registry import config_home, get_device
from ..manifest import write_atomic
from ..models.pretrained import resolve_weights
from .config import PipelineConfig
from .recommend import recommend
from .report import render_run_report


def check_device_tables(client: AgentClient, info: dict[str, Any], config: PipelineConfig
                        ) -> list[dict[str, Any]]:
    """The latency tables collected for this device (by fingerprint), each checked on it (a
    check of the last hour reused) and, where the model is a point of the table's space,
    its prediction for the model."""
    from ..latency_tables.estimate import Estimator
    from ..latency_tables.sentinels import apply_policy, check_table, use_table
    from ..latency_tables.table import LatencyTable, known_tables
    from ..models.space import SearchSpace

    home = config_home()
    found = []
    for path in known_tables(home):
        try:
            table = LatencyTable.load(path)
        except EdgepipeError:
            continue  # `edgepipe lut list` says what is wrong with it
        if table.device["fingerprint"] != info["fingerprint"]:
            continue
        space = SearchSpace.from_dict(table.space)
        workdir = home / "lut-work" / space.digest()[:12]
        use = use_table(path, table, "warn", info, home, 3600,
                        lambda t=table, w=workdir: check_table(t, client, w))
        record = apply_policy(use).record()
        model = config.model
        seed = {"mobilenet_v3_small": "small", "mobilenet_v3_large": "large"}.get(model.name)
        size = model.size or 224
        if seed and size in space.resolutions and model.width in space.width_mults:
            arch = space.seed_architecture(seed, size, model.width)
            prediction = Estimator(table).prediction(arch)
            record["model_prediction"] = {
                "model": model.name, "precision": table.precision, "threads": table.threads,
                "runtime": table.runtime, "predicted_ms": prediction.median,
                "statistic": "median", "p90_ms": prediction.p90,
                "interval_ms": prediction.intervals.get("median"),
                "words": prediction.words(("median", "p90"))}
        found.append(record)
    return found


def measure_on_device(name: str, artifacts: list[Path], config: PipelineConfig, out: Path,
                      step: Callable[[str], None]) -> dict[str, Any]:
    """Check the device's latency tables, deploy and profile every artifact at every thread
    count on one device."""
    entry: dict[str, Any] = {"name": name, "results": [], "errors": []}
    m = config.measure
    try:
        with open_device(name, out) as client:
            entry["info"] = client.info()
            if m.check_tables:
                step(f"{name}: checking its latency tables")
                try:
                    entry["tables"] = check_device_tables(client, entry["info"], config)
                except EdgepipeError as exc:
                    entry["errors"].append(f"latency table check: {exc}")
            deploy(client, artifacts, on_step=lambda s: step(f"{name}: {s}"))
            for path in artifacts:
                for threads in m.threads:
                    step(f"{name}: {path.name}, {threads} thread(s)")
                    try:
                        result = profile(client, path, threads=threads, warmup=m.warmup,
                                         runs=m.runs, per_op=m.per_op,
                                         device_info=entry["info"], repeat=m.repeat,
                                         cooldown_s=m.cooldown, min_seconds=m.min_seconds)
                        entry["results"].append(asdict(result))
                    except EdgepipeError as exc:  # one artifact failing keeps the others
                        entry["errors"].append(f"{path.name} ({threads} threads): {exc}")
    except EdgepipeError as exc:
        entry["errors"].append(str(exc))
    return entry


def _silent(title: str) -> AbstractContextManager[Progress]:
    return nullcontext(Progress())


class _StepProgress:
    """An evaluation's phases on a run's progress bar."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar

    def phase(self, name: str, total: int) -> None:
        self.bar.step(name)

    def advance(self, n: int = 1) -> None:
        pass


def run_pipeline(config: PipelineConfig, out: Path,
                 progress: Callable[[str], AbstractContextManager[Progress]] = _silent
                 ) -> dict[str, Any]:
    """Run everything; ``progress(title)`` makes the progress display of each phase."""
    model = config.model
    for name in config.devices:  # a typo must fail now, not after minutes of converting
        if name != LOCAL:
            get_device(name)
    request = ConvertRequest(
        model=model.name, out=out / "artifacts", formats=model.formats, int8=model.int8,
        fp16=model.fp16,
        weights=resolve_weights(model.name, model.weights), width_mult=model.width,
        size=model.size, task=model.task, threads=config.measure.threads[0])
    with progress(f"converting {model.name}") as bar:
        conversion = convert(request, bar)
    artifacts, skipped = deployable(out / "artifacts")
    devices = config.devices or [LOCAL]
    results = []
    with progress(f"measuring on {', '.join(devices)}") as bar:
        bar.start(len(devices) * (len(artifacts) * (1 + len(config.measure.threads))
                                   + config.measure.check_tables))
        for name in devices:
            results.append(measure_on_device(name, artifacts, config, out, bar.step))
    evaluations = []
    if config.evaluate.data:
        from ..evaluation.run import evaluate

        for name in devices:
            with progress(f"evaluating on {name} over {config.evaluate.data}") as bar:
                entry: dict[str, Any] = {"name": name}
                try:
                    entry.update(evaluate(
                        [out / "artifacts"], config.evaluate.data,
                        device=None if name == LOCAL else name, out=out / "evaluation" / name,
                        limit=config.evaluate.limit,
                        label_map=Path(config.evaluate.label_map)
                        if config.evaluate.label_map else None,
                        masks=Path(config.evaluate.masks) if config.evaluate.masks else None,
                        weights=model.weights, progress=_StepProgress(bar)))
                except EdgepipeError as exc:
                    entry["error"] = str(exc)
                # fp16 rows of this device's table carry its fp16 flag
                entry.setdefault("fp16", next(((d.get("info") or {}).get("fp16")
                                               for d in results if d["name"] == name), None))
                evaluations.append(entry)
    run = {"config": asdict(config), "conversion": conversion, "skipped": skipped,
           "devices": results, "evaluations": evaluations}
    # each device's artifact to ship, and why every other lost: first in the report
    run["recommendations"] = recommend(run, config.recommend.max_flip_rate)
    write_atomic(out / "run.json", json.dumps(run, indent=1, default=str))
    write_atomic(out / "report.html", render_run_report(run))
    return run
