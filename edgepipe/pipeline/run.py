"""``edgepipe run``: model → convert → deploy → profile on every device → one HTML report."""

from __future__ import annotations

import json
import threading
import time
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
    from ..models.space import SearchSpace, seed_family

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
        seed = {"mobilenet_v3_small": "small", "mobilenet_v3_large": "large",
                "mobilenet_v2": "v2"}.get(model.name)
        size = model.size or 224
        # a table predicts the networks of its own family (a V2 table has no V3 units)
        if seed and seed_family(seed) == space.family and size in space.resolutions \
                and model.width in space.width_mults:
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
    count on one device (every run's time kept; with references, the device's sentinels
    measured before each sitting: :mod:`edgepipe.lab.reference`)."""
    entry: dict[str, Any] = {"name": name, "results": [], "errors": [], "began": time.time()}
    m = config.measure
    try:
        with open_device(name, out) as client:
            entry["info"] = client.info()
            references = _references(client, entry, config)
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
                                         cooldown_s=m.cooldown, min_seconds=m.min_seconds,
                                         raw=True, before_sitting=references(threads))
                        entry["results"].append({**asdict(result), "created": time.time()})
                    except EdgepipeError as exc:  # one artifact failing keeps the others
                        entry["errors"].append(f"{path.name} ({threads} threads): {exc}")
    except EdgepipeError as exc:
        entry["errors"].append(str(exc))
    entry["ended"] = time.time()
    return entry


def _references(client: AgentClient, entry: dict[str, Any], config: PipelineConfig
                ) -> Callable[[int], Callable[[int], dict[str, Any] | None] | None]:
    """Per thread count, what measures the device's reference before each sitting ([measure]
    reference: true, false, or "auto": with two or more sittings); a reference that cannot be
    measured is said once in the device's notes and the sittings go on without."""
    m = config.measure
    wanted = m.reference is True or (m.reference == "auto" and m.repeat >= 2)
    if not wanted:
        return lambda threads: None
    from ..lab.reference import Reference

    made: dict[int, Reference] = {}
    failed: list[str] = []

    def before(threads: int) -> Callable[[int], dict[str, Any] | None]:
        def measure(_sitting: int) -> dict[str, Any] | None:
            if failed:
                return None
            reference = made.setdefault(threads, Reference(client, entry["info"],
                                                           config_home(), threads))
            try:
                return reference.measure()
            except EdgepipeError as exc:
                failed.append(str(exc))
                entry.setdefault("notes", []).append(f"no reference measurements: {exc}")
                return None
        return measure
    return before


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
    """Run everything; ``progress(title)`` makes the progress display of each phase. Devices
    are measured at once, one thread each; the results go into the results store
    (:mod:`edgepipe.lab.store`, opened first: a store that cannot be reached fails the run
    before any work) and the report shows their history."""
    from ..lab.store import open_store

    model = config.model
    created = time.time()
    for name in config.devices:  # a typo must fail now, not after minutes of converting
        if name != LOCAL:
            get_device(name)
    store = open_store()
    request = ConvertRequest(
        model=model.name, out=out / "artifacts", formats=model.formats, int8=model.int8,
        fp16=model.fp16,
        weights=resolve_weights(model.name, model.weights), width_mult=model.width,
        size=model.size, task=model.task, threads=config.measure.threads[0])
    with progress(f"converting {model.name}") as bar:
        conversion = convert(request, bar)
    artifacts, skipped = deployable(out / "artifacts")
    devices = config.devices or [LOCAL]
    with progress(f"measuring on {', '.join(devices)}") as bar:
        bar.start(len(devices) * (len(artifacts) * (1 + len(config.measure.threads))
                                   + config.measure.check_tables))
        results = measure_devices(devices, artifacts, config, out, bar.step)
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
    run = {"created": created, "config": asdict(config), "conversion": conversion,
           "skipped": skipped, "devices": results, "evaluations": evaluations}
    # each device's artifact to ship, and why every other lost: first in the report
    run["recommendations"] = recommend(run, config.recommend.max_flip_rate)
    run["stored"], run["history"] = store_run(store, run, out)
    write_atomic(out / "run.json", json.dumps(run, indent=1, default=str))
    write_atomic(out / "report.html", render_run_report(run))
    return run


def measure_devices(devices: list[str], artifacts: list[Path], config: PipelineConfig,
                    out: Path, step: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every device measured at once (one thread each: the work is on the devices), entries
    in the order the devices were given."""
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()

    def safe_step(words: str) -> None:
        with lock:
            step(words)

    if len(devices) == 1:
        return [measure_on_device(devices[0], artifacts, config, out, safe_step)]
    with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="device") as pool:
        futures = [pool.submit(measure_on_device, name, artifacts, config, out, safe_step)
                   for name in devices]
        return [f.result() for f in futures]


def store_run(store: Any, run: dict[str, Any], out: Path
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's results written to the store in one transaction; what was stored, and the
    stored history of this model on each device (for the report's trend)."""
    from dataclasses import asdict as fields_of

    from ..lab.store import add_results, query_results

    names = {r["artifact"] for e in run["devices"] for r in e["results"]}
    with store:
        recorded = add_results(store, "run", run["devices"], {n: out / "artifacts" / n
                                                              for n in names},
                               run["config"], out.resolve(), run["created"])
        history = []
        models = {r["model"] for e in run["devices"] for r in e["results"]}
        for model in sorted(models):
            history += [fields_of(r) for r in query_results(store, model=model, limit=500)]
    return ({"database": store.url, "run_id": recorded.run_id,
             "result_ids": recorded.result_ids}, history)
