"""``edgepipe diff A B``: two runs, two artifacts or two runtime versions on one device.

Each side is a selection of stored results (:func:`select`); the results of the two sides are
paired by what they measured (device, format, precision, threads, runtime and model, less
what the selectors themselves vary), and each pair is compared by :func:`.stats.compare` over
the sittings of all its results (several results of one artifact pool their sittings). A pair
measured on different devices, runtimes or precisions is refused, naming what differs, unless
``force``; a result whose device state was flagged (a clock that fell, throttling, a shared
core) is refused always: its times are not the device's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgepipeError
from .stats import Comparison, compare
from .store import ResultRow, Store, details_of, query_results, run_ids_of_folder, sittings_of

# what a pair must share (unless --force), in words
STRICT = {"fingerprint": "device", "runtime": "runtime", "precision": "precision"}


@dataclass
class Side:
    selector: str
    kind: str  # result | run | artifact | version
    results: list[ResultRow]


def select(store: Store, selector: str, filters: dict[str, Any]) -> Side:
    """A side of a diff: ``#12``/``12`` (a result), ``run:7`` (a stored run), a run folder
    (imported first when not stored yet), an artifact file or ``sha256:PREFIX`` (every result
    of that artifact), or ``RUNTIME==VERSION`` (every result with that runtime version).
    ``filters``: device, model, threads, fmt, precision."""
    text = selector.strip()
    if re.fullmatch(r"#?\d+", text):
        rows = query_results(store, ids=[int(text.lstrip("#"))], **filters)
        kind = "result"
    elif text.startswith("run:") and text[4:].isdigit():
        rows, kind = query_results(store, run_id=int(text[4:]), **filters), "run"
    elif "==" in text:
        rows, kind = query_results(store, runtime_version=text, **filters), "version"
    elif text.startswith("sha256:"):
        rows, kind = query_results(store, artifact=text[7:], **filters), "artifact"
    elif Path(text).is_dir():
        from .imports import import_run

        run_ids = run_ids_of_folder(store, Path(text)) or [import_run(store, Path(text)).run_id]
        rows = [r for i in run_ids for r in query_results(store, run_id=i, **filters)]
        kind = "run"
    elif Path(text).is_file():
        from ..manifest import file_sha256

        rows, kind = query_results(store, artifact=file_sha256(Path(text)), **filters), \
            "artifact"
    else:
        raise EdgepipeError(f"diff: {selector!r} is not a result (#ID), a stored run (run:ID), "
                            "a run folder, an artifact (file or sha256:PREFIX) or a runtime "
                            "version (executorch==1.5.1): see `edgepipe history`")
    if not rows:
        raise EdgepipeError(f"diff: nothing stored for {selector!r}"
                            + (" with the filters given" if any(filters.values()) else "")
                            + ": see `edgepipe history` for what is stored")
    return Side(selector, kind, rows)


def _key(r: ResultRow, vary: set[str]) -> tuple:
    fields = {"fingerprint": r.fingerprint, "device": r.device, "format": r.format,
              "precision": r.precision, "threads": r.threads, "runtime": r.runtime,
              "model": r.model, "sha256": r.sha256, "runtime_version": r.runtime_version}
    return tuple(v for k, v in fields.items() if k not in vary)


def _varied(a: Side, b: Side) -> set[str]:
    """What the two selectors set apart on purpose (not a reason to refuse a pair)."""
    vary = {"sha256", "runtime_version"}  # pooled over on a side; compared across sides
    if "artifact" in (a.kind, b.kind) or "run" in (a.kind, b.kind) or "result" in (a.kind,
                                                                                    b.kind):
        vary |= {"model"}  # a wider model is another model name at times
    return vary


def differences(a: ResultRow, b: ResultRow) -> list[str]:
    """What differs between two results that a comparison must not ignore, in words."""
    out = []
    if a.fingerprint != b.fingerprint:
        out.append(f"device {a.device} ({a.identity_words or a.fingerprint}) vs {b.device} "
                   f"({b.identity_words or b.fingerprint})")
    if a.runtime != b.runtime:
        out.append(f"runtime {a.runtime} vs {b.runtime}")
    if a.precision != b.precision:
        out.append(f"precision {a.precision} vs {b.precision}")
    return out


@dataclass
class Pair:
    a: list[ResultRow]
    b: list[ResultRow]
    comparison: Comparison | None = None
    per_op: list[dict[str, Any]] = field(default_factory=list)
    per_op_note: str | None = None
    differs: list[str] = field(default_factory=list)

    def label(self) -> str:
        a, b = self.a[0], self.b[0]
        same = a.config_words() == b.config_words()
        return (f"{a.device}: {a.config_words()}" if same else
                f"{a.device}: {a.config_words()} → {b.config_words()}")


def pair_up(a: Side, b: Side, force: bool = False) -> list[Pair]:
    """The results of the two sides, paired (see the module doc). Raises one line for a side
    with flagged results, for pairs that differ in device, runtime or precision (unless
    ``force``), and when nothing pairs."""
    for side in (a, b):
        flagged = [r for r in side.results if r.flagged]
        if flagged:
            r = flagged[0]
            raise EdgepipeError(
                f"diff: result #{r.id} ({r.config_words()} on {r.device}) was measured while "
                f"the device state was flagged ({r.flags[0]}): its times are not the "
                "device's; measure again, or narrow the selection (--threads, --format, "
                "--precision)")
    vary = _varied(a, b)
    groups_a: dict[tuple, list[ResultRow]] = {}
    groups_b: dict[tuple, list[ResultRow]] = {}
    for rows, groups in ((a.results, groups_a), (b.results, groups_b)):
        for r in rows:
            groups.setdefault(_key(r, vary), []).append(r)
    if len(groups_a) == 1 and len(groups_b) == 1:
        pairs = [Pair(next(iter(groups_a.values())), next(iter(groups_b.values())))]
    else:
        pairs = [Pair(groups_a[k], groups_b[k]) for k in groups_a if k in groups_b]
        if not pairs:
            raise EdgepipeError(
                f"diff: no result of {a.selector!r} measured what one of {b.selector!r} did "
                f"(same device, format, precision, threads): {len(groups_a)} and "
                f"{len(groups_b)} configurations; narrow them with --device, --format, "
                "--precision, --threads")
    for pair in pairs:
        pair.differs = differences(pair.a[0], pair.b[0])
        if pair.differs and not force:
            raise EdgepipeError(f"diff: {'; '.join(pair.differs)}: results of different "
                                "devices, runtimes or precisions say nothing about each other "
                                "as a change; pass --force to compare them anyway")
    return pairs


def run_diff(store: Store, a: Side, b: Side, force: bool = False,
             correct_drift: bool = True) -> list[Pair]:
    """Every pair compared over its sittings, with its per-op diff."""
    pairs = pair_up(a, b, force)
    for pair in pairs:
        sittings = sittings_of(store, [r.id for r in pair.a + pair.b])
        sa = [s for r in pair.a for s in sittings[r.id]]
        sb = [s for r in pair.b for s in sittings[r.id]]
        flagged = [s for s in sa + sb if s["flags"]]
        if flagged:
            raise EdgepipeError(f"diff: a sitting was measured while the device state was "
                                f"flagged ({flagged[0]['flags'][0]}): measure again")
        pair.comparison = compare(sa, sb, correct_drift)
        factor = _raw_ratio(sa, sb) / pair.comparison.ratio  # the device's own drift
        pair.per_op, pair.per_op_note = per_op_diff(
            details_of(store, pair.a[-1].id), details_of(store, pair.b[-1].id), factor)
    return pairs


def _raw_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    import numpy as np

    from .stats import sitting_median

    return float(np.exp(np.mean(np.log([sitting_median(s) for s in b]))
                        - np.mean(np.log([sitting_median(s) for s in a]))))


def per_op_diff(a: dict[str, Any], b: dict[str, Any], drift: float = 1.0,
                min_change_pct: float = 10.0, min_share: float = 0.01
                ) -> tuple[list[dict[str, Any]], str | None]:
    """The ops that moved: matched by name (else by type within their block), B's times
    divided by the drift the whole measurement had (``drift``), kept where the op changed by
    more than ``min_change_pct`` and by more than ``min_share`` of A's whole time; ops only
    one side has are listed as added or gone. Largest change first. One profiled pass each:
    no interval (said in the note)."""
    ops_a, ops_b = a.get("per_op") or [], b.get("per_op") or []
    if not ops_a or not ops_b:
        return [], "no per-op table on " + ("either side" if not ops_a and not ops_b else
                                            "side A" if not ops_a else "side B")

    def ms(op: dict[str, Any]) -> float:
        return op["median_ms"] if op.get("median_ms") is not None else float(op.get("mean_ms")
                                                                             or 0.0)

    def keyed(ops: list[dict[str, Any]], by_name: bool) -> dict[str, float]:
        out: dict[str, float] = {}
        for o in ops:
            key = o["name"] if by_name else f"{o.get('block') or '?'} · {o['type']}"
            out[key] = out.get(key, 0.0) + ms(o)
        return out

    unique = all(len({o["name"] for o in ops}) == len(ops) for ops in (ops_a, ops_b))
    ka, kb = keyed(ops_a, unique), keyed(ops_b, unique)
    if len(set(ka) & set(kb)) < max(1, len(ka) // 2):  # graphs too different to match by name
        ka, kb = keyed(ops_a, False), keyed(ops_b, False)
    total = sum(ka.values()) or 1.0
    moved = []
    for key in dict.fromkeys([*ka, *kb]):
        then, now = ka.get(key), kb.get(key)
        now = None if now is None else now / drift
        if then is None or now is None:
            ms_ = now if then is None else then
            if ms_ / total >= min_share:
                moved.append({"op": key, "a_ms": then, "b_ms": now, "change_pct": None,
                              "delta_ms": (now or 0.0) - (then or 0.0),
                              "what": "added" if then is None else "gone"})
            continue
        change = (now / then - 1) * 100 if then > 0 else float("inf")
        if abs(change) >= min_change_pct and abs(now - then) / total >= min_share:
            moved.append({"op": key, "a_ms": then, "b_ms": now, "change_pct": change,
                          "delta_ms": now - then, "what": "slower" if now > then else "faster"})
    moved.sort(key=lambda m: -abs(m["delta_ms"]))
    return moved, ("per-op times from one profiled pass on each side: no interval; ops that "
                   f"moved by ≥ {min_change_pct:g} % and ≥ {min_share:.0%} of the whole time")
