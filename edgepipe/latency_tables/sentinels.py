"""Sentinels: what a table measured at collection, measured again to tell whether it still holds.

A table goes stale without any field of the device identity changing: firmware, runtime
version, governor, cooling, a hypervisor's neighbours. So a table carries four sentinels
measured right after its units, the same way they are measured at every check: its reference
unit and three whole networks (MobileNetV3-Small and -Large at the space's largest resolution
and width, and the first random network of the overhead fit). A check converts them exactly as
at collection (cached), measures each twice in one job (the faster pass counts: a disturbance
only ever adds time), and compares with the collection:

* the **factor** is the median of the four ratios now / then, of the *sustained* time per run
  (wall time of the runs back to back: a core now shared with another busy process doubles
  it and leaves a sub-millisecond run's median as it was, see ``LatencyStats``);
* the **spread** is (largest − smallest ratio) / factor: sentinels that disagree by more than
  three times the limit are measured once more (each one's faster time counts); still that
  far apart, the device changed unevenly (or was noisy during the check), and a single
  factor corrects the table only roughly: said, not refused;
* a factor more than ``LIMIT_PCT`` from 1 is **drift**.

Checks are recorded in the table file (for tables shipped inside edgepipe, which are not
written to, in ``EDGEPIPE_HOME/tables/checks/<table name>``).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgepipeError
from ..host.client import AgentClient
from ..manifest import write_atomic
from ..models.space import SEED_MODELS, Architecture, SearchSpace
from .measure import MeasureSettings, Progress, measure_items, prepare_programs
from .programs import ProgramSpec, arch_program, program_path, unit_programs
from .table import SHIPPED, LatencyTable
from .units import Unit

LIMIT_PCT = 5.0  # MLPerf Mobile's replicability bound, and the share a search can live with
POLICIES = ("warn", "strict", "rescale", "recollect")


def sentinel_definitions(space: SearchSpace, reference: Unit, dynamic: bool = False
                         ) -> list[dict[str, Any]]:
    """What a table's sentinels are: the reference unit, V3-Small, V3-Large (a V2 space:
    MobileNetV2), one random
    network of the space (the first of the network model's). ``dynamic``: the networks run
    the model's dynamic-size programs (converted once for both)."""
    resolution, width = max(space.resolutions), max(space.width_mults)
    # a V3 space's sentinels are both V3 seeds whatever its own (the tables' names so far)
    seeds = ("small", "large") if space.family == "v3" else space.seeds
    archs = [(f"{SEED_MODELS[seed]}@{resolution} x{width:g}",
              space.seed_architecture(seed, resolution, width)) for seed in seeds]
    sample = space.architectures(1, seed=10_000)[0]
    archs.append((f"random {sample.seed}@{sample.resolution} ({sample.digest()[:8]})", sample))
    unit = {"name": f"reference unit {reference.key}", "kind": "unit",
            "unit": {"kind": reference.kind, "hw": reference.hw,
                     "params": list(reference.params)},
            "shape": reference.input_shape()}
    size_range = [min(space.resolutions), max(space.resolutions)] if dynamic else None
    return [unit] + [{"name": name, "kind": "arch", "arch": arch.to_dict(),
                      "shape": [1, 3, arch.resolution, arch.resolution],
                      **({"size_range": size_range} if size_range else {})}
                     for name, arch in archs]


def sentinel_program(definition: dict[str, Any]) -> ProgramSpec:
    """The program that measures a sentinel (a unit gets a static program of its own)."""
    if definition["kind"] == "unit":
        u = definition["unit"]
        unit = Unit(u["kind"], u["hw"], tuple(u["params"]))
        return unit_programs([unit], dynamic=False)[unit.key]
    size_range = definition.get("size_range")
    return arch_program(Architecture.from_dict(definition["arch"]),
                        tuple(size_range) if size_range else None)


def measure_sentinels(definitions: list[dict[str, Any]], table: LatencyTable,
                      client: AgentClient, workdir: Path, jobs: int = 2,
                      progress: Progress | None = None, affinity: list[int] | None = None
                      ) -> list[dict[str, Any]]:
    """Each sentinel measured twice in one job with the table's whole-network settings; the
    faster pass is kept. Raises one line when one cannot be converted or run."""
    job = MeasureSettings.of_table(table.method).whole_job(table.threads)
    return measure_definitions(definitions, table.runtime, table.precision, job, client,
                               workdir, jobs, progress, affinity,
                               "nothing is predicted from an unchecked table",
                               "the table's sentinels")


def measure_definitions(definitions: list[dict[str, Any]], runtime: str, precision: str,
                        job: dict[str, Any], client: AgentClient, workdir: Path,
                        jobs: int = 2, progress: Progress | None = None,
                        affinity: list[int] | None = None,
                        consequence: str = "the device's speed is not known",
                        what: str = "sentinels", passes: int = 2) -> list[dict[str, Any]]:
    """Sentinels of :func:`sentinel_definitions` measured on the device with the agent job
    settings ``job``, without a table (the lab's reference beside each sitting uses this):
    converted once into ``workdir/<runtime>-<precision>`` (cached), each measured ``passes``
    times in one job, the fastest pass kept (a disturbance only ever adds time). Raises one line,
    ending with ``consequence``, when one cannot be converted or run."""
    progress = progress or Progress()
    folder = workdir / f"{runtime}-{precision}"
    specs = [sentinel_program(d) for d in definitions]
    try:
        shas = prepare_programs(specs, runtime, precision, client, folder, jobs,
                                progress, "sentinels")
    except EdgepipeError as exc:
        raise EdgepipeError(f"the {what} cannot be converted for {runtime} "
                            f"{precision} ({exc}): {consequence}") from None
    items = [{"artifact": shas[program_path(folder, spec, runtime)],
              "shape": list(d["shape"])} for d, spec in zip(definitions, specs, strict=True)]
    job = dict(job)
    if affinity:
        job["affinity"] = affinity
    progress.phase("measuring sentinels", 1)
    try:
        measured = measure_items(client, items * passes, job)
    except EdgepipeError as exc:
        raise EdgepipeError(f"the {what} cannot run on this device ({exc}): "
                            f"{consequence}") from None
    progress.advance()
    rows = []
    n = len(definitions)
    for i, d in enumerate(definitions):
        each = measured[i::n]
        best = min(each, key=_time)
        rows.append({**d, **{k: best.get(k) for k in ("median_ms", "sustained_ms", "p10_ms",
                                                      "p90_ms", "p99_ms", "cpu_share",
                                                      "ci95_pct", "count")},
                     "passes_ms": [_time(m) for m in each]})
    return rows


def _time(measured: dict[str, Any]) -> float:
    """What sentinels compare: the sustained time per run (the median where not recorded)."""
    return measured.get("sustained_ms") or measured["median_ms"]


def check_table(table: LatencyTable, client: AgentClient, workdir: Path, jobs: int = 2,
                progress: Progress | None = None, limit_pct: float = LIMIT_PCT,
                affinity: list[int] | None = None) -> dict[str, Any]:
    """Measure the table's sentinels on the device again; the check record (see module doc)."""
    if not table.sentinels:
        raise EdgepipeError(
            f"this table cannot be checked: it has no sentinels (format "
            f"{table.format_version}, collected before edgepipe recorded them): collect it "
            "again with `edgepipe lut collect`")
    began = time.perf_counter()
    info = client.info()
    now = measure_sentinels(table.sentinels, table, client, workdir, jobs, progress, affinity)
    ratios, factor, spread = _compare(now, table.sentinels)
    measured_again = spread > 3 * limit_pct
    if measured_again:
        # sentinels that disagree were often measured in a disturbance of seconds (one check
        # on a shared Intel host: x1.60, its sentinels 49 % apart, V3-Large's two passes 10.9
        # and 6.2 ms; a search rescaled by it predicted 78 % high): once more, each
        # sentinel's faster time counting (a disturbance only ever adds time); still uneven
        # after it, said as before
        again = measure_sentinels(table.sentinels, table, client, workdir, jobs, progress,
                                  affinity)
        now = [{**min(a, b, key=_time), "passes_ms": a["passes_ms"] + b["passes_ms"]}
               for a, b in zip(now, again, strict=True)]
        ratios, factor, spread = _compare(now, table.sentinels)
    drift = (factor - 1) * 100
    uneven = spread > 3 * limit_pct
    verdict = "drift" if abs(drift) > limit_pct else "ok"
    notes = []
    version = (info.get("runtimes") or {}).get(table.runtime)
    if version != table.runtime_version:
        notes.append(f"runtime {version} here, {table.runtime_version} at collection")
    return {"time": time.time(), "verdict": verdict, "factor": factor, "drift_pct": drift,
            "spread_pct": spread, "uneven": uneven, "limit_pct": limit_pct,
            "measured_again": measured_again,
            "device": {"fingerprint": info.get("fingerprint"),
                       "identity_words": info.get("identity_words"),
                       "hostname": info.get("hostname")},
            "runtime_version": version, "affinity": affinity, "notes": notes,
            "seconds": round(time.perf_counter() - began, 1),
            "sentinels": [{"name": s["name"], "then_ms": _time(s), "now_ms": _time(n),
                           "ratio": r, "passes_ms": n["passes_ms"],
                           "median_then_ms": s["median_ms"], "median_now_ms": n["median_ms"],
                           "cpu_share": n.get("cpu_share")}
                          for s, n, r in zip(table.sentinels, now, ratios, strict=True)]}


def _compare(now: list[dict[str, Any]], then: list[dict[str, Any]]
             ) -> tuple[list[float], float, float]:
    """(ratios, factor, spread %) of sentinels measured now against the table's (module
    doc)."""
    ratios = [_time(n) / _time(s) for n, s in zip(now, then, strict=True)]
    factor = statistics.median(ratios)
    return ratios, factor, (max(ratios) - min(ratios)) / factor * 100


def check_words(check: dict[str, Any]) -> str:
    """A check in one sentence."""
    ratios = [s["ratio"] for s in check["sentinels"]]
    span = f"{len(ratios)} sentinels, ratios {min(ratios):.3f}–{max(ratios):.3f}"
    if check.get("measured_again"):
        span += ", measured twice: they disagreed the first time"
    notes = f"; {'; '.join(check['notes'])}" if check.get("notes") else ""
    uneven = (f"; they disagree (spread {check['spread_pct']:.0f} %): the device changed "
              "unevenly or was disturbed, a single factor is rough" if check["uneven"] else "")
    if check["verdict"] != "drift":
        return (f"the device runs the table's sentinels at ×{check['factor']:.3f} of their "
                f"times at collection ({span}): within {check['limit_pct']:g} %{uneven}{notes}")
    return (f"drift: the device runs the table's sentinels at ×{check['factor']:.3f} of their "
            f"times at collection ({span}): predictions from this table are "
            f"{abs(check['drift_pct']):.0f} % {'high' if check['drift_pct'] < 0 else 'low'} "
            f"here{uneven}{notes}")


# --- where checks are kept -------------------------------------------------------------------
def is_shipped(path: Path) -> bool:
    return Path(path).resolve().parent == SHIPPED.resolve()


def _sidecar(path: Path, home: Path) -> Path:
    return home / "tables" / "checks" / Path(path).name


def recorded_checks(path: Path, table: LatencyTable, home: Path) -> list[dict[str, Any]]:
    """Every check of a table, oldest first (the file's own, or a shipped table's sidecar)."""
    checks = list(table.checks)
    sidecar = _sidecar(path, home)
    if is_shipped(path) and sidecar.is_file():
        try:
            checks += json.loads(sidecar.read_text())
        except ValueError:
            pass  # a broken sidecar loses history, not the table
    return sorted(checks, key=lambda c: c.get("time", 0))


def record_check(path: Path, table: LatencyTable, check: dict[str, Any], home: Path) -> Path:
    """Append a check where it is kept; the file written (atomically)."""
    if is_shipped(path):
        sidecar = _sidecar(path, home)
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        previous = [c for c in recorded_checks(path, table, home) if c not in table.checks]
        write_atomic(sidecar, json.dumps(previous + [check], indent=1))
        return sidecar
    table.checks.append(check)
    table.save(path)
    return path


def _evaluation_sidecar(path: Path, home: Path) -> Path:
    return home / "tables" / "evaluations" / Path(path).name


def record_evaluation(path: Path, table: LatencyTable, record: dict[str, Any],
                      home: Path) -> Path:
    """Keep an evaluation's errors with the table (the newest one gives later predictions
    their intervals): in the file, or beside a shipped table; the file written."""
    if table.network_model is None:
        raise EdgepipeError(f"{Path(path).name} is a format-{table.format_version} table: it "
                            "has no network model to record an evaluation in")
    if is_shipped(path):
        sidecar = _evaluation_sidecar(path, home)
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(sidecar, json.dumps(record, indent=1))
        table.network_model.evaluation = record
        return sidecar
    table.network_model.evaluation = record
    table.save(path)
    return path


def with_recorded_evaluation(path: Path, table: LatencyTable, home: Path) -> LatencyTable:
    """A shipped table with the newest evaluation made here (a sidecar) in its model."""
    sidecar = _evaluation_sidecar(path, home)
    model = table.network_model
    if model is not None and is_shipped(path) and sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text())
        except ValueError:
            return table  # a broken sidecar loses that evaluation, not the table
        if record.get("time", 0) > (model.evaluation or {}).get("time", 0):
            model.evaluation = record
    return table


# --- a table used for a prediction ---------------------------------------------------------
@dataclass
class TableUse:
    """A table as a prediction uses it: the check behind it and the factor applied."""

    path: Path
    table: LatencyTable
    policy: str
    check: dict[str, Any] | None = None
    reused: bool = False  # the check is a recent one, not measured now
    factor: float = 1.0  # applied to every prediction (``--rescale``)
    warnings: list[str] = field(default_factory=list)
    fresh: bool = False  # collected just now on the device (``--recollect``)

    def words(self) -> str:
        """How the prediction was obtained: table, device, when checked, what was applied."""
        when = time.strftime("%Y-%m-%d", time.localtime(self.table.created))
        made = "collected" if not self.table.adapted else self.table.provenance() + ","
        base = f"table {self.path.name} ({made} {when} on {self.table.describe()})"
        if self.fresh:
            return f"{base}; collected now on this device"
        if self.check is None:
            return f"{base}; NOT CHECKED on this device"
        age = (time.time() - self.check["time"]) / 60
        checked = (f"checked {'now' if not self.reused else f'{age:.0f} min ago'} on "
                   f"{self.check['device'].get('hostname')}: {check_words(self.check)}")
        rescaled = f"; rescaled ×{self.factor:.3f}" if self.factor != 1.0 else ""
        return f"{base}; {checked}{rescaled}"

    def record(self) -> dict[str, Any]:
        """What a search or run keeps of it."""
        return {"table": str(self.path), "policy": self.policy, "check": self.check,
                "reused_check": self.reused, "fresh": self.fresh, "factor": self.factor,
                "warnings": self.warnings, "words": self.words()}


def apply_policy(use: TableUse) -> TableUse:
    """Turn a check into the factor a prediction uses, or a refusal (``strict``).
    ``rescale`` applies the factor also when the sentinels disagree (``uneven``: the factor is
    then rough, and said to be); ``warn`` keeps the table's times, warned."""
    check = use.check
    if check is None:
        return use
    if check["uneven"]:
        use.warnings.append(check_words(check))
    if check["verdict"] == "ok":
        return use
    if not check["uneven"]:
        use.warnings.append(check_words(check))
    if use.policy == "strict":
        raise EdgepipeError(f"{check_words(check)}: refused (--strict); collect the table "
                            "again with `edgepipe lut collect`, or use --rescale")
    if use.policy == "rescale":
        use.factor = check["factor"]
    return use


def use_table(path: Path, table: LatencyTable, policy: str, info: dict[str, Any], home: Path,
              max_age_s: float, measure: Callable[[], dict[str, Any]]) -> TableUse:
    """The table as a prediction on the device ``info`` describes may use it: the check of
    the last ``max_age_s`` seconds, or a new one (``measure()``, then recorded). Policies:
    ``skip`` checks nothing (said); a table flagged while measured (:meth:`.LatencyTable.flags`)
    is warned; a table without sentinels is refused by ``strict`` and
    ``rescale``, and said to be unchecked otherwise. What drift does is
    :func:`apply_policy`'s (``recollect`` is the caller's: it needs a collection)."""
    use = TableUse(path, table, policy)
    if flags := table.flags():  # its numbers may hold a neighbour's share of the device
        more = f" (and {len(flags) - 1} more)" if len(flags) > 1 else ""
        use.warnings.append(f"{path.name} was flagged while it was measured: {flags[0]}{more};"
                            " its times may be off: collect it again on a quiet device")
    if policy == "skip":
        use.warnings.append("the table was not checked on the device (--no-check)")
        return use
    version = (info.get("runtimes") or {}).get(table.runtime)
    recent = recent_check(path, table, home, info["fingerprint"], version, max_age_s) \
        if max_age_s > 0 else None
    if recent is not None:
        use.check, use.reused = recent, True
    elif not table.sentinels:
        why = (f"{path.name} cannot be checked: it has no sentinels (format "
               f"{table.format_version})")
        if policy in ("strict", "rescale"):
            raise EdgepipeError(f"{why}: collect it again with `edgepipe lut collect`, or use "
                                "--no-check to predict from it unchecked")
        if policy != "recollect":
            use.warnings.append(f"{why}; its predictions are unchecked on this device")
    else:
        use.check = measure()
        record_check(path, table, use.check, home)
    return use


def needs_recollection(use: TableUse) -> bool:
    """``recollect`` and a table that drifted or cannot be checked."""
    return use.policy == "recollect" and (use.check is None or use.check["verdict"] != "ok")


def recent_check(path: Path, table: LatencyTable, home: Path, fingerprint: str,
                 runtime_version: str | None, max_age_s: float) -> dict[str, Any] | None:
    """The newest check younger than ``max_age_s`` made on this device with this runtime (a
    check pinned to given CPUs speaks for those CPUs only: not reused)."""
    for check in reversed(recorded_checks(path, table, home)):
        if check.get("device", {}).get("fingerprint") != fingerprint or \
                check.get("runtime_version") != runtime_version or check.get("affinity"):
            continue
        return check if time.time() - check.get("time", 0) <= max_age_s else None
    return None
