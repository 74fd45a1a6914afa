"""A latency table: measured units for one device, runtime, precision and thread count.

Stored as JSON, versioned by ``format_version``; written atomically, so a killed collection
leaves the last complete state. A table only answers for the device and settings it was
measured with: :meth:`LatencyTable.check_target` refuses anything else unless forced, naming
the fields of the device identity that differ. A table carries *sentinels* (a reference unit
and whole networks with their latencies at collection) and the record of every check that
measured them again (:mod:`.sentinels`): a table goes stale on the same board too.

Format 3 predicts the median, the p90 and the best case from a :class:`.model.NetworkModel`
fitted on whole networks; a table made by ``lut adapt`` marks each unit measured on the device
or transferred from another table (``source``, ``expected_error_pct``) and says how it was
made (``adapted``). Format 2 (a fit of unit minima to one statistic per network, no p90) and
format 1 (before device identities and sentinels: cannot be checked) are still read.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..device.identity import describe_identity, diff_words
from ..errors import EdgepipeError
from ..manifest import write_atomic
from ..models.space import Architecture
from .features import weights_mb
from .model import NetworkFeatures, NetworkModel
from .programs import PROGRAM_INPUT, PROGRAM_INPUT_BEFORE
from .units import Unit, units_of

FORMAT = "edgepipe-latency-table"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
SHIPPED = Path(__file__).parent / "data"
# the table edgepipe's own tests, benchmarks and examples use: ExecuTorch fp32, 1 thread, on
# AMD family 25 model 17 (the other shipped table, Intel family 6 model 167's, is a source
# for `lut adapt`)
REFERENCE_TABLE = SHIPPED / "82660cc886a34a83-executorch-fp32-t1.json"


@dataclass(frozen=True)
class Target:
    """What a prediction is for: a device (by fingerprint) and how the model will run.
    ``identity`` (the device's, see :mod:`edgepipe.device.identity`) only words a refusal."""

    fingerprint: str
    runtime: str
    precision: str
    threads: int
    identity: dict[str, Any] | None = field(default=None, compare=False, hash=False)


@dataclass
class Overhead:
    """Format 2's network fit: measured ≈ scale · Σ units + boundary_ms_per_m · (M elements
    at unit boundaries) + offset_ms, one statistic (the faster of two medians) per network."""

    scale: float = 1.0
    offset_ms: float = 0.0
    models: list[dict[str, Any]] = field(default_factory=list)  # name, sums, measured_ms
    boundary_ms_per_m: float = 0.0


@dataclass
class LatencyTable:
    device: dict[str, Any]  # fingerprint, identity, identity_words, cpu_model, hostname
    runtime: str  # "executorch" | "litert"
    runtime_version: str
    precision: str
    threads: int
    space: dict[str, Any]
    method: dict[str, Any]  # how units were measured: warm-up, runs, stability, converter
    units: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> statistics
    reference: dict[str, Any] = field(default_factory=dict)  # drift checks
    overhead: Overhead | None = None
    created: float = field(default_factory=time.time)
    # whole networks and the reference unit with their latencies at collection (.sentinels)
    sentinels: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)  # every `lut check`, in order
    format_version: int = FORMAT_VERSION
    model: dict[str, Any] | None = None  # format 3: NetworkModel.to_dict()
    adapted: dict[str, Any] | None = None  # `lut adapt`: sources, method, what was measured

    def __post_init__(self) -> None:
        self._model: NetworkModel | None = None

    @property
    def target(self) -> Target:
        return Target(self.device["fingerprint"], self.runtime, self.precision, self.threads,
                      self.device.get("identity"))

    @property
    def identity(self) -> dict[str, Any] | None:
        return self.device.get("identity")

    def describe(self) -> str:
        identity = self.identity
        where = describe_identity(identity) if identity else \
            f"{self.device.get('cpu_model', '?')} (no device identity: format 1)"
        return (f"{where} (fingerprint {self.device['fingerprint']}), {self.runtime} "
                f"{self.precision}, {self.threads} thread(s)")

    def provenance(self) -> str:
        """Collected or adapted, and from what, in words."""
        if not self.adapted:
            return "collected"
        sources = ", ".join(s["name"] for s in self.adapted.get("sources", []))
        share = self.adapted.get("measured_units", 0) / max(1, len(self.units))
        return (f"adapted from {sources} ({share:.0%} of the units measured here, the rest "
                f"transferred; {self.adapted.get('method_name', '?')})")

    def flags(self) -> list[str]:
        """What the collection (or adaptation) said about the device while it measured: the
        reference unit's segments that never settled, and each distinct device-state flag of
        its jobs (a shared core, a fallen clock, the device disagreeing with itself). Empty
        for a table measured on a quiet device."""
        out = []
        if self.reference.get("flagged"):
            out.append(f"{self.reference.get('unsettled_segments', '?')} segment(s) of units "
                       "never settled against the reference unit")
        for flag in self.method.get("device_state_flags") or []:
            if flag not in out:
                out.append(flag)
        return out

    # --- prediction ----------------------------------------------------------------------
    @property
    def statistic(self) -> str:
        """The unit statistic a network's median is summed from: ``median_ms`` (format 3),
        ``min_ms`` (format 2 tables collected with ``statistic: min``)."""
        if self.format_version < 3 and self.method.get("statistic") == "min":
            return "min_ms"
        return "median_ms"

    @property
    def network_model(self) -> NetworkModel | None:
        """Format 3's fit of whole networks (None for older tables, which have ``overhead``)."""
        if self._model is None and self.model:
            self._model = NetworkModel.from_dict(self.model)
        return self._model

    def unit_ms(self, key: str) -> float:
        """A unit's time as predictions use it (:attr:`statistic`), in ms."""
        return self.units[key][self.statistic]

    def _missing(self, units: list[Unit]) -> None:
        missing = [u.key for u in units if u.key not in self.units]
        if missing:
            raise EdgepipeError(
                f"the latency table has no entry for {len(missing)} unit(s) of this network, "
                f"e.g. {missing[0]}: it was collected for another search space; collect one "
                "for this space with `edgepipe lut collect`")

    def _sum_ms(self, units: list[Unit]) -> float:
        self._missing(units)
        return sum(self.unit_ms(u.key) for u in units)

    def unit_sum_ms(self, arch: Architecture) -> float:
        return self._sum_ms(units_of(arch))

    def features(self, units: list[Unit], times: list[tuple[float, float]] | None = None
                 ) -> NetworkFeatures:
        """What the network model reads of these units; ``times``: (median, min) per unit
        where not the table's own (estimated units)."""
        if times is None:
            self._missing(units)
            times = [(self.units[u.key]["median_ms"],
                      self.units[u.key].get("min_ms", self.units[u.key]["median_ms"]))
                     for u in units]
        return NetworkFeatures(sum(t[0] for t in times), sum(t[1] for t in times),
                               weights_mb(units, self.precision), len(units))

    def predict(self, arch: Architecture) -> float:
        """Predicted median latency (ms) of a whole network (format 2: the statistic its fit
        was made on). :class:`.estimate.Estimator` gives the p90, intervals and provenance."""
        units = units_of(arch)  # once: a search predicts thousands of networks
        model = self.network_model
        if model is not None:
            return model.predict(self.features(units))["median"]
        total = self._sum_ms(units)
        if self.overhead is None:
            return total
        o = self.overhead
        return o.scale * total + o.boundary_ms_per_m * boundary_melements(units) + o.offset_ms

    def mismatch(self, target: Target) -> list[str]:
        """What differs between the table and a target, in words (empty: none)."""
        found = [f"{name} {mine!r} ≠ {theirs!r}"
                 for name, mine, theirs in zip(
                     ("runtime", "precision", "threads"),
                     (self.runtime, self.precision, self.threads),
                     (target.runtime, target.precision, target.threads), strict=True)
                 if mine != theirs]
        layout = self.method.get("program_input", PROGRAM_INPUT_BEFORE.get(self.runtime))
        if layout != PROGRAM_INPUT.get(self.runtime, layout):
            found.append(f"programs with {layout} input measured ≠ {PROGRAM_INPUT[self.runtime]} "
                         "input as edgepipe converts them now (an input transpose apart)")
        if self.target.fingerprint != target.fingerprint:
            if self.identity and target.identity:
                words = diff_words(self.identity, target.identity, ("table", "this device"))
                found.insert(0, f"another device ({words})" if words else
                             f"device fingerprint {self.target.fingerprint} ≠ "
                             f"{target.fingerprint}")
            elif not self.identity:
                found.insert(0, "a device of unknown identity (a format-1 table, fingerprint "
                                f"{self.target.fingerprint}; this device: "
                                f"{target.fingerprint})")
            else:
                found.insert(0, f"device fingerprint {self.target.fingerprint} ≠ "
                                f"{target.fingerprint}")
        return found

    def check_target(self, target: Target, force: bool = False) -> None:
        """Refuse to predict for another device or other settings (unless forced)."""
        mismatch = self.mismatch(target)
        if mismatch and not force:
            raise EdgepipeError(
                f"the latency table does not fit this target: {'; '.join(mismatch)}: collect "
                "a table there with `edgepipe lut collect`, or pass --force to use it anyway")

    # --- storage --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        if self._model is not None:
            self.model = self._model.to_dict()  # an evaluation recorded on the loaded model
        data = asdict(self)
        return {"format": FORMAT, **data}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.to_dict(), indent=1, sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise EdgepipeError(f"latency table {path} does not exist: give a table file "
                                f"(`edgepipe lut list` shows the known ones)")
        redo = "collect it again with `edgepipe lut collect` or restore the file"
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise EdgepipeError(f"latency table {path} is corrupted (not JSON: {exc}): "
                                f"{redo}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise EdgepipeError(f"{path} is not an edgepipe latency table: {redo}")
        if data.get("format_version") not in READABLE_VERSIONS:
            raise EdgepipeError(f"latency table {path} has format version "
                                f"{data.get('format_version')}; this edgepipe reads "
                                f"{', '.join(map(str, READABLE_VERSIONS))}: {redo}")
        data = {k: v for k, v in data.items() if k != "format"}
        try:
            overhead = data.pop("overhead")
            table = cls(**data, overhead=Overhead(**overhead) if overhead else None)
            bad = [k for k, v in table.units.items()
                   if not isinstance(v, dict) or not isinstance(v.get("median_ms"), (int, float))
                   or not v["median_ms"] > 0]
            if table.model is not None:
                table.network_model  # noqa: B018 (parsed now: a broken model is a broken file)
            if bad or not isinstance(table.device.get("fingerprint"), str):
                raise ValueError(f"entry {bad[0]!r} has no positive median_ms" if bad
                                 else "no device fingerprint")
            if not isinstance(table.sentinels, list) or not isinstance(table.checks, list) \
                    or any(not isinstance(s, dict) or not s.get("median_ms", 0) > 0
                           for s in table.sentinels):
                raise ValueError("its sentinels or checks are not lists of measurements")
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise EdgepipeError(f"latency table {path} is corrupted ({exc}): {redo}") from None
        return table


def boundary_melements(units: list[Unit]) -> float:
    """Millions of elements crossing unit boundaries (see ``Unit.boundary_elements``)."""
    return sum(u.boundary_elements for u in units) / 1e6


def table_name(target: Target, family: str = "v3") -> str:
    """The file name of a device's table; a table of MobileNetV2's space (``family`` v2) has
    its own (``...-t1-v2.json``): one device holds a table of each family side by side."""
    tail = "" if family == "v3" else f"-{family}"
    return (f"{target.fingerprint}-{target.runtime}-{target.precision}-t{target.threads}"
            f"{tail}.json")


def table_family(path: Path) -> str:
    """The family a table's file name says (see :func:`table_name`)."""
    return "v2" if path.stem.endswith("-v2") else "v3"


def known_tables(home: Path) -> list[Path]:
    """Tables collected here (``EDGEPIPE_HOME/tables``) and those shipped with edgepipe."""
    return sorted((home / "tables").glob("*.json")) + sorted(SHIPPED.glob("*.json"))


def resolve_tables(spec: str, home: Path) -> list[Path]:
    """Table files from a comma-separated list: paths, names of tables ``lut list`` shows
    (collected here or shipped), or ``shipped`` for every table shipped with edgepipe.

    Raises:
        EdgepipeError: a name that is neither a file nor a known table (the known ones
            listed).
    """
    known = known_tables(home)
    out: list[Path] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item == "shipped":
            out += sorted(SHIPPED.glob("*.json"))
            continue
        path = Path(item).expanduser()
        if path.exists() or path.parent != Path("."):  # a path: its own error when read
            out.append(path)
            continue
        named = [p for p in known if p.name in (item, f"{item}.json")]
        if not named:
            names = ", ".join(p.name for p in known) or "none"
            raise EdgepipeError(f"no table {item!r}: give a file, 'shipped', or one of the "
                                f"tables here ({names})")
        out.append(named[0])
    return out


def find_table(target: Target, home: Path, family: str = "v3") -> Path | None:
    for path in known_tables(home):
        if path.name == table_name(target, family):
            return path
    return None
